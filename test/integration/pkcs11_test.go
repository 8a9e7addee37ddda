package integration_test

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"writ.dev/writ/internal/softhsmtest"
)

// TestIntegrationPKCS11KeyManager: a server with --key-manager pkcs11
// generates its CA key in the token, where pkcs11-tool finds it as a
// sensitive, never-extractable private key whose public key is the CA
// certificate's; no key file is written, and a restart keeps the CA.
func TestIntegrationPKCS11KeyManager(t *testing.T) {
	tok := softhsmtest.New(t)
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("pkcs11-tool is not installed (apt-get install opensc; .ci/run does)")
		}
		t.Skip("pkcs11-tool is not installed (apt-get install opensc)")
	}
	t.Setenv("SOFTHSM2_CONF", tok.Conf) // for the server and pkcs11-tool
	dir := filepath.Join(shortTempDir(t), "server")
	args := []string{"--key-manager", "pkcs11", "--pkcs11-module", tok.Module, "--pkcs11-token-label", tok.Label, "--pkcs11-pin-file", tok.PINFile}
	s := startServer(t, dir, args...)
	bundle := s.admin("bundle", "show")
	block, _ := pem.Decode([]byte(bundle))
	if block == nil {
		t.Fatalf("bundle show printed no certificate:\n%s", bundle)
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pub, ok := ca.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		t.Fatalf("CA key is %T, want ECDSA", ca.PublicKey)
	}
	point, err := pub.Bytes()
	if err != nil {
		t.Fatal(err)
	}

	out, err := exec.Command("pkcs11-tool", "--module", tok.Module, "--token-label", tok.Label, "--login", "--pin", tok.PIN, "--list-objects").CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool --list-objects: %v\n%s", err, out)
	}
	listing := string(out)
	t.Logf("token objects:\n%s", listing)
	// The object holding the CA's public point, and the private key with
	// the same label.
	i := strings.Index(listing, hex.EncodeToString(point))
	if i < 0 {
		t.Fatal("the CA certificate's public key is not in the token")
	}
	rest := listing[i:]
	label := ""
	for _, line := range strings.Split(rest, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "label:"); ok {
			label = strings.TrimSpace(v)
			break
		}
	}
	if !strings.HasPrefix(label, "writ-") {
		t.Fatalf("CA public key object has label %q", label)
	}
	found := false
	for _, obj := range strings.Split(listing, "Private Key Object")[1:] {
		if strings.Contains(obj, "label:      "+label+"\n") {
			found = true
			if !strings.Contains(obj, "never extractable") || !strings.Contains(obj, "sensitive") {
				t.Fatalf("CA private key %s is extractable or not sensitive:\n%s", label, obj)
			}
		}
	}
	if !found {
		t.Fatalf("no private key object %s in the token", label)
	}
	if n := strings.Count(listing, "Private Key Object"); n != 2 {
		t.Fatalf("%d private keys in the token, want the X.509 CA and JWT keys", n)
	}

	s.stop()
	var files []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, filepath.Base(p))
			if data, _ := os.ReadFile(p); strings.Contains(string(data), "PRIVATE KEY") {
				t.Errorf("%s holds a private key", p)
			}
		}
		return nil
	})
	if keys, _ := filepath.Glob(filepath.Join(dir, "keys", "*")); len(keys) != 0 {
		t.Fatalf("key files in the data dir: %v", keys)
	}
	t.Logf("data dir files: %v", files)

	// The keys persist in the token: a restart keeps the CA.
	s = startServer(t, dir, args...)
	if again := s.admin("bundle", "show"); again != bundle {
		t.Fatalf("restart changed the bundle:\n%s", again)
	}
	s.stop()

	// A lost datastore is refused, and the token's keys are left alone.
	if err := os.Remove(filepath.Join(dir, "datastore.db")); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runWrit(t, nil, append([]string{"server", "run", "--trust-domain", "example.org", "--data-dir", dir, "--bind-address", "127.0.0.1:0"}, args...)...)
	if code == 0 || !strings.Contains(errOut, "datastore records none") {
		t.Fatalf("server over a lost datastore: exit %d\n%s", code, errOut)
	}
	after, err := exec.Command("pkcs11-tool", "--module", tok.Module, "--token-label", tok.Label, "--login", "--pin", tok.PIN, "--list-objects").CombinedOutput()
	if err != nil || !strings.Contains(string(after), label) {
		t.Fatalf("the CA key left the token after a refused start: %v\n%s", err, after)
	}
}
