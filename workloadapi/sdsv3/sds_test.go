package sdsv3_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/workloadapi/sdsv3"
)

// These tests play Envoy with an xDS client built from go-control-plane's
// generated stubs: no Envoy binary is available where they run.

func ctxTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func parsePEMCerts(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatal("no PEM certificate")
	}
	return out
}

func TestStreamSecretsSubscribesAcksAndPushesChanges(t *testing.T) {
	e := newEnv(t, sdsv3.Config{})
	a := e.add("/svc/a")
	b := e.add("/svc/b")
	e.add("/svc/other", "unix:uid:54321")
	bID := b.SPIFFEID.String()
	names := []string{"default", "ROOTCA", "ALL", bID}

	s := e.stream(ctxTimeout(t))
	s.send(&discoveryv3.DiscoveryRequest{Node: envoyNode(40), ResourceNames: names})
	r1 := s.next()
	if r1.VersionInfo == "" || r1.Nonce == "" || r1.TypeUrl != sdsv3.SecretTypeURL {
		t.Fatalf("response version %q nonce %q type %q: want both set and the Secret type", r1.VersionInfo, r1.Nonce, r1.TypeUrl)
	}
	got := secrets(t, r1)
	if len(got) != 4 {
		t.Fatalf("got %d secrets, want 4 (%v)", len(got), names)
	}
	if id := leafOf(t, got["default"]).URIs[0].String(); id != a.SPIFFEID.String() {
		t.Errorf("default is %s, want the first SVID %s", id, a.SPIFFEID)
	}
	if id := leafOf(t, got[bID]).URIs[0].String(); id != bID {
		t.Errorf("secret %s holds %s", bID, id)
	}
	for _, n := range []string{"ROOTCA", "ALL"} {
		cfg := spiffeValidator(t, got[n])
		if len(cfg.TrustDomains) != 1 || cfg.TrustDomains[0].Name != "example.org" {
			t.Fatalf("%s trust domains %v, want example.org", n, cfg.TrustDomains)
		}
		if c := parsePEMCerts(t, cfg.TrustDomains[0].GetTrustBundle().GetInlineBytes()); len(c) != 1 || !c[0].Equal(e.iss.Cert) {
			t.Errorf("%s: bundle is not the CA certificate", n)
		}
	}
	s.ack(r1, names...)

	// An SVID rotation is pushed at once.
	start := time.Now()
	newA := e.sign(a)
	r2 := s.next()
	checkPushTime(t, "rotation", time.Since(start))
	if r2.VersionInfo == r1.VersionInfo || r2.Nonce == r1.Nonce {
		t.Errorf("update has version %q nonce %q, the same as before", r2.VersionInfo, r2.Nonce)
	}
	if leaf := leafOf(t, secrets(t, r2)["default"]); !bytes.Equal(leaf.Raw, newA.LeafDER()) {
		t.Error("default after rotation is not the new SVID")
	}
	s.ack(r2, names...)

	// So is a bundle change.
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	next, err := x509ca.NewSelfSignedCA(time.Now(), td, key, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	e.cache.Apply(svidcache.Update{Bundle: spiffebundle.FromX509Authorities(td, []*x509.Certificate{e.iss.Cert, next})})
	r3 := s.next()
	checkPushTime(t, "bundle change", time.Since(start))
	for _, n := range []string{"ROOTCA", "ALL"} {
		cfg := spiffeValidator(t, secrets(t, r3)[n])
		if c := parsePEMCerts(t, cfg.TrustDomains[0].GetTrustBundle().GetInlineBytes()); len(c) != 2 {
			t.Errorf("%s after the bundle change has %d authorities, want 2", n, len(c))
		}
	}
	s.ack(r3, names...)

	// A change to what the stream did not ask for is not pushed: the
	// response after rotating c, then b, is b's rotation.
	c := e.add("/svc/c")
	e.sign(c)
	newB := e.sign(b)
	r4 := s.next()
	if leaf := leafOf(t, secrets(t, r4)[bID]); !bytes.Equal(leaf.Raw, newB.LeafDER()) {
		t.Error("the response after rotating /svc/c and /svc/b is not b's rotation: a change the stream did not ask for was pushed")
	}
	if r4.VersionInfo == r3.VersionInfo {
		t.Error("version did not change")
	}
}

func TestStreamSecretsNACKIsNotRetried(t *testing.T) {
	e := newEnv(t, sdsv3.Config{})
	a := e.add("/svc/a")
	s := e.stream(ctxTimeout(t))
	s.send(&discoveryv3.DiscoveryRequest{Node: envoyNode(40), ResourceNames: []string{"default"}})
	r1 := s.next()
	// Envoy rejects it: the request names the nonce, the last version it
	// accepted (none) and the error.
	s.send(&discoveryv3.DiscoveryRequest{ResponseNonce: r1.Nonce, ResourceNames: []string{"default"},
		ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: "rejected for the test"}})
	// The next response is the next change, not the same secrets again.
	newA := e.sign(a)
	r2 := s.next()
	if leaf := leafOf(t, secrets(t, r2)["default"]); !bytes.Equal(leaf.Raw, newA.LeafDER()) {
		t.Fatal("after a NACK the server sent the rejected secrets again")
	}
	// A reply to an old nonce is ignored, even with other names.
	s.send(&discoveryv3.DiscoveryRequest{ResponseNonce: r1.Nonce, VersionInfo: r1.VersionInfo, ResourceNames: []string{"ROOTCA"}})
	newA = e.sign(a)
	r3 := s.next()
	if got := secrets(t, r3); len(got) != 1 || got["default"] == nil || !bytes.Equal(leafOf(t, got["default"]).Raw, newA.LeafDER()) {
		t.Fatalf("after a stale request: got %v, want the rotated default only", got)
	}
}

func TestCallerGetsOnlyItsOwnKeys(t *testing.T) {
	e := newEnv(t, sdsv3.Config{})
	a := e.add("/svc/a")
	other := e.add("/svc/other", "unix:uid:54321")
	otherID := other.SPIFFEID.String()

	// Everything (no names): the caller's SVIDs and the trust domain.
	resp, err := e.client().FetchSecrets(ctxTimeout(t), &discoveryv3.DiscoveryRequest{TypeUrl: sdsv3.SecretTypeURL})
	if err != nil {
		t.Fatal(err)
	}
	got := secrets(t, resp)
	if len(got) != 2 || got[a.SPIFFEID.String()] == nil || got[td.IDString()] == nil {
		t.Fatalf("all secrets: got %v, want %s and %s", keys(got), a.SPIFFEID, td.IDString())
	}
	// Another's SPIFFE ID, asked for by name: nothing.
	resp, err = e.client().FetchSecrets(ctxTimeout(t), &discoveryv3.DiscoveryRequest{ResourceNames: []string{otherID}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 0 {
		t.Fatalf("FetchSecrets(%s) returned %d secrets to a caller without that identity", otherID, len(resp.GetResources()))
	}
	// On a stream: nothing is sent for it, and a later response for
	// other names leaves it out.
	s := e.stream(ctxTimeout(t))
	s.send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{otherID}})
	s.send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{otherID, "default"}})
	if got := secrets(t, s.next()); len(got) != 1 || got["default"] == nil {
		t.Fatalf("got %v, want default only", keys(got))
	}
}

func TestMissingNameIsSentWhenItExists(t *testing.T) {
	e := newEnv(t, sdsv3.Config{})
	e.add("/svc/a")
	name := spiffeid.RequireFromPath(td, "/svc/late").String()
	s := e.stream(ctxTimeout(t))
	s.send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{name}})
	e.add("/svc/late")
	if got := secrets(t, s.next()); len(got) != 1 || got[name] == nil {
		t.Fatalf("got %v, want %s", keys(got), name)
	}
}

func TestCallerWithoutIdentityIsRefused(t *testing.T) {
	e := newEnv(t, sdsv3.Config{})
	e.add("/svc/other", "unix:uid:54321")
	_, err := e.client().FetchSecrets(ctxTimeout(t), &discoveryv3.DiscoveryRequest{ResourceNames: []string{"default"}})
	if grpcstatus.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchSecrets: %v, want PermissionDenied", err)
	}
	s := e.stream(ctxTimeout(t))
	s.send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{"default"}})
	if r := s.nextResult(); grpcstatus.Code(r.err) != codes.PermissionDenied {
		t.Fatalf("StreamSecrets: %v, want PermissionDenied", r.err)
	}
}

func TestWrongTypeIsRefused(t *testing.T) {
	e := newEnv(t, sdsv3.Config{})
	e.add("/svc/a")
	_, err := e.client().FetchSecrets(ctxTimeout(t), &discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster"})
	if grpcstatus.Code(err) != codes.InvalidArgument {
		t.Fatalf("FetchSecrets of clusters: %v, want InvalidArgument", err)
	}
}

func TestTooManyNamesAreRefused(t *testing.T) {
	e := newEnv(t, sdsv3.Config{})
	e.add("/svc/a")
	names := make([]string, sdsv3.MaxResourceNames+1)
	for i := range names {
		names[i] = fmt.Sprintf("n%d", i)
	}
	_, err := e.client().FetchSecrets(ctxTimeout(t), &discoveryv3.DiscoveryRequest{ResourceNames: names})
	if grpcstatus.Code(err) != codes.InvalidArgument {
		t.Fatalf("FetchSecrets with %d names: %v, want InvalidArgument", len(names), err)
	}
	_, err = e.client().FetchSecrets(ctxTimeout(t), &discoveryv3.DiscoveryRequest{ResourceNames: names[:sdsv3.MaxResourceNames]})
	if err != nil {
		t.Fatalf("FetchSecrets with %d names: %v", sdsv3.MaxResourceNames, err)
	}
}

func TestValidationContextForms(t *testing.T) {
	tdName := td.IDString()
	tests := []struct {
		name       string
		cfg        sdsv3.Config
		minor      uint32 // Envoy 1.minor; 0: no version sent
		wantSPIFFE bool
	}{
		{name: "envoy 1.40", minor: 40, wantSPIFFE: true},
		{name: "envoy 1.17", minor: 17},
		{name: "no version", minor: 0},
		{name: "disabled", minor: 40, cfg: sdsv3.Config{DisableSPIFFECertValidation: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.cfg)
			e.add("/svc/a")
			req := &discoveryv3.DiscoveryRequest{ResourceNames: []string{"ROOTCA", tdName, "ALL"}}
			if tt.minor != 0 {
				req.Node = envoyNode(tt.minor)
			}
			resp, err := e.client().FetchSecrets(ctxTimeout(t), req)
			if err != nil {
				t.Fatal(err)
			}
			got := secrets(t, resp)
			for _, n := range []string{"ROOTCA", tdName} {
				vc := got[n].GetValidationContext()
				if vc == nil {
					t.Fatalf("%s: no validation context", n)
				}
				if tt.wantSPIFFE {
					spiffeValidator(t, got[n])
				} else if c := parsePEMCerts(t, vc.GetTrustedCa().GetInlineBytes()); !c[0].Equal(e.iss.Cert) {
					t.Errorf("%s: trusted_ca is not the CA", n)
				}
			}
			// ALL exists only in the SPIFFE validator form: trusted_ca
			// cannot keep trust domains apart.
			if (got["ALL"] != nil) != tt.wantSPIFFE {
				t.Errorf("ALL served: %v, want %v", got["ALL"] != nil, tt.wantSPIFFE)
			}
		})
	}
}

func TestDefaultNamesAreConfigurable(t *testing.T) {
	e := newEnv(t, sdsv3.Config{DefaultSVIDName: "svid", DefaultBundleName: "ca", DefaultAllBundlesName: "every"})
	e.add("/svc/a")
	resp, err := e.client().FetchSecrets(ctxTimeout(t), &discoveryv3.DiscoveryRequest{Node: envoyNode(40), ResourceNames: []string{"svid", "ca", "every", "default"}})
	if err != nil {
		t.Fatal(err)
	}
	got := secrets(t, resp)
	if len(got) != 3 || got["svid"] == nil || got["ca"] == nil || got["every"] == nil {
		t.Fatalf("got %v, want svid, ca and every (default is no longer a name)", keys(got))
	}
}

// TestSecretsMakeAWorkingMTLSPair configures a Go TLS server and client
// only from what SDS returns, and checks that they complete mTLS.
func TestSecretsMakeAWorkingMTLSPair(t *testing.T) {
	e := newEnv(t, sdsv3.Config{})
	a := e.add("/svc/a")
	b := e.add("/svc/b")
	resp, err := e.client().FetchSecrets(ctxTimeout(t), &discoveryv3.DiscoveryRequest{
		Node: envoyNode(40), ResourceNames: []string{a.SPIFFEID.String(), b.SPIFFEID.String(), "ALL"},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := secrets(t, resp)
	svidOf := func(id spiffeid.ID) *x509svid.SVID {
		tc := got[id.String()].GetTlsCertificate()
		s, err := x509svid.Parse(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	tdCfg := spiffeValidator(t, got["ALL"]).TrustDomains[0]
	bundle, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString(tdCfg.Name), tdCfg.GetTrustBundle().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	serverCfg := tlsconfig.MTLSServerConfig(svidOf(a.SPIFFEID), bundle, tlsconfig.AuthorizeID(b.SPIFFEID))
	clientCfg := tlsconfig.MTLSClientConfig(svidOf(b.SPIFFEID), bundle, tlsconfig.AuthorizeID(a.SPIFFEID))

	l, err := tls.Listen("tcp", "127.0.0.1:0", serverCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	served := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		_, err = io.Copy(c, io.LimitReader(c, 5))
		served <- err
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), clientCfg)
	if err != nil {
		t.Fatalf("mTLS handshake: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("echo: %q, %v", buf, err)
	}
	if err := <-served; err != nil {
		t.Fatalf("server: %v", err)
	}
	if id, err := x509svid.IDFromCert(c.ConnectionState().PeerCertificates[0]); err != nil || id != a.SPIFFEID {
		t.Fatalf("client saw server %v (%v), want %s", id, err, a.SPIFFEID)
	}
}

// checkPushTime fails if a push took more than a second: it takes a
// few milliseconds (logged), and a second leaves room for a loaded
// machine running the race detector.
func checkPushTime(t *testing.T, what string, d time.Duration) {
	t.Helper()
	t.Logf("%s pushed in %v", what, d)
	if d > time.Second {
		t.Errorf("%s pushed after %v, want well under a second", what, d)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestDeletedEntryIsLeftOut: an entry deleted while a stream is open
// takes its secret out of the next response, which holds the secrets
// still asked for and existing (state of the world for the names asked
// for); the deleted SVID and its key are never sent again, even when
// asked for anew. Losing the last entry ends the stream with
// PermissionDenied, sending nothing.
func TestDeletedEntryIsLeftOut(t *testing.T) {
	e := newEnv(t, sdsv3.Config{})
	a := e.add("/svc/a")
	b := e.add("/svc/b")
	aID, bID := a.SPIFFEID.String(), b.SPIFFEID.String()
	s := e.stream(ctxTimeout(t))
	s.send(&discoveryv3.DiscoveryRequest{Node: envoyNode(40), ResourceNames: []string{aID, bID}})
	r1 := s.next()
	if got := secrets(t, r1); len(got) != 2 || got[aID] == nil || got[bID] == nil {
		t.Fatalf("first response holds %v, want %s and %s", keys(got), aID, bID)
	}
	s.ack(r1, aID, bID)

	e.cache.Apply(svidcache.Update{Deleted: []string{b.ID}})
	r2 := s.next()
	got := secrets(t, r2)
	if len(got) != 1 || got[aID] == nil {
		t.Fatalf("after deleting %s the response holds %v, want %s only", bID, keys(got), aID)
	}
	if r2.VersionInfo == r1.VersionInfo {
		t.Error("the response without the deleted secret has the version of the one with it")
	}
	// Asked for again by name, it stays out.
	s.ack(r2, bID, aID, "ROOTCA")
	r3 := s.next()
	if got := secrets(t, r3); len(got) != 2 || got[aID] == nil || got["ROOTCA"] == nil {
		t.Fatalf("asked again for the deleted %s: got %v, want %s and ROOTCA", bID, keys(got), aID)
	}
	s.ack(r3, bID, aID, "ROOTCA")

	e.cache.Apply(svidcache.Update{Deleted: []string{a.ID}})
	r := s.nextResult()
	if r.resp != nil {
		t.Fatalf("after the caller lost its last entry the stream sent %v", keys(secrets(t, r.resp)))
	}
	if grpcstatus.Code(r.err) != codes.PermissionDenied {
		t.Fatalf("StreamSecrets after the last entry was deleted: %v, want PermissionDenied", r.err)
	}
}

// TestNodeMetadataChoosesValidatorForm: an Envoy's node metadata
// disable_spiffe_cert_validation, a boolean or a string such as "true"
// (as YAML writes it when quoted), overrides the agent's setting for
// that Envoy in either direction, as on SPIRE's agent; a value that is
// neither leaves the agent's setting.
func TestNodeMetadataChoosesValidatorForm(t *testing.T) {
	tests := []struct {
		name       string
		disabled   bool // the agent's setting
		value      *structpb.Value
		wantSPIFFE bool
	}{
		{name: "bool true", value: structpb.NewBoolValue(true)},
		{name: "string true", value: structpb.NewStringValue("true")},
		{name: "string True", value: structpb.NewStringValue("True")},
		{name: "bool false", value: structpb.NewBoolValue(false), wantSPIFFE: true},
		{name: "agent disabled, bool false", disabled: true, value: structpb.NewBoolValue(false), wantSPIFFE: true},
		{name: "agent disabled, string false", disabled: true, value: structpb.NewStringValue("false"), wantSPIFFE: true},
		{name: "agent disabled, no value", disabled: true},
		{name: "agent disabled, other value", disabled: true, value: structpb.NewStringValue("maybe")},
		{name: "other value", value: structpb.NewNumberValue(1), wantSPIFFE: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, sdsv3.Config{DisableSPIFFECertValidation: tt.disabled})
			e.add("/svc/a")
			node := envoyNode(40)
			if tt.value != nil {
				node.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{"disable_spiffe_cert_validation": tt.value}}
			}
			resp, err := e.client().FetchSecrets(ctxTimeout(t), &discoveryv3.DiscoveryRequest{Node: node, ResourceNames: []string{"ROOTCA", "ALL"}})
			if err != nil {
				t.Fatal(err)
			}
			got := secrets(t, resp)
			vc := got["ROOTCA"].GetValidationContext()
			if vc == nil {
				t.Fatal("ROOTCA not served")
			}
			if isSPIFFE := vc.GetCustomValidatorConfig() != nil; isSPIFFE != tt.wantSPIFFE {
				t.Errorf("ROOTCA in the SPIFFE validator form: %v, want %v", isSPIFFE, tt.wantSPIFFE)
			}
			if (got["ALL"] != nil) != tt.wantSPIFFE {
				t.Errorf("ALL served: %v, want %v", got["ALL"] != nil, tt.wantSPIFFE)
			}
		})
	}
}

// TestEmptyNamesAfterNamesUnsubscribe: on a stream that has named the
// secrets it wants, a request naming none means that the client wants
// none any more (xDS state of the world), not every secret: nothing is
// sent, not even on a rotation, until it names some again. Only a
// stream's first request without names asks for everything.
func TestEmptyNamesAfterNamesUnsubscribe(t *testing.T) {
	e := newEnv(t, sdsv3.Config{})
	a := e.add("/svc/a")
	b := e.add("/svc/b")
	aID, bID := a.SPIFFEID.String(), b.SPIFFEID.String()
	s := e.stream(ctxTimeout(t))
	s.send(&discoveryv3.DiscoveryRequest{Node: envoyNode(40), ResourceNames: []string{aID}})
	r1 := s.next()
	s.ack(r1, aID)
	s.ack(r1) // no names: unsubscribed from everything
	e.sign(a)
	e.sign(b)
	// Subscribing again is answered, and that answer is the stream's next
	// message: the stream answers requests in order, so an answer to the
	// request naming nothing (or a push of the rotation it asked for)
	// would have come first.
	s.ack(r1, bID)
	if got := secrets(t, s.next()); len(got) != 1 || got[bID] == nil {
		t.Fatalf("after unsubscribing from everything, a rotation and subscribing to %s again: got %v, want %s alone", bID, keys(got), bID)
	}

	// A stream whose first request names nothing gets everything.
	s2 := e.stream(ctxTimeout(t))
	s2.send(&discoveryv3.DiscoveryRequest{Node: envoyNode(40)})
	if got := secrets(t, s2.next()); len(got) != 3 || got[aID] == nil || got[bID] == nil || got[td.IDString()] == nil {
		t.Fatalf("a first request without names: got %v, want %s, %s and %s", keys(got), aID, bID, td.IDString())
	}
}
