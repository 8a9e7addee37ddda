package jwtsvid_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/jwtsvid"
)

func ExampleValidate() {
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	key := jwtsvid.Key{ID: "k1", Signer: signer}

	token, exp, err := jwtsvid.Sign(now, key, spiffeid.RequireFromPath(td, "/web"),
		[]string{"spiffe://example.org/db"}, 5*time.Minute, now.Add(time.Hour))
	if err != nil {
		panic(err)
	}
	fmt.Println(exp)

	bundle := jwtbundle.New(td)
	_ = bundle.AddJWTAuthority("k1", signer.Public())
	claims, err := jwtsvid.Validate(token, bundle, []string{"spiffe://example.org/db"}, now.Add(time.Minute))
	fmt.Println(claims.ID, claims.Audience, err)

	_, err = jwtsvid.Validate(token, bundle, []string{"spiffe://example.org/db"}, now.Add(10*time.Minute))
	fmt.Println(err != nil)
	// Output:
	// 2030-06-01 12:05:00 +0000 UTC
	// spiffe://example.org/web [spiffe://example.org/db] <nil>
	// true
}
