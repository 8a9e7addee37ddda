package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestServerRunDatastoreFlags(t *testing.T) {
	dir := shortTempDir(t)
	data := filepath.Join(dir, "data")
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte("  pw-file-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	loose := filepath.Join(dir, "loose")
	if err := os.WriteFile(loose, []byte("pw-file-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o640); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "server.yaml")
	if err := os.WriteFile(cfgFile, []byte("trust-domain: example.org\ndata-dir: "+data+"\nbind-address: 127.0.0.1:0\ndatastore: mysql://u:url-secret@db/writ\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"server", "run", "--trust-domain", "example.org", "--data-dir", data, "--bind-address", "127.0.0.1:0"}
	for _, tc := range []struct {
		name   string
		args   []string
		env    map[string]string
		code   int
		stderr string
	}{
		{"unknown scheme", append(base, "--datastore", "mysql://u:url-secret@db/writ"), nil, exitUsage, `unknown scheme "mysql"`},
		{"not a URL", append(base, "--datastore", "/var/lib/writ.db"), nil, exitUsage, "invalid datastore"},
		{"unknown scheme from the environment", base, map[string]string{"WRIT_DATASTORE": "sqlite://u:url-secret@host/db"}, exitUsage, `unknown scheme "sqlite"`},
		{"unknown scheme from the config file", []string{"server", "run", "--config", cfgFile}, nil, exitUsage, `unknown scheme "mysql"`},
		{"password file with bolt", append(base, "--datastore-password-file", pwFile), nil, exitUsage, "--datastore-password-file is for a database datastore"},
		{"password file readable by group", append(base, "--datastore", "postgres://writ@db/writ", "--datastore-password-file", loose), nil, exitError, "readable by group or others"},
		{"password file missing", append(base, "--datastore", "postgres://writ@db/writ"), map[string]string{"WRIT_DATASTORE_PASSWORD_FILE": filepath.Join(dir, "none")}, exitError, "no such file"},
		{"postgres not reachable", append(base, "--datastore", "postgresql://writ:url-secret@127.0.0.1:1/writ?sslmode=disable&connect_timeout=2", "--datastore-password-file", pwFile), nil, exitError, "open datastore postgresql://writ:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			r := runCLI(t, "", tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.stderr) {
				t.Fatalf("code %d, stderr %q; want %d and %q", r.code, r.stderr, tc.code, tc.stderr)
			}
			for _, secret := range []string{"url-secret", "pw-file-secret"} {
				if strings.Contains(r.stderr, secret) {
					t.Fatalf("password printed: %q", r.stderr)
				}
			}
		})
	}
}

func TestReadPasswordFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if pw, err := readPasswordFile(write("ok", "\t s3cret pass \r\n", 0o600)); err != nil || pw != "s3cret pass" {
		t.Errorf("got %q, %v; want the trimmed content", pw, err)
	}
	if pw, err := readPasswordFile(write("ro", "x", 0o400)); err != nil || pw != "x" {
		t.Errorf("owner-only read-only file: %q, %v", pw, err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		if _, err := readPasswordFile(write("loose", "x", mode)); !errors.Is(err, errPasswordFileMode) {
			t.Errorf("mode %04o: %v, want errPasswordFileMode", mode, err)
		}
	}
	if _, err := readPasswordFile(write("empty", " \n", 0o600)); !errors.Is(err, errPasswordFileEmpty) {
		t.Errorf("blank file: %v, want errPasswordFileEmpty", err)
	}
	if _, err := readPasswordFile(dir); err == nil {
		t.Error("a directory was accepted")
	}
	if _, err := readPasswordFile(write("big", strings.Repeat("x", maxPasswordFile+1), 0o600)); err == nil {
		t.Error("an oversized file was accepted")
	}
}
