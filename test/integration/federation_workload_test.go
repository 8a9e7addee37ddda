package integration_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/workloadapi/authz"
)

// fedDomain is one trust domain of the federation test: a server and an
// agent.
type fedDomain struct {
	td     string
	server *serverProc
	agent  *agentProc
	url    string
}

// refreshHint is the bundle refresh hint of both servers: the shortest
// the fetcher honours (federation.MinRefresh), so that a CA change
// crosses over in seconds.
const refreshHint = 10 * time.Second

func startFedDomain(t *testing.T, dir, td string) *fedDomain {
	t.Helper()
	s := startServer(t, filepath.Join(dir, td), "--trust-domain", td, "--federation-bind-address", "127.0.0.1:0",
		"--bundle-refresh-hint", refreshHint.String())
	return &fedDomain{td: td, server: s, url: "https://" + logField(t, s, "federation_address") + "/"}
}

// startAgent attests an agent of d's server as spiffe://<td>/writ/agent/node.
func (d *fedDomain) startAgent(t *testing.T, dir string) {
	t.Helper()
	pem := filepath.Join(dir, d.td+".pem")
	if err := os.WriteFile(pem, []byte(d.server.admin("bundle", "show")), 0o600); err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(d.server.admin("token", "generate", "--spiffe-id", "spiffe://"+d.td+"/writ/agent/node"))
	d.agent = startAgentWith(t, d.server.nodeAddress(), filepath.Join(dir, d.td+"-agent"), pem, tokenEnv(tok), "--trust-domain", d.td)
}

// federate makes d fetch peer's bundle: bootstrapped with `writ bundle
// set` of peer's bundle, then a relationship over https_spiffe.
func (d *fedDomain) federate(t *testing.T, dir string, peer *fedDomain) {
	t.Helper()
	file := filepath.Join(dir, peer.td+".json")
	if err := os.WriteFile(file, []byte(peer.server.admin("bundle", "show", "--format", "spiffe")), 0o600); err != nil {
		t.Fatal(err)
	}
	d.server.admin("bundle", "set", "--trust-domain", peer.td, "--file", file)
	d.server.admin("federation", "create", "--trust-domain", peer.td, "--bundle-endpoint-url", peer.url, "--profile", "https_spiffe")
}

// waitX509Bundle waits until the agent's Workload API gives this process
// td's bundle with n X.509 authorities, and returns how long it took.
func waitX509Bundle(t *testing.T, p *agentProc, td string, n int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	client, err := workloadapi.New(ctx, socketAddr(p))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	w := &fedBundleWatcher{ch: make(chan *x509bundle.Set, 16)}
	errc := make(chan error, 1)
	go func() { errc <- client.WatchX509Bundles(ctx, w) }()
	want := spiffeid.RequireTrustDomainFromString(td)
	got := -1
	for {
		select {
		case set := <-w.ch:
			got = -1
			if b, ok := set.Get(want); ok {
				got = len(b.X509Authorities())
			}
			if got == n {
				return time.Since(start)
			}
		case err := <-errc:
			t.Fatalf("agent %s: %s's bundle has %d X.509 authorities, want %d (watch ended: %v)", p.dataDir, td, got, n, err)
		}
	}
}

type fedBundleWatcher struct{ ch chan *x509bundle.Set }

func (w *fedBundleWatcher) OnX509BundlesUpdate(s *x509bundle.Set) { w.ch <- s }
func (w *fedBundleWatcher) OnX509BundlesWatchError(error)         {}

// TestIntegrationFederatedWorkloads: two trust domains, a.test and b.test,
// each a real server and agent, federated over https_spiffe. A workload
// of each gets the other's bundle from its own agent and they do mTLS
// with go-spiffe's spiffetls, each authorizing the other's SPIFFE ID; a
// JWT-SVID of a.test validates in b.test through b.test's agent and
// through workloadapi/authz; `writ helper run` writes the federated
// bundle file; and a new CA of a.test reaches b.test's workload within
// one refresh hint.
func TestIntegrationFederatedWorkloads(t *testing.T) {
	dir := shortTempDir(t)
	a, b := startFedDomain(t, dir, "a.test"), startFedDomain(t, dir, "b.test")
	a.federate(t, dir, b)
	b.federate(t, dir, a)
	a.startAgent(t, dir)
	b.startAgent(t, dir)

	clientID := spiffeid.RequireFromString("spiffe://a.test/client")
	serverID := spiffeid.RequireFromString("spiffe://b.test/server")
	// An entry may federate only with a trust domain its server knows.
	if _, errOut, code := runWrit(t, nil, "entry", "create", "--spiffe-id", clientID.String(), "--parent-id", "spiffe://a.test/writ/agent/node",
		"--selector", uidSelector, "--federates-with", "c.test", "--admin-socket", a.server.socket); code == 0 || !strings.Contains(errOut, "c.test") {
		t.Fatalf("entry federating with an unknown trust domain: exit %d %q", code, errOut)
	}
	a.server.admin("entry", "create", "--spiffe-id", clientID.String(), "--parent-id", "spiffe://a.test/writ/agent/node",
		"--selector", uidSelector, "--federates-with", "b.test")
	b.server.admin("entry", "create", "--spiffe-id", serverID.String(), "--parent-id", "spiffe://b.test/writ/agent/node",
		"--selector", uidSelector, "--federates-with", "a.test")
	waitSVIDs(t, a.agent, []string{clientID.String()})
	waitSVIDs(t, b.agent, []string{serverID.String()})
	waitX509Bundle(t, a.agent, "b.test", 1, 30*time.Second)
	aAuthorities := 1
	waitX509Bundle(t, b.agent, "a.test", aAuthorities, 30*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// mTLS across the trust domains, each side authorizing the other's ID.
	lis, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0",
		spiffetls.MTLSServerWithSourceOptions(tlsconfig.AuthorizeID(clientID), workloadapi.WithClientOptions(socketAddr(b.agent))))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	served := make(chan error, 1)
	go func() {
		conn, err := lis.Accept()
		if err != nil {
			served <- err
			return
		}
		defer conn.Close()
		peer, err := spiffetls.PeerIDFromConn(conn)
		if err != nil {
			served <- err
			return
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err == nil {
			_, err = fmt.Fprintf(conn, "hello %s, you said %s", peer, line)
		}
		served <- err
	}()
	conn, err := spiffetls.DialWithMode(ctx, "tcp", lis.Addr().String(),
		spiffetls.MTLSClientWithSourceOptions(tlsconfig.AuthorizeID(serverID), workloadapi.WithClientOptions(socketAddr(a.agent))))
	if err != nil {
		t.Fatalf("mTLS dial from a.test to b.test: %v", err)
	}
	if peer, err := spiffetls.PeerIDFromConn(conn); err != nil || peer != serverID {
		t.Fatalf("client sees server %v, %v", peer, err)
	}
	fmt.Fprintln(conn, "ping")
	reply, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if err != nil || reply != "hello spiffe://a.test/client, you said ping\n" {
		t.Fatalf("reply %q, %v", reply, err)
	}
	if err := <-served; err != nil {
		t.Fatalf("server side: %v", err)
	}
	// The server refuses a client it does not authorize: b.test's own
	// workload connecting to itself.
	lis2, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0",
		spiffetls.MTLSServerWithSourceOptions(tlsconfig.AuthorizeID(clientID), workloadapi.WithClientOptions(socketAddr(b.agent))))
	if err != nil {
		t.Fatal(err)
	}
	defer lis2.Close()
	go func() {
		if c, err := lis2.Accept(); err == nil {
			c.Read(make([]byte, 1))
			c.Close()
		}
	}()
	if c, err := spiffetls.DialWithMode(ctx, "tcp", lis2.Addr().String(),
		spiffetls.MTLSClientWithSourceOptions(tlsconfig.AuthorizeID(serverID), workloadapi.WithClientOptions(socketAddr(b.agent)))); err == nil {
		_, err = c.Read(make([]byte, 1))
		c.Close()
		if err == nil {
			t.Fatal("the server accepted a client it does not authorize")
		}
	}

	// A JWT-SVID of a.test validates in b.test: through b.test's agent
	// and through workloadapi/authz with b.test's JWT bundles.
	aud := serverID.String()
	jwt, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud}, socketAddr(a.agent))
	if err != nil {
		t.Fatal(err)
	}
	tok := jwt.Marshal()
	validated, err := workloadapi.ValidateJWTSVID(ctx, tok, aud, socketAddr(b.agent))
	if err != nil || validated.ID != clientID {
		t.Fatalf("b.test's agent: %v %v", validated, err)
	}
	if _, err := workloadapi.ValidateJWTSVID(ctx, tok, "another-audience", socketAddr(b.agent)); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("wrong audience at b.test's agent: %v, want InvalidArgument", err)
	}
	jwtSrc, err := workloadapi.NewJWTSource(ctx, workloadapi.WithClientOptions(socketAddr(b.agent)))
	if err != nil {
		t.Fatal(err)
	}
	defer jwtSrc.Close()
	az, err := authz.NewJWTAuthorizer(authz.JWTConfig{Bundles: jwtSrc, Audience: []string{aud}, Policy: authz.IDs(clientID)})
	if err != nil {
		t.Fatal(err)
	}
	if id, err := az.Authenticate("Bearer " + tok); err != nil || id != clientID {
		t.Fatalf("authz in b.test: %v %v", id, err)
	}
	az2, err := authz.NewJWTAuthorizer(authz.JWTConfig{Bundles: jwtSrc, Audience: []string{aud}, Policy: authz.IDs(serverID)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := az2.Authenticate("Bearer " + tok); err == nil {
		t.Fatal("authz accepted a caller its policy does not allow")
	}

	// writ helper run writes a.test's bundle beside b.test's.
	files := filepath.Join(dir, "files")
	if err := os.Mkdir(files, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := runWrit(t, nil, "helper", "run", "--socket-path", b.agent.socket, "--cert-dir", files, "--daemon-mode=false",
		"--include-federated-domains", "--jwt-bundle-file-name", "jwt_bundle.json"); code != 0 {
		t.Fatalf("helper: exit %d %s", code, errOut)
	}
	pemBytes, err := os.ReadFile(filepath.Join(files, "federated_bundle.a.test.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(pemBytes), "BEGIN CERTIFICATE"); n != aAuthorities {
		t.Fatalf("federated_bundle.a.test.pem holds %d certificates, want %d", n, aAuthorities)
	}
	// --include-federated-domains: b.test's and a.test's authorities in bundle.pem.
	if pemBytes, err = os.ReadFile(filepath.Join(files, "bundle.pem")); err != nil || strings.Count(string(pemBytes), "BEGIN CERTIFICATE") != 1+aAuthorities {
		t.Fatalf("bundle.pem with federated domains: %v\n%s", err, pemBytes)
	}
	// Several trust domains: a JSON object of trust domain names to JWKS.
	var jwtBundles map[string]json.RawMessage
	if data, err := os.ReadFile(filepath.Join(files, "jwt_bundle.json")); err != nil || json.Unmarshal(data, &jwtBundles) != nil || jwtBundles["a.test"] == nil || jwtBundles["b.test"] == nil {
		t.Fatalf("jwt_bundle.json: %v %v", err, jwtBundles)
	}

	// A new CA of a.test reaches b.test's workload within one refresh.
	start := time.Now()
	a.server.admin("ca", "x509", "prepare")
	took := waitX509Bundle(t, b.agent, "a.test", aAuthorities+1, refreshHint+15*time.Second)
	t.Logf("a.test's new CA reached b.test's workload in %v (refresh hint %v)", time.Since(start).Round(time.Millisecond), refreshHint)
	if took > refreshHint+5*time.Second {
		t.Fatalf("a.test's new CA took %v to reach b.test's workload, more than one refresh (%v) and 5s", took, refreshHint)
	}
}
