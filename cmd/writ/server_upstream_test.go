package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeRoot writes a self-signed CA certificate as PEM to path.
func writeRoot(t *testing.T, path string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestUpstreamOptions: the step and cfssl options are read from flags,
// the environment and the config file alike, and incomplete or mixed
// options are refused before anything is contacted.
func TestUpstreamOptions(t *testing.T) {
	dir := shortTempDir(t)
	root, secret := filepath.Join(dir, "root.pem"), filepath.Join(dir, "secret")
	writeRoot(t, root)
	if err := os.WriteFile(secret, []byte("00112233445566778899aabbccddeeff\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	base := []string{"server", "run", "--trust-domain", "example.org", "--data-dir", data, "--bind-address", "127.0.0.1:0"}
	// The URLs are refused, which shows every other option was read.
	t.Run("step from the config file", func(t *testing.T) {
		cfg := filepath.Join(dir, "step.yaml")
		content := "upstream-authority: step\nstep-ca-url: http://127.0.0.1:1\nstep-root: " + root + "\nstep-provisioner: writ\nstep-provisioner-password-file: " + secret + "\n"
		if err := os.WriteFile(cfg, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		r := runCLI(t, "", append(base, "--config", cfg)...)
		if r.code == exitOK || !strings.Contains(r.stderr, `step-ca URL "http://127.0.0.1:1" must be https`) {
			t.Fatalf("code %d, stderr %q", r.code, r.stderr)
		}
	})
	t.Run("cfssl from the environment", func(t *testing.T) {
		t.Setenv("WRIT_UPSTREAM_AUTHORITY", "cfssl")
		t.Setenv("WRIT_CFSSL_URL", "ftp://127.0.0.1:1")
		t.Setenv("WRIT_CFSSL_AUTH_KEY_FILE", secret)
		t.Setenv("WRIT_CFSSL_PROFILE", "intermediate")
		t.Setenv("WRIT_UPSTREAM_BUNDLE", root)
		r := runCLI(t, "", base...)
		if r.code == exitOK || !strings.Contains(r.stderr, `cfssl URL "ftp://127.0.0.1:1" must be http(s)`) {
			t.Fatalf("code %d, stderr %q", r.code, r.stderr)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"step incomplete", []string{"--upstream-authority", "step", "--step-ca-url", "https://127.0.0.1:1"}, "needs --step-ca-url, --step-root"},
		{"cfssl without bundle", []string{"--upstream-authority", "cfssl", "--cfssl-url", "http://127.0.0.1:1", "--cfssl-auth-key-file", secret}, "--upstream-bundle"},
		{"step options alone", []string{"--step-provisioner", "writ"}, "without an upstream authority"},
		{"cfssl options under step", []string{"--upstream-authority", "step", "--step-ca-url", "https://127.0.0.1:1", "--step-root", root,
			"--step-provisioner", "writ", "--step-provisioner-password-file", secret, "--cfssl-profile", "x"}, "with the step upstream authority"},
		{"unknown", []string{"--upstream-authority", "vault"}, "use disk, step, cfssl or writ"},
		{"writ without socket", []string{"--upstream-authority", "writ"}, "needs the parent agent's socket (--upstream-socket)"},
		{"socket without writ", []string{"--upstream-socket", "/run/agent.sock"}, "only for --upstream-authority writ"},
		{"writ with a relative socket", []string{"--upstream-authority", "writ", "--upstream-socket", "agent.sock"}, "must be an absolute path"},
		{"writ with disk options", []string{"--upstream-authority", "writ", "--upstream-socket", "/run/agent.sock", "--upstream-cert", root}, "with the writ upstream authority"},
		{"writ parent away", []string{"--upstream-authority", "writ", "--upstream-socket", filepath.Join(dir, "none.sock")}, "upstream unavailable: parent MintX509CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, "", append(base, tc.args...)...)
			if r.code == exitOK || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("code %d, stderr %q; want %q", r.code, r.stderr, tc.want)
			}
		})
	}
}
