package upstream_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/ca"
	"go.step.sm/crypto/jose"
)

// caTemplate is the x509 template of the step-ca provisioner that issues
// Writ's CA certificates (the one the README shows).
const caTemplate = `{"subject": {{ toJson .Subject }}, "sans": {{ toJson .SANs }}, "keyUsage": ["certSign", "crlSign"], "basicConstraints": {"isCA": true, "maxPathLen": 0}}`

// stepCA is a real step-ca serving on loopback.
type stepCA struct {
	url      string
	rootFile string
	password string
	stop     func()
}

// startStepCA starts step-ca in-process with a root, an intermediate of
// path length interPathLen, and a JWK provisioner "writ" whose template
// is tmpl.
func startStepCA(t *testing.T, dir string, interPathLen int, tmpl string) *stepCA {
	t.Helper()
	root, rootKey := mintCA(t, "Step Root CA", nil, nil, 2)
	inter, interKey := mintCA(t, "Step Intermediate CA", root, rootKey, interPathLen)
	s := &stepCA{rootFile: filepath.Join(dir, "step-root.pem"), password: "correct horse battery staple"}
	writeFile(t, s.rootFile, certPEM(root))
	writeFile(t, filepath.Join(dir, "step-int.pem"), certPEM(inter))
	writeFile(t, filepath.Join(dir, "step-int.key"), keyPEM(t, interKey))

	jwk, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	jwe, err := jose.EncryptJWK(jwk, []byte(s.password))
	if err != nil {
		t.Fatal(err)
	}
	encrypted, err := jwe.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	pub := jwk.Public()

	// A free loopback port for step-ca's own listener.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s.url = "https://" + addr

	provisioner := map[string]any{
		"type":         "JWK",
		"name":         "writ",
		"key":          &pub,
		"encryptedKey": encrypted,
		"claims":       map[string]any{"maxTLSCertDuration": "48h", "defaultTLSCertDuration": "24h"},
		"options":      map[string]any{"x509": map[string]any{"template": tmpl}},
	}
	cfg := map[string]any{
		"root":      filepath.Join(dir, "step-root.pem"),
		"crt":       filepath.Join(dir, "step-int.pem"),
		"key":       filepath.Join(dir, "step-int.key"),
		"address":   addr,
		"dnsNames":  []string{"127.0.0.1"},
		"logger":    map[string]any{"format": "text"},
		"authority": map[string]any{"provisioners": []any{provisioner}},
		"tls":       map[string]any{"minVersion": 1.2, "maxVersion": 1.3, "renegotiation": false},
	}
	raw, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "ca.json")
	writeFile(t, cfgFile, raw)
	c, err := config.LoadConfiguration(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.New(c, ca.WithConfigFile(cfgFile), ca.WithQuiet(true))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- server.Run() }()
	var once sync.Once
	s.stop = func() {
		once.Do(func() {
			server.Stop()
			<-done
		})
	}
	t.Cleanup(s.stop)
	// Wait until step-ca answers its health check over TLS to the root.
	pool := x509.NewCertPool()
	pool.AddCert(root)
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(s.url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		select {
		case err := <-done:
			t.Fatalf("step-ca stopped: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("step-ca not healthy: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *stepCA) args(t *testing.T, dir string) []string {
	passFile := filepath.Join(dir, "step-pass")
	writeFile(t, passFile, []byte(s.password+"\n"))
	return []string{"--upstream-authority", "step", "--step-ca-url", s.url, "--step-root", s.rootFile,
		"--step-provisioner", "writ", "--step-provisioner-password-file", passFile}
}

// TestStepCA: a Writ server chained under a real step-ca (JWK
// provisioner with a CA template) serves SVIDs that verify against the
// step-ca root alone.
func TestStepCA(t *testing.T) {
	dir := shortTempDir(t)
	s := startStepCA(t, dir, 1, caTemplate)
	checkChained(t, dir, s.rootFile, s.args(t, dir)...)
}

// TestStepCARotationAndOutage: each new Writ CA is a new request to
// step-ca; while step-ca is down a new CA cannot be made, the server says
// why and keeps signing with the current one.
func TestStepCARotationAndOutage(t *testing.T) {
	dir := shortTempDir(t)
	s := startStepCA(t, dir, 1, caTemplate)
	c := checkChained(t, dir, s.rootFile, s.args(t, dir)...)

	c.mustRun("ca", "x509", "prepare")
	auths := c.x509Authorities()
	if len(auths) != 2 {
		t.Fatalf("%d X.509 authorities after prepare, want 2", len(auths))
	}
	prepared := ""
	for _, a := range auths {
		if len(a.UpstreamChain) == 0 || a.UpstreamChain[0] != "CN=Step Intermediate CA" {
			t.Fatalf("authority %s has upstream chain %v, want step-ca's intermediate first", a.ID, a.UpstreamChain)
		}
		if a.State == "prepared" {
			prepared = a.ID
		}
	}
	c.checkBundle()
	c.mustRun("ca", "x509", "activate", "--id", prepared, "--force")
	c.checkSVIDs()

	s.stop()
	_, errOut, code := c.run("ca", "x509", "prepare")
	if code == 0 || !strings.Contains(errOut, "upstream unavailable") {
		t.Fatalf("prepare with step-ca down: exit %d: %s", code, errOut)
	}
	t.Logf("with step-ca down: %s", strings.TrimSpace(errOut))
	if n := len(c.x509Authorities()); n != 2 {
		t.Fatalf("%d X.509 authorities after a failed prepare, want 2", n)
	}
	c.checkBundle()
	c.checkSVIDs()
}

// TestStepCARefused: the server refuses to start, saying why, when
// step-ca's answer cannot sign SVIDs: a leaf template (not a CA), an
// intermediate of path length 0, a CA of another trust domain, a wrong
// password.
func TestStepCARefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pathLen int
		tmpl    string
		edit    func(t *testing.T, args []string)
		want    string
	}{
		{name: "leaf template", pathLen: 1, tmpl: `{"subject": {{ toJson .Subject }}, "sans": {{ toJson .SANs }}, "keyUsage": ["digitalSignature"], "extKeyUsage": ["serverAuth", "clientAuth"]}`, want: "not a signing CA"},
		{name: "intermediate path length 0", pathLen: 0, tmpl: caTemplate, want: "path length"},
		{name: "another trust domain", pathLen: 1, tmpl: `{"subject": {{ toJson .Subject }}, "uris": ["spiffe://evil.example"], "keyUsage": ["certSign", "crlSign"], "basicConstraints": {"isCA": true, "maxPathLen": 0}}`, want: "naming spiffe://evil.example, not spiffe://example.org"},
		{name: "wrong password", pathLen: 1, tmpl: caTemplate, edit: func(t *testing.T, args []string) { writeFile(t, args[len(args)-1], []byte("wrong")) }, want: "wrong provisioner password"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := shortTempDir(t)
			s := startStepCA(t, dir, tc.pathLen, tc.tmpl)
			args := s.args(t, dir)
			if tc.edit != nil {
				tc.edit(t, args)
			}
			_, errOut, code := runWrit(t, append([]string{"server", "run", "--trust-domain", "example.org", "--data-dir", filepath.Join(dir, "data"), "--bind-address", "127.0.0.1:0"}, args...)...)
			if code == 0 || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, want an error containing %q:\n%s", code, tc.want, errOut)
			}
			t.Logf("refused: %s", tail(errOut, 1))
		})
	}
}
