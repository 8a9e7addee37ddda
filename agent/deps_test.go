package agent_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportBoundary keeps the agent off the server side: it may import
// only I/O-free ca/ leaves and the generated code of the node API and of
// its own socket services.
func TestImportBoundary(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "writ.dev/writ/agent/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	allowed := map[string]bool{
		"writ.dev/writ/ca/entry":       true,
		"writ.dev/writ/ca/x509ca":      true,
		"writ.dev/writ/ca/jwtsvid":     true,
		"writ.dev/writ/ca/clock":       true,
		"writ.dev/writ/ca/api/node/v1": true,
		// The agent's own services on its socket (generated code).
		"writ.dev/writ/ca/api/agent/v1": true,
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "writ.dev/writ/ca/") && !allowed[pkg] {
			t.Errorf("the agent depends on %s", pkg)
		}
	}
}
