package upstream_test

import (
	"errors"
	"testing"

	"writ.dev/writ/ca/keymanager/upstream"
)

// FuzzParseCerts: the parser of the certificates in an upstream's answer
// never panics, returns certificates or an ErrBadAnswer, and reads back
// what it parsed.
func FuzzParseCerts(f *testing.F) {
	root := mint(f, "root", nil, nil)
	f.Add([]byte(pemOf(root.cert)))
	f.Add([]byte(pemOf(root.cert) + pemOf(root.cert)))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte("<html>"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := upstream.ParseCerts("answer", data)
		if err != nil {
			if !errors.Is(err, upstream.ErrBadAnswer) || certs != nil {
				t.Fatalf("error %v with %d certificates", err, len(certs))
			}
			return
		}
		again, err := upstream.ParseCerts("answer", []byte(pemOf(certs...)))
		if err != nil || len(again) != len(certs) {
			t.Fatalf("re-parse of %d certificates: %d, %v", len(certs), len(again), err)
		}
		for i := range certs {
			if !again[i].Equal(certs[i]) {
				t.Fatalf("certificate %d differs after a round trip", i)
			}
		}
	})
}
