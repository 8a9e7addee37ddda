package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigUnknownKeys: every command that takes --config refuses a key
// that names none of its flags, saying which key and where, instead of
// ignoring it and running with the flag's default.
func TestConfigUnknownKeys(t *testing.T) {
	dir := shortTempDir(t)
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	data := filepath.Join(dir, "data")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"server: misspelled key", []string{"server", "run", "--config", write("s1.yaml", "trust-domain: example.org\ndata-dir: "+data+"\ndefault-x509-svid-tll: 5m\n")},
			`line 3: unknown key "default-x509-svid-tll"`},
		{"server: underscore for dash", []string{"server", "run", "--config", write("s2.yaml", "trust_domain: example.org\n")},
			`line 1: unknown key "trust_domain"`},
		{"server: nested", []string{"server", "run", "--config", write("s3.yaml", "server:\n  trust-domain: example.org\n")},
			`line 1: unknown key "server"`},
		{"server: config in config", []string{"server", "run", "--config", write("s4.yaml", "config: other.yaml\n")},
			`unknown key "config"`},
		{"server: not a mapping", []string{"server", "run", "--config", write("s5.yaml", "- trust-domain\n")},
			"want a mapping"},
		{"server: duplicate key", []string{"server", "run", "--config", write("s6.yaml", "trust-domain: a.org\ntrust-domain: b.org\n")},
			"already defined"},
		{"agent: misspelled key", []string{"agent", "run", "--config", write("a1.yaml", "trust-domain: example.org\nserver-adress: 127.0.0.1:1\n")},
			`line 2: unknown key "server-adress"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, "", tt.args...)
			if r.code == exitOK || !strings.Contains(r.stderr, tt.want) || !strings.Contains(r.stderr, "config file ") {
				t.Fatalf("code %d, stderr %q; want a refusal of the config file saying %q", r.code, r.stderr, tt.want)
			}
		})
	}
	// A file of known keys is still read.
	ok := write("ok.yaml", "trust-domain: Example.org\n")
	if r := runCLI(t, "", "server", "run", "--config", ok, "--data-dir", data); !strings.Contains(r.stderr, `--trust-domain "Example.org" is not a valid`) {
		t.Fatalf("known keys: %+v", r)
	}
	if _, err := os.Stat(data); err == nil {
		t.Error("a refused server run created its data dir")
	}
}
