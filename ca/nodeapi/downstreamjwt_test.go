package nodeapi_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"google.golang.org/grpc/codes"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/nodeapi"
)

// addBundleJWTKey puts a JWT key in the bundle with no record, as a
// nested server's bundle holds its parent's keys.
func (e *env) addBundleJWTKey(kid string, pub crypto.PublicKey) {
	e.t.Helper()
	if _, err := e.store.Store.UpdateBundle(context.Background(), td, func(old *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		b := old.Clone()
		if err := b.AddJWTAuthority(kid, pub); err != nil {
			return nil, err
		}
		seq, _ := old.SequenceNumber()
		b.SetSequenceNumber(seq + 1)
		return b, nil
	}); err != nil {
		e.t.Fatal(err)
	}
}

// indexed waits until the node API knows the entries for agent a, as
// its Sync stream shows.
func (e *env) indexed(a *agent, entries ...*entry.Entry) {
	e.t.Helper()
	s := e.sync(a)
	defer s.close()
	s.until("the entries indexed", func() bool {
		for _, en := range entries {
			if s.have[en.ID] == nil {
				return false
			}
		}
		return true
	})
}

// hasRecord reports whether a CA key record of this ID exists.
func (e *env) hasRecord(kid string) bool {
	e.t.Helper()
	keys, err := e.store.ListCAKeys(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	for _, k := range keys {
		if k.ID == kid {
			return true
		}
	}
	return false
}

// A downstream cannot publish under a key ID the bundle holds with no
// record here (a nested server's parent's key): the parent's key stays,
// and no record is made that would later drop it or shadow it.
func TestPublishDownstreamJWTAuthorityParentKeyID(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	down := e.createEntry("spiffe://example.org/regional", agentA, func(en *entry.Entry) { en.Downstream = true })
	e.indexed(a, down)
	parentKey := newKey(t).Public()
	e.addBundleJWTKey("parent-kid", parentKey)
	pub, err := x509.MarshalPKIXPublicKey(newKey(t).Public())
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.client.PublishDownstreamJWTAuthority(ctxT(t), &nodev1.PublishDownstreamJWTAuthorityRequest{
		EntryId: down.ID, KeyId: "parent-kid", PublicKey: pub, ExpiresAt: e.clock.Now().Add(time.Hour).Unix(),
	})
	wantStatus(t, err, codes.AlreadyExists)
	if k, ok := e.bundle().FindJWTAuthority("parent-kid"); !ok || !equalPub(k, parentKey) {
		t.Fatal("the parent's key was replaced in the bundle")
	}
	if e.hasRecord("parent-kid") {
		t.Fatal("a record was made for the parent's key ID")
	}
}

// The key ID check holds inside the bundle update: a key ID published
// for another owner between the checks and the update (by another server
// sharing the store) is refused, its key stays, and the record this call
// made is removed.
func TestPublishDownstreamJWTAuthorityRacedKeyID(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	down := e.createEntry("spiffe://example.org/regional", agentA, func(en *entry.Entry) { en.Downstream = true })
	e.indexed(a, down)
	other := newKey(t).Public()
	race := func() { e.addBundleJWTKey("raced-kid", other) }
	e.store.beforeUpdateBundle.Store(&race)
	pub, err := x509.MarshalPKIXPublicKey(newKey(t).Public())
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.client.PublishDownstreamJWTAuthority(ctxT(t), &nodev1.PublishDownstreamJWTAuthorityRequest{
		EntryId: down.ID, KeyId: "raced-kid", PublicKey: pub, ExpiresAt: e.clock.Now().Add(time.Hour).Unix(),
	})
	wantStatus(t, err, codes.AlreadyExists)
	if k, ok := e.bundle().FindJWTAuthority("raced-kid"); !ok || !equalPub(k, other) {
		t.Fatal("the other owner's key was replaced in the bundle")
	}
	if e.hasRecord("raced-kid") {
		t.Fatal("the refused key's record was left behind")
	}
}

// A downstream entry has at most MaxDownstreamJWTKeys unexpired keys; it
// may publish one of them again, and one more once another has expired.
// Another downstream entry has its own allowance.
func TestPublishDownstreamJWTAuthorityCap(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	down := e.createEntry("spiffe://example.org/regional", agentA, func(en *entry.Entry) { en.Downstream = true })
	down2 := e.createEntry("spiffe://example.org/regional2", agentA, func(en *entry.Entry) { en.Downstream = true })
	e.indexed(a, down, down2)
	pub, err := x509.MarshalPKIXPublicKey(newKey(t).Public())
	if err != nil {
		t.Fatal(err)
	}
	now := e.clock.Now()
	publish := func(entryID, kid string, ttl time.Duration) error {
		_, err := a.client.PublishDownstreamJWTAuthority(ctxT(t), &nodev1.PublishDownstreamJWTAuthorityRequest{
			EntryId: entryID, KeyId: kid, PublicKey: pub, ExpiresAt: now.Add(ttl).Unix(),
		})
		return err
	}
	for i := range nodeapi.MaxDownstreamJWTKeys {
		ttl := 2 * time.Hour
		if i == 0 {
			ttl = 5 * time.Minute
		}
		if err := publish(down.ID, fmt.Sprintf("k%d", i), ttl); err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
	}
	wantStatus(t, publish(down.ID, "one-more", 2*time.Hour), codes.ResourceExhausted)
	if _, ok := e.bundle().FindJWTAuthority("one-more"); ok || e.hasRecord("one-more") {
		t.Fatal("the key beyond the cap was published")
	}
	if err := publish(down.ID, "k1", 2*time.Hour); err != nil {
		t.Fatalf("publishing a key again: %v", err)
	}
	if err := publish(down2.ID, "other-entry", 2*time.Hour); err != nil {
		t.Fatalf("another entry: %v", err)
	}
	e.clock.Advance(5*time.Minute + time.Second)
	now = e.clock.Now()
	if err := publish(down.ID, "one-more", 2*time.Hour); err != nil {
		t.Fatalf("after k0 expired: %v", err)
	}
}

func equalPub(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
