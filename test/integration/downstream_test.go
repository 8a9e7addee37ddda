package integration_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	agentv1 "writ.dev/writ/ca/api/agent/v1"
	writwl "writ.dev/writ/workloadapi"
)

var exampleTD = spiffeid.RequireTrustDomainFromString("example.org")

// parsePEMCerts parses the PEM certificates `writ bundle show` prints.
func parsePEMCerts(t *testing.T, s string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	data := []byte(s)
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatalf("no certificate in %q", s)
	}
	return out
}

// downstreamClient connects to an agent's DownstreamService.
func downstreamClient(t *testing.T, p *agentProc) agentv1.DownstreamServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+p.socket,
		append(writwl.SecurityHeaderDialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return agentv1.NewDownstreamServiceClient(conn)
}

func caCSRFor(t *testing.T, uri string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{}
	if uri != "" {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestIntegrationDownstream runs a two-level deployment with real
// processes: a parent server and agent; a child server, a workload of the
// parent agent with a downstream entry, whose CA comes from the parent
// (--upstream-authority writ); and an agent of the child. The child's
// workloads' X.509- and JWT-SVIDs verify against the parent's bundle
// alone, and a CA rotation at the parent reaches them.
func TestIntegrationDownstream(t *testing.T) {
	e := newNodeEnv(t)
	parentAgentID := "spiffe://example.org/writ/agent/parent"
	pa := startAgent(t, e.addr, filepath.Join(e.dir, "pa"), e.bundle, e.token(parentAgentID))

	// The child server runs the writ binary as this uid; this test
	// process (another binary, same uid) has only a plain entry.
	e.server.admin("entry", "create", "--spiffe-id", "spiffe://example.org/regional/eu", "--parent-id", parentAgentID,
		"--selector", uidSelector, "--selector", "unix:path:"+writBin, "--downstream")
	e.entry("spiffe://example.org/test", parentAgentID)
	// Entries reach the agent in order: once the later one is served,
	// the downstream entry is there too.
	waitSVIDs(t, pa, []string{"spiffe://example.org/test"})

	ds := downstreamClient(t, pa)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := ds.MintX509CA(ctx, &agentv1.MintX509CARequest{Csr: caCSRFor(t, "spiffe://example.org")})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("MintX509CA by a workload without a downstream entry: %v, want PermissionDenied", err)
	}
	ws, err := ds.WatchBundle(ctx, &agentv1.WatchBundleRequest{})
	if err == nil {
		_, err = ws.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("WatchBundle by a workload without a downstream entry: %v, want PermissionDenied", err)
	}

	childDir := filepath.Join(e.dir, "cs")
	child := startServer(t, childDir, "--upstream-authority", "writ", "--upstream-socket", pa.socket)
	childBundle := filepath.Join(e.dir, "child-bundle.pem")
	if err := os.WriteFile(childBundle, []byte(child.admin("bundle", "show")), 0o600); err != nil {
		t.Fatal(err)
	}
	childAgentID := "spiffe://example.org/writ/agent/child"
	ca := startAgent(t, child.nodeAddress(), filepath.Join(e.dir, "ca"), childBundle,
		strings.TrimSpace(child.admin("token", "generate", "--spiffe-id", childAgentID)))
	child.admin("entry", "create", "--spiffe-id", "spiffe://example.org/eu/web", "--parent-id", childAgentID, "--selector", uidSelector)
	waitSVIDs(t, ca, []string{"spiffe://example.org/eu/web"})

	// The child's SVID verifies with go-spiffe against the parent's
	// bundle alone.
	parentRoots := parsePEMCerts(t, e.server.admin("bundle", "show"))
	svid, err := workloadapi.FetchX509SVID(ctx, socketAddr(ca))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, x509bundle.FromX509Authorities(exampleTD, parentRoots)); err != nil {
		t.Fatalf("the child's X.509-SVID does not verify against the parent's bundle: %v", err)
	}
	if len(svid.Certificates) < 2 || !svid.Certificates[1].IsCA {
		t.Fatalf("the child's SVID chain has no intermediate (%d certificates)", len(svid.Certificates))
	}

	// A JWT-SVID of the child validates with the parent's JWT bundle,
	// as the parent's agent serves it.
	token, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "eu-db"}, socketAddr(ca))
	if err != nil {
		t.Fatal(err)
	}
	var jerr error
	deadline := time.Now().Add(20 * time.Second)
	for {
		var bundles *jwtbundle.Set
		bundles, jerr = workloadapi.FetchJWTBundles(ctx, socketAddr(pa))
		if jerr == nil {
			if _, jerr = jwtsvid.ParseAndValidate(token.Marshal(), bundles, []string{"eu-db"}); jerr == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child's JWT-SVID does not validate with the parent's JWT bundle: %v", jerr)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A rotation at the parent reaches the child's workloads through the
	// bundle streams.
	e.server.admin("ca", "rotate")
	var newRoot *x509.Certificate
	for _, c := range parsePEMCerts(t, e.server.admin("bundle", "show")) {
		if !slices.ContainsFunc(parentRoots, c.Equal) {
			newRoot = c
		}
	}
	if newRoot == nil {
		t.Fatal("the parent's rotation added no X.509 authority")
	}
	wctx, wcancel := context.WithTimeout(ctx, 45*time.Second)
	defer wcancel()
	client, err := workloadapi.New(wctx, socketAddr(ca))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	seen := make(chan struct{})
	go func() {
		_ = client.WatchX509Bundles(wctx, bundleWatcher(func(s *x509bundle.Set) {
			if b, ok := s.Get(exampleTD); ok && b.HasX509Authority(newRoot) {
				select {
				case <-seen:
				default:
					close(seen)
				}
			}
		}))
	}()
	select {
	case <-seen:
	case <-wctx.Done():
		t.Fatalf("the parent's new CA did not reach the child's workload\nchild server:\n%s", tail(child.log.String(), 30))
	}

	// A taint of the parent's old CA, which signed the child's CA, makes
	// the child replace its CA and its agents re-sign: the child's
	// workload gets an SVID whose CA the parent's new CA signed.
	e.server.admin("ca", "x509", "taint", "--id", hex.EncodeToString(parentRoots[0].SubjectKeyId))
	resigned := make(chan *x509svid.SVID, 1)
	go func() {
		_ = client.WatchX509Context(wctx, x509ContextFunc(func(c *workloadapi.X509Context) {
			if s := c.DefaultSVID(); s != nil && len(s.Certificates) > 1 && bytes.Equal(s.Certificates[1].AuthorityKeyId, newRoot.SubjectKeyId) {
				select {
				case resigned <- s:
				default:
				}
			}
		}))
	}()
	select {
	case s := <-resigned:
		if _, _, err := x509svid.Verify(s.Certificates, x509bundle.FromX509Authorities(exampleTD, []*x509.Certificate{newRoot})); err != nil {
			t.Fatalf("the re-signed SVID does not verify against the parent's new CA: %v", err)
		}
	case <-wctx.Done():
		t.Fatalf("the child's workload got no SVID under the parent's new CA after the taint\nchild server:\n%s", tail(child.log.String(), 30))
	}
}

// x509ContextFunc adapts a function to workloadapi.X509ContextWatcher.
type x509ContextFunc func(*workloadapi.X509Context)

func (f x509ContextFunc) OnX509ContextUpdate(c *workloadapi.X509Context) { f(c) }
func (x509ContextFunc) OnX509ContextWatchError(error)                    {}

// bundleWatcher adapts a function to workloadapi.X509BundleWatcher.
type bundleWatcher func(*x509bundle.Set)

func (f bundleWatcher) OnX509BundlesUpdate(s *x509bundle.Set) { f(s) }
func (bundleWatcher) OnX509BundlesWatchError(error)           {}

// TestIntegrationDownstreamChecks has this test process's own entry made
// downstream and asks its agent for CAs directly: a CSR for another
// trust domain is refused, a longer lifetime is cut to the entry's TTL.
func TestIntegrationDownstreamChecks(t *testing.T) {
	e := newNodeEnv(t)
	agentID := "spiffe://example.org/writ/agent/parent"
	pa := startAgent(t, e.addr, filepath.Join(e.dir, "pa"), e.bundle, e.token(agentID))
	e.entry("spiffe://example.org/regional/test", agentID, "--downstream", "--x509-ttl", "2h")
	waitSVIDs(t, pa, []string{"spiffe://example.org/regional/test"})
	ds := downstreamClient(t, pa)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	for _, uri := range []string{"spiffe://other.org", "spiffe://example.org/workload"} {
		_, err := ds.MintX509CA(ctx, &agentv1.MintX509CARequest{Csr: caCSRFor(t, uri)})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("CSR naming %s: %v, want InvalidArgument", uri, err)
		}
	}
	before := time.Now()
	resp, err := ds.MintX509CA(ctx, &agentv1.MintX509CARequest{Csr: caCSRFor(t, "spiffe://example.org"), PreferredTtl: int64((48 * time.Hour) / time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(resp.CaChain[0])
	if err != nil {
		t.Fatal(err)
	}
	if max := before.Add(2*time.Hour + time.Minute); cert.NotAfter.After(max) || cert.NotAfter.Before(before.Add(2*time.Hour-time.Minute)) {
		t.Fatalf("48h asked, entry TTL 2h: NotAfter %s, want about %s", cert.NotAfter, before.Add(2*time.Hour))
	}
	if !cert.IsCA {
		t.Fatal("not a CA")
	}
}

// TestIntegrationReadmeNested runs the README's block "A regional Writ
// under a root Writ" with bash, as written, except for its ports, its
// temporary directory (under the test's) and ./writ, the binary built
// for the tests.
func TestIntegrationReadmeNested(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "### A regional Writ under a root Writ\n")
	if !ok {
		t.Fatal("README.md has no section \"A regional Writ under a root Writ\"")
	}
	_, block, ok := strings.Cut(section, "```sh\n")
	block, _, ok2 := strings.Cut(block, "```\n")
	if !ok || !ok2 {
		t.Fatal("the section has no sh block")
	}
	dir := shortTempDir(t)
	script := block
	for _, r := range [][2]string{
		{"127.0.0.1:8181", freePort(t)},
		{"127.0.0.1:8182", freePort(t)},
		{"/tmp/writ-nest.XXXXXX", filepath.Join(dir, "n.XXXXXX")},
	} {
		if !strings.Contains(script, r[0]) {
			t.Fatalf("the README block no longer holds %q", r[0])
		}
		script = strings.ReplaceAll(script, r[0], r[1])
	}
	bin, err := os.ReadFile(writBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "writ"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-e", "-c", script)
	cmd.Dir = dir
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README block failed: %v\n%s", err, out)
	}
	text := string(out)
	lines := strings.Split(strings.TrimSpace(text), "\n")
	switch {
	case !strings.Contains(text, "svid.pem: OK"):
		t.Errorf("openssl did not verify the regional SVID against the root's bundle:\n%s", text)
	case !slices.Contains(lines, "spiffe://example.org/eu/web"):
		t.Errorf("the root's agent did not validate the regional JWT-SVID:\n%s", text)
	case !slices.Contains(lines, "the regional bundle holds the root's old and new CAs"):
		t.Errorf("the regional bundle does not hold the root's two CAs after the rotation:\n%s", text)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "n.*")); len(left) != 0 {
		t.Errorf("the block's clean-up left %v", left)
	}
}
