package x509ca_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"writ.dev/writ/ca/x509ca"
)

func spkiBits(t testing.TB, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	var spki struct {
		Alg asn1.RawValue
		Key asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		t.Fatal(err)
	}
	return spki.Key.Bytes
}

func wantSKI(t testing.TB, pub crypto.PublicKey) []byte {
	sum := sha256.Sum256(spkiBits(t, pub))
	return sum[:20]
}

func checkSerial(t *testing.T, n *big.Int) {
	t.Helper()
	if n.Sign() <= 0 || n.BitLen() > 128 {
		t.Errorf("serial %v: want positive, at most 128 bits", n)
	}
	// A random 128-bit value has fewer than 64 bits with probability 2^-64.
	if n.BitLen() < 64 {
		t.Errorf("serial %v does not look random", n)
	}
}

func TestNewSelfSignedCA(t *testing.T) {
	for _, key := range []struct {
		name string
		key  func() crypto.Signer
	}{{"P-256", keyP256}, {"P-384", keyP384}, {"RSA-2048", keyRSA2048}} {
		t.Run(key.name, func(t *testing.T) {
			k := key.key()
			ca, err := x509ca.NewSelfSignedCA(t0, td, k, 24*time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			tests := []struct {
				name  string
				check func(t *testing.T, c *x509.Certificate)
			}{
				{"CA flag", func(t *testing.T, c *x509.Certificate) {
					if !c.BasicConstraintsValid || !c.IsCA {
						t.Error("not a CA")
					}
					if c.MaxPathLen != -1 || c.MaxPathLenZero {
						t.Errorf("path length constrained: %d", c.MaxPathLen)
					}
				}},
				{"key usage", func(t *testing.T, c *x509.Certificate) {
					if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
						t.Errorf("KeyUsage = %b", c.KeyUsage)
					}
					if e, ok := extension(c, oidKeyUsage); !ok || !e.Critical {
						t.Error("KeyUsage missing or not critical")
					}
					if len(c.ExtKeyUsage) != 0 {
						t.Errorf("ExtKeyUsage = %v", c.ExtKeyUsage)
					}
				}},
				{"URI SAN", func(t *testing.T, c *x509.Certificate) {
					if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://example.org" {
						t.Errorf("URIs = %v", c.URIs)
					}
					if len(c.DNSNames)+len(c.EmailAddresses)+len(c.IPAddresses) != 0 {
						t.Error("other SANs present")
					}
				}},
				{"subject key ID", func(t *testing.T, c *x509.Certificate) {
					if !bytes.Equal(c.SubjectKeyId, wantSKI(t, k.Public())) {
						t.Errorf("SubjectKeyId = %x", c.SubjectKeyId)
					}
				}},
				{"serial", func(t *testing.T, c *x509.Certificate) { checkSerial(t, c.SerialNumber) }},
				{"subject", func(t *testing.T, c *x509.Certificate) {
					if !slices.Equal(c.Subject.Organization, []string{"Writ"}) {
						t.Errorf("O = %q", c.Subject.Organization)
					}
					if c.Subject.SerialNumber != c.SerialNumber.String() {
						t.Errorf("subject serialNumber %q, certificate serial %v", c.Subject.SerialNumber, c.SerialNumber)
					}
					if !bytes.Equal(c.RawSubject, c.RawIssuer) {
						t.Error("not self-issued")
					}
				}},
				{"validity", func(t *testing.T, c *x509.Certificate) {
					if !c.NotBefore.Equal(t0.Add(-x509ca.Backdate)) || !c.NotAfter.Equal(t0.Add(24*time.Hour)) {
						t.Errorf("validity [%v, %v]", c.NotBefore, c.NotAfter)
					}
				}},
				{"self-signed", func(t *testing.T, c *x509.Certificate) {
					if err := c.CheckSignatureFrom(c); err != nil {
						t.Error(err)
					}
					if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(c.PublicKey) {
						t.Error("public key differs from signer's")
					}
				}},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) { tt.check(t, ca) })
			}
		})
	}

	t.Run("successive CAs have distinct subjects", func(t *testing.T) {
		a, _ := x509ca.NewSelfSignedCA(t0, td, keyP256(), time.Hour)
		b, _ := x509ca.NewSelfSignedCA(t0, td, keyP256(), time.Hour)
		if bytes.Equal(a.RawSubject, b.RawSubject) {
			t.Error("same subject")
		}
	})
}

func TestNewSelfSignedCAErrors(t *testing.T) {
	tests := []struct {
		name   string
		now    time.Time
		td     spiffeid.TrustDomain
		signer crypto.Signer
		ttl    time.Duration
		want   error
	}{
		{"zero time", time.Time{}, td, keyP256(), time.Hour, x509ca.ErrParams},
		{"no trust domain", t0, spiffeid.TrustDomain{}, keyP256(), time.Hour, x509ca.ErrParams},
		{"no signer", t0, td, nil, time.Hour, x509ca.ErrParams},
		{"zero TTL", t0, td, keyP256(), 0, x509ca.ErrParams},
		{"negative TTL", t0, td, keyP256(), -time.Hour, x509ca.ErrParams},
		{"P-224", t0, td, keyP224(), time.Hour, x509ca.ErrKeyPolicy},
		{"P-521", t0, td, keyP521(), time.Hour, x509ca.ErrKeyPolicy},
		{"RSA-1024", t0, td, keyRSA1024(), time.Hour, x509ca.ErrKeyPolicy},
		{"Ed25519", t0, td, keyEd25519(), time.Hour, x509ca.ErrKeyPolicy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := x509ca.NewSelfSignedCA(tt.now, tt.td, tt.signer, tt.ttl)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if c != nil {
				t.Error("certificate returned with error")
			}
		})
	}
}

func TestCheckCSR(t *testing.T) {
	good := []struct {
		name string
		key  func() crypto.Signer
	}{
		{"P-256", keyP256}, {"P-384", keyP384},
		{"RSA-2048", keyRSA2048}, {"RSA-3072", keyRSA3072}, {"RSA-4096", keyRSA4096},
	}
	for _, tt := range good {
		t.Run("accept "+tt.name, func(t *testing.T) {
			pub, err := x509ca.CheckCSR(mustCSR(t, tt.key(), nil))
			if err != nil {
				t.Fatal(err)
			}
			if !tt.key().Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
				t.Error("returned key is not the CSR's key")
			}
		})
	}
	t.Run("accept RSA-PSS", func(t *testing.T) {
		der := mustCSR(t, keyRSA2048(), &x509.CertificateRequest{SignatureAlgorithm: x509.SHA256WithRSAPSS})
		if _, err := x509ca.CheckCSR(der); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("accept hostile CSR, key only", func(t *testing.T) {
		pub, err := x509ca.CheckCSR(hostileCSR(t, keyP256()))
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := pub.(*ecdsa.PublicKey); !ok {
			t.Fatalf("got %T", pub)
		}
	})

	valid := mustCSR(t, keyP256(), nil)
	bad := []struct {
		name   string
		der    func(t *testing.T) []byte
		policy bool // also ErrKeyPolicy
	}{
		{"empty", func(*testing.T) []byte { return nil }, false},
		{"garbage", func(*testing.T) []byte { return []byte("not a CSR") }, false},
		{"truncated", func(*testing.T) []byte { return valid[:len(valid)-1] }, false},
		{"trailing data", func(*testing.T) []byte { return append(slices.Clone(valid), 0) }, false},
		{"certificate, not CSR", func(t *testing.T) []byte { return newIssuer(t, t0, keyP256(), time.Hour).Cert.Raw }, false},
		{"tampered signature", func(*testing.T) []byte {
			d := slices.Clone(valid)
			d[len(d)-3] ^= 0x01 // inside the ECDSA signature's s value
			return d
		}, false},
		{"tampered request", func(t *testing.T) []byte {
			d := mustCSR(t, keyP256(), &x509.CertificateRequest{DNSNames: []string{"aaaa.example.org"}})
			i := bytes.Index(d, []byte("aaaa"))
			d[i] = 'b'
			return d
		}, false},
		{"signed by another key (no proof of possession)", func(t *testing.T) []byte {
			return resignCSR(t, mustCSR(t, keyP256(), nil), keyP256b(), oidECDSAWithSHA256, crypto.SHA256)
		}, false},
		{"ECDSA with SHA-1", func(t *testing.T) []byte {
			return resignCSR(t, mustCSR(t, keyP256(), nil), keyP256(), oidECDSAWithSHA1, crypto.SHA1)
		}, false},
		{"RSA with SHA-1", func(t *testing.T) []byte {
			return resignCSR(t, mustCSR(t, keyRSA2048(), nil), keyRSA2048(), oidSHA1WithRSA, crypto.SHA1)
		}, false},
		{"P-224", func(t *testing.T) []byte { return mustCSR(t, keyP224(), nil) }, true},
		{"P-521", func(t *testing.T) []byte { return mustCSR(t, keyP521(), nil) }, true},
		{"RSA-1024", func(t *testing.T) []byte { return mustCSR(t, keyRSA1024(), nil) }, true},
		{"Ed25519", func(t *testing.T) []byte { return mustCSR(t, keyEd25519(), nil) }, true},
		{"oversized", func(t *testing.T) []byte {
			var names []string
			for i := 0; len(names)*40 < x509ca.MaxCSRSize; i++ {
				names = append(names, "a-rather-long-label-to-fill-space-"+string(rune('a'+i%26))+".example.org")
			}
			d := mustCSR(t, keyP256(), &x509.CertificateRequest{DNSNames: names})
			if len(d) <= x509ca.MaxCSRSize {
				t.Fatalf("test CSR is only %d bytes", len(d))
			}
			if _, err := x509.ParseCertificateRequest(d); err != nil {
				t.Fatalf("oversized CSR should be otherwise valid: %v", err)
			}
			return d
		}, false},
	}
	for _, tt := range bad {
		t.Run("refuse "+tt.name, func(t *testing.T) {
			pub, err := x509ca.CheckCSR(tt.der(t))
			t.Log(err)
			if !errors.Is(err, x509ca.ErrCSR) {
				t.Fatalf("err = %v, want ErrCSR", err)
			}
			if tt.policy != errors.Is(err, x509ca.ErrKeyPolicy) {
				t.Errorf("errors.Is(err, ErrKeyPolicy) = %v, want %v (err %v)", !tt.policy, tt.policy, err)
			}
			if pub != nil {
				t.Error("key returned with error")
			}
		})
	}
}

func TestSignX509SVIDProfile(t *testing.T) {
	iss := newIssuer(t, t0.Add(-time.Hour), keyP256(), 24*time.Hour)
	id := spiffeid.RequireFromPath(td, "/ns/prod/sa/web")
	pub, err := x509ca.CheckCSR(hostileCSR(t, keyP256b()))
	if err != nil {
		t.Fatal(err)
	}
	p := x509ca.SVIDParams{ID: id, DNSNames: []string{"web.example.org", "web2.example.org"}, TTL: time.Hour, PublicKey: pub}
	der, err := x509ca.SignX509SVID(t0, iss, p)
	if err != nil {
		t.Fatal(err)
	}
	leaf := mustParse(t, der)
	noDNS, err := x509ca.SignX509SVID(t0, iss, x509ca.SVIDParams{ID: id, TTL: time.Hour, PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	leafNoDNS := mustParse(t, noDNS)

	tests := []struct {
		name  string
		check func(t *testing.T, c *x509.Certificate)
	}{
		{"one URI SAN, the ID", func(t *testing.T, c *x509.Certificate) {
			if len(c.URIs) != 1 || c.URIs[0].String() != id.String() {
				t.Errorf("URIs = %v", c.URIs)
			}
		}},
		{"DNS SANs only from params", func(t *testing.T, c *x509.Certificate) {
			if !slices.Equal(c.DNSNames, p.DNSNames) {
				t.Errorf("DNSNames = %q", c.DNSNames)
			}
			if len(c.EmailAddresses)+len(c.IPAddresses) != 0 {
				t.Error("other SANs copied from the CSR")
			}
		}},
		{"not a CA", func(t *testing.T, c *x509.Certificate) {
			if !c.BasicConstraintsValid || c.IsCA {
				t.Errorf("BasicConstraintsValid=%v IsCA=%v", c.BasicConstraintsValid, c.IsCA)
			}
			if e, ok := extension(c, oidBasicConstr); !ok || !e.Critical {
				t.Error("basic constraints missing or not critical")
			}
		}},
		{"key usage", func(t *testing.T, c *x509.Certificate) {
			want := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement
			if c.KeyUsage != want {
				t.Errorf("KeyUsage = %b, want %b", c.KeyUsage, want)
			}
			if e, ok := extension(c, oidKeyUsage); !ok || !e.Critical {
				t.Error("KeyUsage missing or not critical")
			}
		}},
		{"extended key usage", func(t *testing.T, c *x509.Certificate) {
			if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) || len(c.UnknownExtKeyUsage) != 0 {
				t.Errorf("ExtKeyUsage = %v %v", c.ExtKeyUsage, c.UnknownExtKeyUsage)
			}
		}},
		{"exactly the expected extensions", func(t *testing.T, c *x509.Certificate) {
			want := []asn1.ObjectIdentifier{oidKeyUsage, oidExtKeyUsage, oidBasicConstr, oidSAN, oidAKI, oidSKI}
			if len(c.Extensions) != len(want) {
				t.Errorf("%d extensions, want %d", len(c.Extensions), len(want))
			}
			for _, oid := range want {
				if _, ok := extension(c, oid); !ok {
					t.Errorf("extension %v missing", oid)
				}
			}
		}},
		{"serial", func(t *testing.T, c *x509.Certificate) { checkSerial(t, c.SerialNumber) }},
		{"authority key ID", func(t *testing.T, c *x509.Certificate) {
			if len(c.AuthorityKeyId) == 0 || !bytes.Equal(c.AuthorityKeyId, iss.Cert.SubjectKeyId) {
				t.Errorf("AuthorityKeyId = %x, issuer SKI %x", c.AuthorityKeyId, iss.Cert.SubjectKeyId)
			}
		}},
		{"subject key ID", func(t *testing.T, c *x509.Certificate) {
			if !bytes.Equal(c.SubjectKeyId, wantSKI(t, pub)) {
				t.Errorf("SubjectKeyId = %x", c.SubjectKeyId)
			}
		}},
		{"subject", func(t *testing.T, c *x509.Certificate) {
			if !slices.Equal(c.Subject.Organization, []string{"Writ"}) || c.Subject.CommonName != "web.example.org" || len(c.Subject.Names) != 2 {
				t.Errorf("Subject = %v", c.Subject)
			}
		}},
		{"issuer", func(t *testing.T, c *x509.Certificate) {
			if !bytes.Equal(c.RawIssuer, iss.Cert.RawSubject) {
				t.Error("issuer name is not the CA's subject")
			}
			if err := c.CheckSignatureFrom(iss.Cert); err != nil {
				t.Error(err)
			}
		}},
		{"public key from CSR", func(t *testing.T, c *x509.Certificate) {
			if !pub.(*ecdsa.PublicKey).Equal(c.PublicKey) {
				t.Error("wrong public key")
			}
		}},
		{"validity", func(t *testing.T, c *x509.Certificate) {
			if !c.NotBefore.Equal(t0.Add(-x509ca.Backdate)) || !c.NotAfter.Equal(t0.Add(time.Hour)) {
				t.Errorf("validity [%v, %v]", c.NotBefore, c.NotAfter)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.check(t, leaf) })
	}

	t.Run("no DNS names: no CN, no DNS SAN", func(t *testing.T) {
		if leafNoDNS.Subject.CommonName != "" || len(leafNoDNS.DNSNames) != 0 || len(leafNoDNS.Subject.Names) != 1 {
			t.Errorf("Subject %v, DNSNames %q", leafNoDNS.Subject, leafNoDNS.DNSNames)
		}
		if len(leafNoDNS.URIs) != 1 || leafNoDNS.URIs[0].String() != id.String() {
			t.Errorf("URIs = %v", leafNoDNS.URIs)
		}
	})
	t.Run("serials differ", func(t *testing.T) {
		if leaf.SerialNumber.Cmp(leafNoDNS.SerialNumber) == 0 {
			t.Error("same serial twice")
		}
	})
	t.Run("params slices not aliased", func(t *testing.T) {
		dns := []string{"a.example.org"}
		der, err := x509ca.SignX509SVID(t0, iss, x509ca.SVIDParams{ID: id, DNSNames: dns, TTL: time.Hour, PublicKey: pub})
		if err != nil {
			t.Fatal(err)
		}
		dns[0] = "b.example.org"
		if got := mustParse(t, der).DNSNames; got[0] != "a.example.org" {
			t.Error(got)
		}
	})
}

func TestSignX509SVIDIssuerKeys(t *testing.T) {
	for _, tt := range []struct {
		name   string
		issuer func() crypto.Signer
		leaf   func() crypto.Signer
	}{
		{"P-384 issuer, RSA-3072 leaf", keyP384, keyRSA3072},
		{"RSA-2048 issuer, P-384 leaf", keyRSA2048, keyP384},
		{"RSA-2048 issuer, RSA-4096 leaf", keyRSA2048, keyRSA4096},
	} {
		t.Run(tt.name, func(t *testing.T) {
			iss := newIssuer(t, t0, tt.issuer(), time.Hour)
			id := spiffeid.RequireFromPath(td, "/w")
			der, err := x509ca.SignX509SVID(t0, iss, x509ca.SVIDParams{ID: id, TTL: time.Minute, PublicKey: tt.leaf().Public()})
			if err != nil {
				t.Fatal(err)
			}
			got, err := x509ca.VerifyX509SVID([]*x509.Certificate{mustParse(t, der)}, []*x509.Certificate{iss.Cert}, t0)
			if err != nil || got != id {
				t.Fatalf("VerifyX509SVID = %v, %v", got, err)
			}
		})
	}
}

func TestSignX509SVIDValidity(t *testing.T) {
	// The CA is valid [t0-30s, t0+2h].
	iss := newIssuer(t, t0, keyP256(), 2*time.Hour)
	id := spiffeid.RequireFromPath(td, "/w")
	pub := keyP256b().Public()
	tests := []struct {
		name           string
		now            time.Time
		ttl            time.Duration
		wantNB, wantNA time.Time
		wantErr        error
	}{
		{"backdated", t0.Add(time.Hour), time.Hour, t0.Add(time.Hour - x509ca.Backdate), t0.Add(2 * time.Hour), nil},
		{"NotBefore not before the issuer's", t0.Add(-10 * time.Second), time.Hour, t0.Add(-x509ca.Backdate), t0.Add(time.Hour - 10*time.Second), nil},
		{"NotAfter capped to issuer", t0.Add(90 * time.Minute), time.Hour, t0.Add(90*time.Minute - x509ca.Backdate), t0.Add(2 * time.Hour), nil},
		{"one second before issuer expiry", t0.Add(2*time.Hour - time.Second), time.Hour, t0.Add(2*time.Hour - time.Second - x509ca.Backdate), t0.Add(2 * time.Hour), nil},
		{"sub-second now truncated", t0.Add(time.Minute + 700*time.Millisecond), time.Hour, t0.Add(time.Minute - x509ca.Backdate), t0.Add(time.Hour + time.Minute), nil},
		{"issuer expired (at NotAfter)", t0.Add(2 * time.Hour), time.Hour, time.Time{}, time.Time{}, x509ca.ErrIssuerExpired},
		{"issuer expired (after NotAfter)", t0.Add(3 * time.Hour), time.Hour, time.Time{}, time.Time{}, x509ca.ErrIssuerExpired},
		{"issuer not yet valid", t0.Add(-time.Minute), time.Hour, time.Time{}, time.Time{}, x509ca.ErrIssuerNotYetValid},
		{"zero now", time.Time{}, time.Hour, time.Time{}, time.Time{}, x509ca.ErrIssuerNotYetValid},
		{"TTL under a second", t0.Add(time.Minute + 700*time.Millisecond), 200 * time.Millisecond, time.Time{}, time.Time{}, x509ca.ErrParams},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			der, err := x509ca.SignX509SVID(tt.now, iss, x509ca.SVIDParams{ID: id, TTL: tt.ttl, PublicKey: pub})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if der != nil {
					t.Error("DER returned with error")
				}
				return
			}
			c := mustParse(t, der)
			if !c.NotBefore.Equal(tt.wantNB) || !c.NotAfter.Equal(tt.wantNA) {
				t.Errorf("validity [%v, %v], want [%v, %v]", c.NotBefore, c.NotAfter, tt.wantNB, tt.wantNA)
			}
			if c.NotAfter.After(iss.Cert.NotAfter) || c.NotBefore.Before(iss.Cert.NotBefore) {
				t.Error("leaf outside its issuer's validity")
			}
			if tt.now.Before(c.NotBefore) || !tt.now.Before(c.NotAfter) {
				t.Error("leaf not valid when issued")
			}
		})
	}
}

func TestSignX509SVIDErrors(t *testing.T) {
	iss := newIssuer(t, t0, keyP256(), time.Hour)
	id := spiffeid.RequireFromPath(td, "/w")
	valid := func() x509ca.SVIDParams {
		return x509ca.SVIDParams{ID: id, TTL: time.Hour, PublicKey: keyP256b().Public()}
	}
	rsaE3 := *keyRSA2048().Public().(*rsa.PublicKey)
	rsaE3.E = 3
	offCurve := *keyP256b().Public().(*ecdsa.PublicKey)
	offCurve.Y = new(big.Int).Add(offCurve.Y, big.NewInt(1))
	leafAsIssuer := &x509ca.Issuer{Cert: rawLeaf(t, iss, nil), Signer: keyP256b()}
	otherIssuer := &x509ca.Issuer{Cert: mustParse(t, func() []byte {
		c, err := x509ca.NewSelfSignedCA(t0, otherTD, keyP256(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return c.Raw
	}()), Signer: keyP256()}

	tests := []struct {
		name string
		iss  *x509ca.Issuer
		p    func(p *x509ca.SVIDParams)
		want error // nil: any error
	}{
		{"zero ID", iss, func(p *x509ca.SVIDParams) { p.ID = spiffeid.ID{} }, x509ca.ErrParams},
		{"trust domain ID", iss, func(p *x509ca.SVIDParams) { p.ID = td.ID() }, x509ca.ErrParams},
		{"ID in another trust domain", iss, func(p *x509ca.SVIDParams) { p.ID = spiffeid.RequireFromPath(otherTD, "/w") }, x509ca.ErrParams},
		{"zero TTL", iss, func(p *x509ca.SVIDParams) { p.TTL = 0 }, x509ca.ErrParams},
		{"negative TTL", iss, func(p *x509ca.SVIDParams) { p.TTL = -time.Second }, x509ca.ErrParams},
		{"empty DNS name", iss, func(p *x509ca.SVIDParams) { p.DNSNames = []string{""} }, x509ca.ErrParams},
		{"bad DNS name", iss, func(p *x509ca.SVIDParams) { p.DNSNames = []string{"a.example.org", "bad name"} }, x509ca.ErrParams},
		{"uppercase DNS name", iss, func(p *x509ca.SVIDParams) { p.DNSNames = []string{"A.example.org"} }, x509ca.ErrParams},
		{"duplicate DNS name", iss, func(p *x509ca.SVIDParams) { p.DNSNames = []string{"a.example.org", "a.example.org"} }, x509ca.ErrParams},
		{"no key", iss, func(p *x509ca.SVIDParams) { p.PublicKey = nil }, x509ca.ErrKeyPolicy},
		{"nil ECDSA key", iss, func(p *x509ca.SVIDParams) { p.PublicKey = (*ecdsa.PublicKey)(nil) }, x509ca.ErrKeyPolicy},
		{"P-224 key", iss, func(p *x509ca.SVIDParams) { p.PublicKey = keyP224().Public() }, x509ca.ErrKeyPolicy},
		{"P-521 key", iss, func(p *x509ca.SVIDParams) { p.PublicKey = keyP521().Public() }, x509ca.ErrKeyPolicy},
		{"RSA-1024 key", iss, func(p *x509ca.SVIDParams) { p.PublicKey = keyRSA1024().Public() }, x509ca.ErrKeyPolicy},
		{"RSA e=3", iss, func(p *x509ca.SVIDParams) { p.PublicKey = &rsaE3 }, x509ca.ErrKeyPolicy},
		{"ECDSA point off the curve", iss, func(p *x509ca.SVIDParams) { p.PublicKey = &offCurve }, x509ca.ErrKeyPolicy},
		{"Ed25519 key", iss, func(p *x509ca.SVIDParams) { p.PublicKey = keyEd25519().Public() }, x509ca.ErrKeyPolicy},
		{"private key instead of public", iss, func(p *x509ca.SVIDParams) { p.PublicKey = keyP256b() }, x509ca.ErrKeyPolicy},
		{"nil issuer", nil, nil, x509ca.ErrIssuer},
		{"issuer without signer", &x509ca.Issuer{Cert: iss.Cert}, nil, x509ca.ErrIssuer},
		{"issuer without certificate", &x509ca.Issuer{Signer: iss.Signer}, nil, x509ca.ErrIssuer},
		{"issuer is a leaf", leafAsIssuer, nil, x509ca.ErrIssuer},
		{"issuer of another trust domain", otherIssuer, nil, x509ca.ErrParams},
		{"signer does not match issuer", &x509ca.Issuer{Cert: iss.Cert, Signer: keyP256b()}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := valid()
			if tt.p != nil {
				tt.p(&p)
			}
			der, err := x509ca.SignX509SVID(t0, tt.iss, p)
			t.Log(err)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if der != nil {
				t.Error("DER returned with error")
			}
		})
	}
}

func TestSVIDAcceptedByGoSPIFFE(t *testing.T) {
	iss := newIssuer(t, t0, keyP256(), 2*time.Hour)
	id := spiffeid.RequireFromPath(td, "/ns/prod/sa/web")
	for _, tt := range []struct {
		name string
		key  func() crypto.Signer
	}{{"P-256", keyP256b}, {"P-384", keyP384}, {"RSA-2048", keyRSA2048}} {
		t.Run(tt.name, func(t *testing.T) {
			key := tt.key()
			pub, err := x509ca.CheckCSR(mustCSR(t, key, nil))
			if err != nil {
				t.Fatal(err)
			}
			der, err := x509ca.SignX509SVID(t0, iss, x509ca.SVIDParams{ID: id, DNSNames: []string{"web.example.org"}, TTL: time.Hour, PublicKey: pub})
			if err != nil {
				t.Fatal(err)
			}
			leaf := mustParse(t, der)
			bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{iss.Cert})

			gotID, chains, err := x509svid.Verify([]*x509.Certificate{leaf}, bundle, x509svid.WithTime(t0.Add(time.Minute)))
			if err != nil || gotID != id || len(chains) != 1 {
				t.Fatalf("x509svid.Verify = %v, %d chains, %v", gotID, len(chains), err)
			}
			gotID, err = x509ca.VerifyX509SVID([]*x509.Certificate{leaf}, []*x509.Certificate{iss.Cert}, t0.Add(time.Minute))
			if err != nil || gotID != id {
				t.Fatalf("VerifyX509SVID = %v, %v", gotID, err)
			}

			pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
			if err != nil {
				t.Fatal(err)
			}
			svid, err := x509svid.ParseRaw(der, pkcs8)
			if err != nil {
				t.Fatalf("x509svid.ParseRaw: %v", err)
			}
			if svid.ID != id {
				t.Errorf("ParseRaw ID = %v", svid.ID)
			}
			certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
			keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
			if svid, err = x509svid.Parse(certPEM, keyPEM); err != nil || svid.ID != id {
				t.Fatalf("x509svid.Parse = %v, %v", svid, err)
			}
		})
	}
}

func TestVerifyX509SVID(t *testing.T) {
	iss := newIssuer(t, t0.Add(-time.Hour), keyP256(), 3*time.Hour)
	otherCA := newIssuer(t, t0.Add(-time.Hour), keyP384(), 3*time.Hour)
	id := spiffeid.RequireFromPath(td, "/w")
	der, err := x509ca.SignX509SVID(t0, iss, x509ca.SVIDParams{ID: id, TTL: time.Hour, PublicKey: keyP256b().Public()})
	if err != nil {
		t.Fatal(err)
	}
	leaf := mustParse(t, der)
	roots := []*x509.Certificate{iss.Cert}

	// An intermediate CA below iss, and a leaf it signs.
	interKey := keyP384()
	interDER, err := x509.CreateCertificate(nil, &x509.Certificate{
		SerialNumber:          big.NewInt(7),
		NotBefore:             t0.Add(-time.Hour),
		NotAfter:              t0.Add(time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		URIs:                  []*url.URL{td.ID().URL()},
		SubjectKeyId:          []byte{1, 2, 3},
	}, iss.Cert, interKey.Public(), iss.Signer)
	if err != nil {
		t.Fatal(err)
	}
	inter := &x509ca.Issuer{Cert: mustParse(t, interDER), Signer: interKey}
	chainedDER, err := x509ca.SignX509SVID(t0, inter, x509ca.SVIDParams{ID: id, TTL: time.Hour, PublicKey: keyP256b().Public()})
	if err != nil {
		t.Fatal(err)
	}
	chained := mustParse(t, chainedDER)

	// crossRoot is a CA of otherTD; crossLeaf, an ID of td it signed.
	crossRoot := &x509ca.Issuer{Cert: mustParse(t, func() []byte {
		c, err := x509ca.NewSelfSignedCA(t0.Add(-time.Hour), otherTD, keyP384(), 3*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return c.Raw
	}()), Signer: keyP384()}
	crossLeaf := rawLeaf(t, crossRoot, nil)
	// crossInter is an intermediate for otherTD under td's root.
	crossInterDER, err := x509.CreateCertificate(nil, &x509.Certificate{
		SerialNumber:          big.NewInt(8),
		NotBefore:             t0.Add(-time.Hour),
		NotAfter:              t0.Add(time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		URIs:                  []*url.URL{otherTD.ID().URL()},
	}, iss.Cert, interKey.Public(), iss.Signer)
	if err != nil {
		t.Fatal(err)
	}
	crossInter := mustParse(t, crossInterDER)
	crossChained := rawLeaf(t, &x509ca.Issuer{Cert: crossInter, Signer: interKey}, nil)

	t.Run("go-spiffe trusts the bundle mapping, we also check the CA's domain", func(t *testing.T) {
		b := x509bundle.FromX509Authorities(td, []*x509.Certificate{crossRoot.Cert})
		if _, _, err := x509svid.Verify([]*x509.Certificate{crossLeaf}, b, x509svid.WithTime(t0)); err != nil {
			t.Fatalf("test setup: go-spiffe refused: %v", err)
		}
	})
	t.Run("union of roots", func(t *testing.T) {
		if got, err := x509ca.VerifyX509SVID([]*x509.Certificate{leaf}, []*x509.Certificate{crossRoot.Cert, iss.Cert}, t0); err != nil || got != id {
			t.Fatalf("= %v, %v", got, err)
		}
	})
	t.Run("leaf", func(t *testing.T) {
		if got, err := x509ca.VerifyX509SVID([]*x509.Certificate{leaf}, roots, t0); err != nil || got != id {
			t.Fatalf("= %v, %v", got, err)
		}
	})
	t.Run("leaf with intermediate", func(t *testing.T) {
		if got, err := x509ca.VerifyX509SVID([]*x509.Certificate{chained, inter.Cert}, roots, t0); err != nil || got != id {
			t.Fatalf("= %v, %v", got, err)
		}
	})

	tests := []struct {
		name  string
		chain []*x509.Certificate
		roots []*x509.Certificate
		now   time.Time
		want  error
	}{
		{"empty chain", nil, roots, t0, x509ca.ErrNotSVID},
		{"nil leaf", []*x509.Certificate{nil}, roots, t0, x509ca.ErrNotSVID},
		{"no URI SAN", []*x509.Certificate{rawLeaf(t, iss, func(c *x509.Certificate) { c.URIs = nil })}, roots, t0, x509ca.ErrNotSVID},
		{"two URI SANs", []*x509.Certificate{rawLeaf(t, iss, func(c *x509.Certificate) {
			c.URIs = append(c.URIs, spiffeid.RequireFromPath(td, "/x").URL())
		})}, roots, t0, x509ca.ErrNotSVID},
		{"URI SAN not a SPIFFE ID", []*x509.Certificate{rawLeaf(t, iss, func(c *x509.Certificate) {
			c.URIs = []*url.URL{{Scheme: "https", Host: "example.org", Path: "/w"}}
		})}, roots, t0, x509ca.ErrNotSVID},
		{"URI SAN not canonical", []*x509.Certificate{rawLeaf(t, iss, func(c *x509.Certificate) {
			c.URIs = []*url.URL{{Scheme: "spiffe", Host: "Example.org", Path: "/w"}}
		})}, roots, t0, x509ca.ErrNotSVID},
		{"leaf is a CA", []*x509.Certificate{rawLeaf(t, iss, func(c *x509.Certificate) { c.IsCA = true })}, roots, t0, x509ca.ErrNotSVID},
		{"no basic constraints", []*x509.Certificate{rawLeaf(t, iss, func(c *x509.Certificate) { c.BasicConstraintsValid = false })}, roots, t0, x509ca.ErrNotSVID},
		{"keyCertSign", []*x509.Certificate{rawLeaf(t, iss, func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign })}, roots, t0, x509ca.ErrNotSVID},
		{"cRLSign", []*x509.Certificate{rawLeaf(t, iss, func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCRLSign })}, roots, t0, x509ca.ErrNotSVID},
		{"no digitalSignature", []*x509.Certificate{rawLeaf(t, iss, func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyEncipherment })}, roots, t0, x509ca.ErrNotSVID},
		{"no key usage", []*x509.Certificate{rawLeaf(t, iss, func(c *x509.Certificate) { c.KeyUsage = 0 })}, roots, t0, x509ca.ErrNotSVID},
		{"intermediate not a CA", []*x509.Certificate{chained, leaf}, roots, t0, x509ca.ErrNotSVID},
		{"missing intermediate", []*x509.Certificate{chained}, roots, t0, x509ca.ErrUntrusted},
		{"no roots", []*x509.Certificate{leaf}, nil, t0, x509ca.ErrUntrusted},
		{"other trust domain's roots", []*x509.Certificate{leaf}, []*x509.Certificate{otherCA.Cert}, t0, x509ca.ErrUntrusted},
		{"signed by a root of another trust domain", []*x509.Certificate{crossLeaf}, []*x509.Certificate{crossRoot.Cert}, t0, x509ca.ErrUntrusted},
		{"intermediate of another trust domain", []*x509.Certificate{crossChained, crossInter}, []*x509.Certificate{iss.Cert}, t0, x509ca.ErrNotSVID},
		{"expired", []*x509.Certificate{leaf}, roots, t0.Add(time.Hour + time.Second), x509ca.ErrUntrusted},
		{"not yet valid", []*x509.Certificate{leaf}, roots, t0.Add(-time.Minute), x509ca.ErrUntrusted},
		{"zero time", []*x509.Certificate{leaf}, roots, time.Time{}, x509ca.ErrParams},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := x509ca.VerifyX509SVID(tt.chain, tt.roots, tt.now)
			t.Log(err)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if !got.IsZero() {
				t.Errorf("ID %v returned with error", got)
			}
		})
	}
}

func TestKeyTypes(t *testing.T) {
	if got := x509ca.KeyTypes(); !slices.Equal(got, []string{"ec-p256", "ec-p384", "rsa-2048"}) {
		t.Errorf("KeyTypes() = %q", got)
	}
	x509ca.KeyTypes()[0] = "mutated"
	if x509ca.KeyTypes()[0] != "ec-p256" {
		t.Error("KeyTypes returns shared slice")
	}
	for _, kt := range x509ca.KeyTypes() {
		t.Run(kt, func(t *testing.T) {
			got, err := x509ca.ParseKeyType(kt)
			if err != nil || got != kt {
				t.Fatalf("ParseKeyType = %q, %v", got, err)
			}
			k, err := x509ca.GenerateKey(kt)
			if err != nil {
				t.Fatal(err)
			}
			if err := x509ca.CheckPublicKey(k.Public()); err != nil {
				t.Error(err)
			}
			var ok bool
			switch kt {
			case "ec-p256":
				ek, isEC := k.(*ecdsa.PrivateKey)
				ok = isEC && ek.Curve.Params().Name == "P-256"
			case "ec-p384":
				ek, isEC := k.(*ecdsa.PrivateKey)
				ok = isEC && ek.Curve.Params().Name == "P-384"
			case "rsa-2048":
				rk, isRSA := k.(*rsa.PrivateKey)
				ok = isRSA && rk.N.BitLen() == 2048
			}
			if !ok {
				t.Errorf("GenerateKey(%q) made %T", kt, k)
			}
		})
	}
	for _, bad := range []string{"", "EC-P256", "ec-p256 ", "ec-p521", "rsa-1024", "ed25519"} {
		if _, err := x509ca.ParseKeyType(bad); !errors.Is(err, x509ca.ErrKeyType) {
			t.Errorf("ParseKeyType(%q) err = %v", bad, err)
		}
		if k, err := x509ca.GenerateKey(bad); !errors.Is(err, x509ca.ErrKeyType) || k != nil {
			t.Errorf("GenerateKey(%q) = %v, %v", bad, k, err)
		}
	}
}

// Only an SVID signed with Agent set carries the agent policy, and it
// verifies as an X.509-SVID like any other (here, and with go-spiffe).
func TestSignX509SVIDAgentPolicy(t *testing.T) {
	iss := newIssuer(t, t0, keyP256(), 2*time.Hour)
	id := spiffeid.RequireFromPath(td, "/writ/agent/join_token/n1")
	pub, err := x509ca.CheckCSR(mustCSR(t, keyP256b(), nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, agent := range []bool{false, true} {
		der, err := x509ca.SignX509SVID(t0, iss, x509ca.SVIDParams{ID: id, TTL: time.Hour, PublicKey: pub, Agent: agent})
		if err != nil {
			t.Fatal(err)
		}
		leaf := mustParse(t, der)
		if got := x509ca.IsAgentSVID(leaf); got != agent {
			t.Errorf("Agent=%v: IsAgentSVID = %v (policies %v)", agent, got, leaf.Policies)
		}
		if agent && len(leaf.Policies) != 1 {
			t.Errorf("policies = %v, want only the agent one", leaf.Policies)
		}
		if !agent && len(leaf.Policies) != 0 {
			t.Errorf("workload SVID has policies %v", leaf.Policies)
		}
		bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{iss.Cert})
		if _, _, err := x509svid.Verify([]*x509.Certificate{leaf}, bundle, x509svid.WithTime(t0.Add(time.Minute))); err != nil {
			t.Errorf("Agent=%v: x509svid.Verify: %v", agent, err)
		}
		if _, err := x509ca.VerifyX509SVID([]*x509.Certificate{leaf}, []*x509.Certificate{iss.Cert}, t0.Add(time.Minute)); err != nil {
			t.Errorf("Agent=%v: VerifyX509SVID: %v", agent, err)
		}
	}
}
