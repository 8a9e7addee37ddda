package nodeapi_test

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	nodev1 "writ.dev/writ/ca/api/node/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/x509ca"
)

// mintDownstream returns a downstream CA of the trust domain, minted for
// a downstream entry of agent a.
func (e *env) mintDownstream(a *agent) *x509ca.Issuer {
	t := e.t
	t.Helper()
	down := e.createEntry("spiffe://example.org/regional", a.id.String(), func(en *entry.Entry) { en.Downstream = true })
	caKey := newKey(t)
	resp, err := a.client.MintDownstreamX509CA(ctxT(t), &nodev1.MintDownstreamX509CARequest{EntryId: down.ID, Csr: caCSR(t.(*testing.T), caKey, []string{"spiffe://example.org"})})
	if err != nil {
		t.Fatal(err)
	}
	var chain []*x509.Certificate
	for _, der := range resp.CaChain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	return &x509ca.Issuer{Cert: chain[0], Signer: caKey, Chain: chain}
}

// TestUnrecordedAgentSVID: an agent SVID its record does not name (as
// one renewed while the datastore was unavailable) authenticates only if
// a server CA signed it after the record last changed, and is then
// recorded as the agent's current SVID. A downstream CA, whose SVIDs
// verify against the same bundle, cannot make one.
func TestUnrecordedAgentSVID(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	b := e.attest(agentB)
	downstream := e.mintDownstream(a)
	server := e.km.Active().X509

	// sign makes an SVID for agent B signed by iss now, and returns
	// the result of an authenticated call with it.
	sign := func(iss *x509ca.Issuer) (*x509.Certificate, error) {
		t.Helper()
		key := newKey(t)
		der, err := x509ca.SignX509SVID(e.clock.Now(), iss, x509ca.SVIDParams{ID: b.id, TTL: time.Hour, PublicKey: key.Public(), Agent: true})
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		cert := &tls.Certificate{Certificate: iss.SVIDChain(der), PrivateKey: key, Leaf: leaf}
		_, err = e.client(cert).BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{})
		return leaf, err
	}

	e.clock.Advance(time.Minute)
	_, err := sign(downstream)
	wantCode(t, err, codes.PermissionDenied, "agent is not attested")

	// Signed by the server, but before the record last changed (as by
	// an unban).
	e.clock.Advance(time.Minute)
	old := server
	oldKey := newKey(t)
	oldDER, err := x509ca.SignX509SVID(e.clock.Now(), old, x509ca.SVIDParams{ID: b.id, TTL: time.Hour, PublicKey: oldKey.Public(), Agent: true})
	if err != nil {
		t.Fatal(err)
	}
	oldLeaf, _ := x509.ParseCertificate(oldDER)
	e.clock.Advance(time.Minute)
	if _, err := e.store.UpdateAgent(ctxT(t), b.id, func(r *datastore.Agent) error { r.UpdatedAt = e.clock.Now(); return nil }); err != nil {
		t.Fatal(err)
	}
	oldCert := &tls.Certificate{Certificate: old.SVIDChain(oldDER), PrivateKey: oldKey, Leaf: oldLeaf}
	_, err = e.client(oldCert).BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{})
	wantCode(t, err, codes.PermissionDenied, "agent is not attested")

	// Signed by the server after the record last changed: accepted and
	// recorded, the attested SVID becoming the previous one.
	e.clock.Advance(time.Minute)
	leaf, err := sign(server)
	if err != nil {
		t.Fatalf("SVID signed by the server after the record: %v", err)
	}
	r := e.fetchAgent(b.id)
	if r.SerialNumber != leaf.SerialNumber.String() || r.PrevSerialNumber != b.serial() || !r.CertNotAfter.Equal(leaf.NotAfter) {
		t.Fatalf("record names %s (previous %s, NotAfter %s), want %s (previous %s, NotAfter %s)", r.SerialNumber, r.PrevSerialNumber, r.CertNotAfter, leaf.SerialNumber, b.serial(), leaf.NotAfter)
	}
	if got := e.logs.find("agent record names an SVID renewed while the datastore was unavailable"); len(got) != 1 {
		t.Fatalf("%d records of the recording, want 1", len(got))
	}

	// Banned: refused, however new the SVID.
	e.setBanned(b.id, true)
	e.clock.Advance(time.Minute)
	_, err = sign(server)
	wantCode(t, err, codes.PermissionDenied, "agent is banned")
}

// TestUnrecordedNeedsAgentSVID: only an agent SVID for an agent ID takes
// the unrecorded path. A workload SVID the server signed for an agent's
// ID, and any certificate for a legacy agent ID (outside /writ/agent/,
// which a workload entry may use), authenticate only by the record's
// serials, and are never recorded.
func TestUnrecordedNeedsAgentSVID(t *testing.T) {
	e := newEnv(t, envOptions{})
	b := e.attest(agentB)
	legacy := spiffeid.RequireFromString("spiffe://example.org/node1")
	now := e.clock.Now()
	if err := e.store.CreateAgent(ctxT(t), &datastore.Agent{SPIFFEID: legacy, AttestationType: "join_token", SerialNumber: "12345", CertNotAfter: now.Add(time.Hour), CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	server := e.km.Active().X509

	// call signs an SVID for id with the server's CA now, and returns
	// it and the result of an authenticated call with it.
	call := func(id spiffeid.ID, agent bool) (*x509.Certificate, error) {
		t.Helper()
		key := newKey(t)
		der, err := x509ca.SignX509SVID(e.clock.Now(), server, x509ca.SVIDParams{ID: id, TTL: time.Hour, PublicKey: key.Public(), Agent: agent})
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		cert := &tls.Certificate{Certificate: server.SVIDChain(der), PrivateKey: key, Leaf: leaf}
		_, err = e.client(cert).BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{})
		return leaf, err
	}
	unchanged := func(id spiffeid.ID, serial string) {
		t.Helper()
		if r := e.fetchAgent(id); r.SerialNumber != serial || r.PrevSerialNumber != "" {
			t.Fatalf("record of %s names %s (previous %q), want %s", id, r.SerialNumber, r.PrevSerialNumber, serial)
		}
	}

	e.clock.Advance(time.Minute)
	_, err := call(b.id, false)
	wantCode(t, err, codes.PermissionDenied, "agent is not attested")
	unchanged(b.id, b.serial())
	for _, agent := range []bool{false, true} {
		_, err := call(legacy, agent)
		wantCode(t, err, codes.PermissionDenied, "agent is not attested")
		unchanged(legacy, "12345")
	}

	// The legacy agent still authenticates with the SVID its record
	// names.
	key := newKey(t)
	der, err := x509ca.SignX509SVID(e.clock.Now(), server, x509ca.SVIDParams{ID: legacy, TTL: time.Hour, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	if _, err := e.store.UpdateAgent(ctxT(t), legacy, func(r *datastore.Agent) error { r.SerialNumber = leaf.SerialNumber.String(); return nil }); err != nil {
		t.Fatal(err)
	}
	cert := &tls.Certificate{Certificate: server.SVIDChain(der), PrivateKey: key, Leaf: leaf}
	if _, err := e.client(cert).BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{}); err != nil {
		t.Fatalf("legacy agent with its recorded SVID: %v", err)
	}
}

// TestRecordedSerialNeedsServerCA: the serials an agent record names
// authenticate only certificates a server CA signed. A downstream CA,
// whose certificates verify against the same bundle, cannot copy an
// agent's serial (serials are logged and shown); an agent whose SVID a
// since tainted CA signed still renews.
func TestRecordedSerialNeedsServerCA(t *testing.T) {
	e := newEnv(t, envOptions{})
	a := e.attest(agentA)
	b := e.attest(agentB)
	downstream := e.mintDownstream(a)

	key := newKey(t)
	l := b.leaf
	tmpl := &x509.Certificate{
		SerialNumber:          l.SerialNumber,
		Subject:               l.Subject,
		NotBefore:             l.NotBefore,
		NotAfter:              l.NotAfter,
		BasicConstraintsValid: true,
		KeyUsage:              l.KeyUsage,
		ExtKeyUsage:           l.ExtKeyUsage,
		URIs:                  l.URIs,
		Policies:              l.Policies,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, downstream.Cert, key.Public(), downstream.Signer)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	cert := &tls.Certificate{Certificate: downstream.SVIDChain(der), PrivateKey: key, Leaf: forged}
	_, err = e.client(cert).BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{})
	wantCode(t, err, codes.PermissionDenied, "agent is not attested")
	if r := e.fetchAgent(b.id); r.SerialNumber != b.serial() || r.PrevSerialNumber != "" {
		t.Fatalf("record names %s (previous %q), want %s", r.SerialNumber, r.PrevSerialNumber, b.serial())
	}

	// Taint the CA that signed b's SVID: b renews from it.
	km := e.km.Manager
	tainted := hex.EncodeToString(km.Active().X509.Cert.SubjectKeyId)
	if _, err := km.Rotate(ctxT(t), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := km.Taint(ctxT(t), datastore.CAKeyX509, tainted); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the index to see the taint", func() bool {
		m := e.sync(a).next()
		return m.Tainted != nil && len(m.Tainted.X509AuthorityIds) == 1
	})
	resp, err := e.client(b.cert).RenewAgent(ctxT(t), &nodev1.RenewAgentRequest{Csr: newCSR(t, b.key)})
	if err != nil {
		t.Fatalf("renewal from an SVID of the tainted CA: %v", err)
	}
	b.setSVID(t, resp.SvidChain)
	if _, err := e.client(b.cert).BatchSignX509SVID(ctxT(t), &nodev1.BatchSignX509SVIDRequest{}); err != nil {
		t.Fatalf("renewed SVID: %v", err)
	}
}

// TestRenewAgentKeepsLaterUpdatedAt: a renewal never moves the record's
// UpdatedAt backwards (a server whose clock runs ahead may have recorded
// a later signing time), or an SVID signed before it could pass as
// signed after it.
func TestRenewAgentKeepsLaterUpdatedAt(t *testing.T) {
	e := newEnv(t, envOptions{})
	b := e.attest(agentB)
	ahead := e.clock.Now().Add(10 * time.Minute)
	if _, err := e.store.UpdateAgent(ctxT(t), b.id, func(r *datastore.Agent) error { r.UpdatedAt = ahead; return nil }); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Minute)
	resp, err := b.client.RenewAgent(ctxT(t), &nodev1.RenewAgentRequest{Csr: newCSR(t, b.key)})
	if err != nil {
		t.Fatal(err)
	}
	b.setSVID(t, resp.SvidChain)
	if r := e.fetchAgent(b.id); r.SerialNumber != b.serial() || !r.UpdatedAt.Equal(ahead) {
		t.Fatalf("record names %s, UpdatedAt %s; want %s, %s", r.SerialNumber, r.UpdatedAt, b.serial(), ahead)
	}
}
