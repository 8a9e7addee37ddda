package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoUpstreamCALibraries keeps the writ binary free of the upstream
// CAs' own code: Writ talks to step-ca and cfssl through clients of its
// own (ca/keymanager/upstream); only the separate test/upstream module
// links them, to run them as real peers.
func TestNoUpstreamCALibraries(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "writ.dev/writ/cmd/writ").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	pkgs := strings.Fields(string(out))
	if len(pkgs) < 10 || !strings.Contains(string(out), "writ.dev/writ/ca/keymanager/upstream") {
		t.Fatalf("go list -deps listed %d packages, without the upstream package", len(pkgs))
	}
	for _, pkg := range pkgs {
		for _, banned := range []string{"github.com/smallstep/certificates", "github.com/cloudflare/cfssl"} {
			if pkg == banned || strings.HasPrefix(pkg, banned+"/") {
				t.Errorf("the writ binary links %s", pkg)
			}
		}
	}
}
