package integration_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"gopkg.in/yaml.v3"
)

// helperProc is a running `writ helper run`.
type helperProc struct {
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	err  error
}

func startHelper(t *testing.T, args ...string) *helperProc {
	t.Helper()
	p := &helperProc{log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(writBin, append([]string{"helper", "run", "--log-level", "debug"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.Env = cleanEnv()
	// The program the helper runs shares its output: if it outlived a
	// killed helper, Wait would wait for it.
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		// SIGTERM: the helper stops the program it runs, then exits.
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			t.Error("helper did not exit within 15s of SIGTERM")
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("helper log (last lines):\n%s", tail(p.log.String(), 40))
		}
	})
	return p
}

// waitUntil polls cond every 50 ms until it holds, failing after timeout.
func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// leafFile returns the first certificate of a PEM file, nil if there is
// none (yet).
func leafFile(path string) *x509.Certificate {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil
	}
	return c
}

func opensslVerify(t *testing.T, dir string) {
	t.Helper()
	cmd := exec.Command("openssl", "verify", "-purpose", "sslserver", "-CAfile", filepath.Join(dir, "bundle.pem"), filepath.Join(dir, "svid.pem"))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl verify: %v\n%s", err, b)
	}
	cmd = exec.Command("openssl", "verify", "-purpose", "sslclient", "-CAfile", filepath.Join(dir, "bundle.pem"), filepath.Join(dir, "svid.pem"))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl verify (client): %v\n%s", err, b)
	}
}

// rotate makes the server re-sign the entry's X.509-SVID now, by
// changing its DNS names.
func (e *nodeEnv) rotate(entryID string, dnsNames ...string) {
	args := []string{"entry", "update", "--id", entryID}
	for _, d := range dnsNames {
		args = append(args, "--dns-name", d)
	}
	e.server.admin(args...)
}

// TestIntegrationHelper runs `writ helper run` against a real agent: it
// writes the files (from flags and from a spiffe-helper configuration
// file), openssl accepts them, a rotation rewrites them and the program
// it runs gets SIGHUP, and --daemon-mode=false writes once and exits 0.
func TestIntegrationHelper(t *testing.T) {
	e := newNodeEnv(t)
	a := startAgent(t, e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token("spiffe://example.org/writ/agent/a"))
	webID := e.entry("spiffe://example.org/web", "spiffe://example.org/writ/agent/a", "--dns-name", "web.example.org")
	waitSVIDs(t, a, []string{"spiffe://example.org/web"})

	// Once: write and exit 0.
	once := filepath.Join(e.dir, "once")
	if err := os.Mkdir(once, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := runWrit(t, nil, "helper", "run", "--socket-path", a.socket, "--cert-dir", once, "--daemon-mode=false"); code != 0 {
		t.Fatalf("helper --daemon-mode=false: exit %d: %s", code, errOut)
	}
	opensslVerify(t, once)
	fi, err := os.Stat(filepath.Join(once, "svid_key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("svid_key.pem mode %v, want 0600", fi.Mode().Perm())
	}

	// A daemon configured by a spiffe-helper file, running a program
	// that records each SIGHUP.
	certs := filepath.Join(e.dir, "certs")
	if err := os.Mkdir(certs, 0o700); err != nil {
		t.Fatal(err)
	}
	hups, ready := filepath.Join(e.dir, "hups"), filepath.Join(e.dir, "ready")
	// The program says when its trap is set: a SIGHUP before that would
	// end the shell, not be recorded.
	script := fmt.Sprintf(`trap "echo hup >> %s" HUP; : > %s; while :; do sleep 0.05 & wait $!; done`, hups, ready)
	conf := filepath.Join(e.dir, "helper.conf")
	confText := fmt.Sprintf(`# as spiffe-helper reads it
agent_address = %q
cert_dir = %q
cmd = "/bin/sh"
cmd_args = %q
renew_signal = "SIGHUP"
svid_file_name = "svid.pem"
svid_key_file_name = "svid_key.pem"
svid_bundle_file_name = "bundle.pem"
jwt_svids = [{jwt_audience = "db", jwt_svid_file_name = "db.jwt"}]
`, a.socket, certs, "-c '"+script+"'")
	if err := os.WriteFile(conf, []byte(confText), 0o600); err != nil {
		t.Fatal(err)
	}
	h := startHelper(t, "--config", conf)
	svid := filepath.Join(certs, "svid.pem")
	waitUntil(t, "svid.pem written", 20*time.Second, func() bool { return leafFile(svid) != nil })
	opensslVerify(t, certs)
	first := leafFile(svid)
	if got := first.URIs[0].String(); got != "spiffe://example.org/web" {
		t.Fatalf("svid.pem is %s", got)
	}
	// The helper writes the JWT-SVID files after the X.509 ones.
	jwtFile := filepath.Join(certs, "db.jwt")
	waitUntil(t, "db.jwt written", 20*time.Second, func() bool {
		_, err := os.Stat(jwtFile)
		return err == nil
	})
	if tok, err := os.ReadFile(jwtFile); err != nil || strings.Count(string(tok), ".") != 2 {
		t.Fatalf("db.jwt: %q, %v", tok, err)
	}

	waitUntil(t, "the program's SIGHUP trap set", 20*time.Second, func() bool {
		_, err := os.Stat(ready)
		return err == nil
	})

	e.rotate(webID, "web.example.org", "www.example.org")
	waitUntil(t, "svid.pem rewritten after the rotation", 30*time.Second, func() bool {
		c := leafFile(svid)
		return c != nil && !c.Equal(first)
	})
	opensslVerify(t, certs)
	if got := leafFile(svid).DNSNames; len(got) != 2 {
		t.Errorf("rotated SVID has DNS names %v, want both", got)
	}
	waitUntil(t, "SIGHUP recorded by the program", 10*time.Second, func() bool {
		b, _ := os.ReadFile(hups)
		return strings.Contains(string(b), "hup")
	})
	// The rotation added a DNS name: the old SVID was served until the
	// new one came, so the helper's watch never lost its identity.
	if strings.Contains(h.log.String(), "Workload API watch failed") {
		t.Error("the helper's Workload API watch failed: its SVID was withdrawn during the rotation")
	}
	select {
	case <-h.done:
		t.Fatalf("helper exited: %v", h.err)
	default:
	}
}

// TestIntegrationHelperNginx serves mTLS from nginx with the helper's
// files, reloads it on rotation (SIGHUP through its pid file), and lets
// curl in with another SVID.
func TestIntegrationHelperNginx(t *testing.T) {
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr == nil {
			nginx = "/usr/sbin/nginx"
		} else if os.Getenv("CI") != "" {
			t.Fatal("nginx is not installed (make test-deps installs it)")
		} else {
			t.Skip("nginx is not installed (make test-deps installs it)")
		}
	}
	e := newNodeEnv(t)
	a := startAgent(t, e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token("spiffe://example.org/writ/agent/a"))
	// Both entries match this uid: nginx's SVID is the helper's default
	// (the first by SPIFFE ID), curl's is fetched by ID.
	nginxID := e.entry("spiffe://example.org/nginx", "spiffe://example.org/writ/agent/a", "--dns-name", "localhost")
	e.entry("spiffe://example.org/web-client", "spiffe://example.org/writ/agent/a")
	waitSVIDs(t, a, []string{"spiffe://example.org/nginx", "spiffe://example.org/web-client"})

	dir := filepath.Join(e.dir, "ngx")
	certs := filepath.Join(dir, "certs")
	client := filepath.Join(dir, "client")
	for _, d := range []string{dir, certs, client} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if _, errOut, code := runWrit(t, nil, "svid", "fetch", "--socket-path", a.socket, "--spiffe-id", "spiffe://example.org/web-client", "--write", client); code != 0 {
		t.Fatalf("svid fetch: exit %d: %s", code, errOut)
	}
	pidFile := filepath.Join(dir, "nginx.pid")
	startHelper(t, "--socket-path", a.socket, "--cert-dir", certs, "--signal", "SIGHUP", "--pid-file", pidFile)
	svid := filepath.Join(certs, "svid.pem")
	waitUntil(t, "svid.pem written", 20*time.Second, func() bool { return leafFile(svid) != nil })

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	conf := filepath.Join(dir, "nginx.conf")
	confText := fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 64; }
http {
	access_log %[1]s/access.log;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server {
		listen 127.0.0.1:%[2]d ssl;
		ssl_certificate %[3]s/svid.pem;
		ssl_certificate_key %[3]s/svid_key.pem;
		ssl_client_certificate %[3]s/bundle.pem;
		ssl_verify_client on;
		location / { return 200 "client $ssl_client_verify\n"; }
	}
}
`, dir, port, certs)
	if err := os.WriteFile(conf, []byte(confText), 0o600); err != nil {
		t.Fatal(err)
	}
	ngx := exec.Command(nginx, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	var ngxOut syncBuffer
	ngx.Stdout, ngx.Stderr = &ngxOut, &ngxOut
	if err := ngx.Start(); err != nil {
		t.Fatal(err)
	}
	ngxDone := make(chan struct{})
	go func() { ngx.Wait(); close(ngxDone) }()
	t.Cleanup(func() {
		ngx.Process.Signal(os.Interrupt) // fast shutdown of master and workers
		select {
		case <-ngxDone:
		case <-time.After(10 * time.Second):
			ngx.Process.Kill()
			<-ngxDone
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx output:\n%s\nerror.log:\n%s", ngxOut.String(), tail(string(b), 30))
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	url := fmt.Sprintf("https://localhost:%d/", port)
	curl := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "curl", "-sS", "--fail", "--resolve", fmt.Sprintf("localhost:%d:127.0.0.1", port),
			"--cacert", filepath.Join(client, "bundle.pem"), "--cert", filepath.Join(client, "svid.pem"), "--key", filepath.Join(client, "svid_key.pem"), url).CombinedOutput()
		return string(out), err
	}
	// The certificate nginx presents now.
	served := func() *x509.Certificate {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"}) // only to read the served certificate
		if err != nil {
			return nil
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0]
	}
	waitUntil(t, "nginx serving", 20*time.Second, func() bool { return served() != nil })
	if out, err := curl(); err != nil || !strings.Contains(out, "client SUCCESS") {
		t.Fatalf("curl with the client SVID: %v: %s", err, out)
	}
	// Without a client certificate, nginx refuses.
	if out, err := exec.Command("curl", "-sS", "--fail", "--resolve", fmt.Sprintf("localhost:%d:127.0.0.1", port), "--cacert", filepath.Join(client, "bundle.pem"), url).CombinedOutput(); err == nil {
		t.Fatalf("curl without a client certificate got through: %s", out)
	}
	before := served()
	if !before.Equal(leafFile(svid)) {
		t.Fatal("nginx does not serve the helper's svid.pem")
	}

	e.rotate(nginxID, "localhost", "nginx.example.org")
	waitUntil(t, "nginx serving the rotated SVID after its reload", 30*time.Second, func() bool {
		c, f := served(), leafFile(svid)
		return c != nil && f != nil && !f.Equal(before) && c.Equal(f)
	})
	if out, err := curl(); err != nil || !strings.Contains(out, "client SUCCESS") {
		t.Fatalf("curl after the reload: %v: %s", err, out)
	}
}

// TestIntegrationSDS asks a real agent's Workload API socket for Envoy
// secrets, as Envoy would (go-control-plane's generated client: no Envoy
// binary here), and checks them against the Workload API's SVID.
func TestIntegrationSDS(t *testing.T) {
	e := newNodeEnv(t)
	a := startAgent(t, e.addr, filepath.Join(e.dir, "a"), e.bundle, e.token("spiffe://example.org/writ/agent/a"))
	e.entry("spiffe://example.org/envoy", "spiffe://example.org/writ/agent/a")
	waitSVIDs(t, a, []string{"spiffe://example.org/envoy"})

	conn, err := grpc.NewClient("unix://"+a.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "envoy", UserAgentName: "envoy", UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{
		UserAgentBuildVersion: &corev3.BuildVersion{Version: &typev3.SemanticVersion{MajorNumber: 1, MinorNumber: 34}}}}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, ResourceNames: []string{"default", "ALL"},
		TypeUrl: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*tlsv3.Secret{}
	for _, r := range resp.GetResources() {
		s := new(tlsv3.Secret)
		if err := r.UnmarshalTo(s); err != nil {
			t.Fatal(err)
		}
		got[s.GetName()] = s
	}
	chain := got["default"].GetTlsCertificate().GetCertificateChain().GetInlineBytes()
	if _, err := tls.X509KeyPair(chain, got["default"].GetTlsCertificate().GetPrivateKey().GetInlineBytes()); err != nil {
		t.Fatalf("default: %v", err)
	}
	blk, _ := pem.Decode(chain)
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || leaf.URIs[0].String() != "spiffe://example.org/envoy" {
		t.Fatalf("default is %v (%v)", leaf.URIs, err)
	}
	cfg := new(tlsv3.SPIFFECertValidatorConfig)
	if err := got["ALL"].GetValidationContext().GetCustomValidatorConfig().GetTypedConfig().UnmarshalTo(cfg); err != nil {
		t.Fatalf("ALL: %v", err)
	}
	bundlePEM, err := os.ReadFile(e.bundle)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.TrustDomains) != 1 || cfg.TrustDomains[0].Name != "example.org" || !bytes.Contains(bundlePEM, bytes.TrimSpace(cfg.TrustDomains[0].GetTrustBundle().GetInlineBytes())) {
		t.Fatalf("ALL trust domains: %v, want example.org with the server's bundle", cfg.TrustDomains)
	}
}

// TestReadmeEnvoyBootstrap parses the README's Envoy bootstrap into
// go-control-plane's Bootstrap message and runs its generated
// validation, so that the snippet at least has Envoy's schema.
func TestReadmeEnvoyBootstrap(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "```yaml\nstatic_resources:")
	if !ok {
		t.Fatal("README.md has no Envoy bootstrap (```yaml block starting with static_resources:)")
	}
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("unterminated yaml block")
	}
	var doc any
	if err := yaml.Unmarshal([]byte("static_resources:"+block), &doc); err != nil {
		t.Fatalf("README bootstrap is not YAML: %v", err)
	}
	js, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatalf("README bootstrap is not an Envoy v3 Bootstrap: %v", err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("README bootstrap fails validation: %v", err)
	}
	// The typed configs inside Any fields are validated too.
	for _, c := range b.GetStaticResources().GetClusters() {
		for _, a := range c.GetTypedExtensionProtocolOptions() {
			checkAny(t, a)
		}
	}
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			checkAny(t, fc.GetTransportSocket().GetTypedConfig())
			for _, f := range fc.GetFilters() {
				checkAny(t, f.GetTypedConfig())
			}
		}
	}
}

func checkAny(t *testing.T, a *anypb.Any) {
	t.Helper()
	m, err := a.UnmarshalNew()
	if err != nil {
		t.Fatalf("%s: %v", a.GetTypeUrl(), err)
	}
	v, ok := m.(interface{ ValidateAll() error })
	if !ok {
		t.Fatalf("%s has no validation", a.GetTypeUrl())
	}
	if err := v.ValidateAll(); err != nil {
		t.Fatalf("%s: %v", a.GetTypeUrl(), err)
	}
}
