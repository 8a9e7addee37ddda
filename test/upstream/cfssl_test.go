package upstream_test

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloudflare/cfssl/api/info"
	"github.com/cloudflare/cfssl/api/signhandler"
	cfconfig "github.com/cloudflare/cfssl/config"
	"github.com/cloudflare/cfssl/signer"
	"github.com/cloudflare/cfssl/signer/local"
)

// cfsslPolicy is the signing policy of a cfssl server whose default
// profile issues CA certificates to holders of the auth key "writ" (the
// one the README shows).
const cfsslPolicy = `{
  "signing": {
    "default": {
      "expiry": "48h",
      "usages": ["cert sign", "crl sign"],
      "ca_constraint": {"is_ca": %t, "max_path_len": 0, "max_path_len_zero": true},
      "auth_key": "writ"
    }
  },
  "auth_keys": {"writ": {"type": "standard", "key": "%s"}}
}`

// cfsslServer is cfssl's real API handlers (authsign, info) on loopback.
type cfsslServer struct {
	url      string
	rootFile string
	keyFile  string
}

// startCFSSL starts cfssl signing with an intermediate of path length
// interPathLen under a root; isCA chooses whether the profile issues CA
// certificates.
func startCFSSL(t *testing.T, dir string, interPathLen int, isCA bool) *cfsslServer {
	t.Helper()
	root, rootKey := mintCA(t, "cfssl Root CA", nil, nil, 2)
	inter, interKey := mintCA(t, "cfssl Intermediate CA", root, rootKey, interPathLen)
	key := make([]byte, 16)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	c := &cfsslServer{rootFile: filepath.Join(dir, "cfssl-root.pem"), keyFile: filepath.Join(dir, "cfssl-auth-key")}
	writeFile(t, c.rootFile, certPEM(root))
	writeFile(t, c.keyFile, []byte(hex.EncodeToString(key)+"\n"))

	policy, err := cfconfig.LoadConfig([]byte(fmt.Sprintf(cfsslPolicy, isCA, hex.EncodeToString(key))))
	if err != nil {
		t.Fatal(err)
	}
	s, err := local.NewSigner(interKey, inter, signer.DefaultSigAlgo(interKey), policy.Signing)
	if err != nil {
		t.Fatal(err)
	}
	authsign, err := signhandler.NewAuthHandlerFromSigner(s)
	if err != nil {
		t.Fatal(err)
	}
	infoHandler, err := info.NewHandler(s)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/api/v1/cfssl/authsign", authsign)
	mux.Handle("/api/v1/cfssl/info", infoHandler)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c.url = srv.URL
	return c
}

func (c *cfsslServer) args() []string {
	return []string{"--upstream-authority", "cfssl", "--cfssl-url", c.url, "--cfssl-auth-key-file", c.keyFile, "--upstream-bundle", c.rootFile}
}

// TestCFSSL: a Writ server chained under a real cfssl (authsign with the
// default profile issuing CA certificates) serves SVIDs that verify
// against the cfssl root alone.
func TestCFSSL(t *testing.T) {
	dir := shortTempDir(t)
	c := startCFSSL(t, dir, 1, true)
	checkChained(t, dir, c.rootFile, c.args()...)
}

// TestCFSSLRefused: the server refuses to start, saying why, when cfssl's
// answer cannot sign SVIDs or cfssl refuses the request. (cfssl checks
// its own path length only for CSRs that ask for a CA, which Writ's do
// not: under a signer of path length 0 it signs, and Writ refuses.)
func TestCFSSLRefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pathLen int
		isCA    bool
		edit    func(t *testing.T, c *cfsslServer)
		want    string
	}{
		{name: "profile without CA", pathLen: 1, isCA: false, want: "not a signing CA"},
		{name: "intermediate path length 0", pathLen: 0, isCA: true, want: `"CN=cfssl Intermediate CA" has path length 0`},
		{name: "wrong auth key", pathLen: 1, isCA: true, edit: func(t *testing.T, c *cfsslServer) {
			writeFile(t, c.keyFile, []byte("00112233445566778899aabbccddeeff"))
		}, want: "invalid token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := shortTempDir(t)
			c := startCFSSL(t, dir, tc.pathLen, tc.isCA)
			if tc.edit != nil {
				tc.edit(t, c)
			}
			_, errOut, code := runWrit(t, append([]string{"server", "run", "--trust-domain", "example.org", "--data-dir", filepath.Join(dir, "data"), "--bind-address", "127.0.0.1:0"}, c.args()...)...)
			if code == 0 || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, want an error containing %q:\n%s", code, tc.want, errOut)
			}
			t.Logf("refused: %s", tail(errOut, 1))
		})
	}
}
