package upstream_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestREADMEConfigs: the step-ca template and the cfssl policy the README
// tells users to configure are the ones these tests run.
func TestREADMEConfigs(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := json.Marshal(caTemplate)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"step-ca provisioner template": `"template": ` + string(tmpl),
		"cfssl signing policy":         fmt.Sprintf(cfsslPolicy, true, "<32 hex digits>"),
	} {
		if !strings.Contains(string(readme), want) {
			t.Errorf("README.md does not show the %s the tests use:\n%s", name, want)
		}
	}
}
