// Package softhsmtest gives tests an empty SoftHSM2 token, a real PKCS#11
// module, in a directory of their own. SoftHSM2 comes from the softhsm2
// package (apt-get install softhsm2), which .ci/run installs; without it
// tests skip, except in CI, where they fail.
package softhsmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// modulePaths are where distributions install the SoftHSM2 module.
var modulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// Token is an initialised SoftHSM2 token. The process that loads Module
// must have SOFTHSM2_CONF=Conf in its environment when it initialises the
// module.
type Token struct {
	Module  string
	Label   string
	PIN     string
	PINFile string // holds PIN, mode 0600
	Conf    string // the SoftHSM2 configuration naming the token directory
}

var n atomic.Int64

// Module returns the path of the SoftHSM2 PKCS#11 module. It skips the
// test when SoftHSM2 is not installed, and fails it in CI.
func Module(t testing.TB) string {
	t.Helper()
	_, err := exec.LookPath("softhsm2-util")
	if err == nil {
		for _, p := range modulePaths {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("SoftHSM2 is not installed (apt-get install softhsm2; .ci/run does)")
	}
	t.Skip("SoftHSM2 is not installed (apt-get install softhsm2)")
	return ""
}

// New initialises an empty token in a new directory under t.TempDir.
func New(t testing.TB) *Token {
	t.Helper()
	tok := &Token{Module: Module(t), Label: fmt.Sprintf("writ-test-%d", n.Add(1)), PIN: "1234"}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	tok.Conf = filepath.Join(dir, "softhsm2.conf")
	conf := "directories.tokendir = " + tokens + "\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
	if err := os.WriteFile(tok.Conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	tok.PINFile = filepath.Join(dir, "pin")
	if err := os.WriteFile(tok.PINFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", tok.Label, "--pin", tok.PIN, "--so-pin", "5678")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+tok.Conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v: %s", err, out)
	}
	return tok
}
