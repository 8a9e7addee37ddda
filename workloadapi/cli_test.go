package workloadapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// The CLI's Workload API commands (cmd/writ svid.go and jwt.go) are
// tested here, against the real server, by running the real binary.

var (
	writOnce   sync.Once
	writBinDir string // removed by TestMain
	writBin    string
	writErr    error
)

// writBinary builds cmd/writ once.
func writBinary(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("the go tool is needed to build cmd/writ")
		}
		t.Skip("no go tool to build cmd/writ")
	}
	writOnce.Do(func() {
		if writBinDir, writErr = os.MkdirTemp("", "writbin"); writErr != nil {
			return
		}
		writBin = filepath.Join(writBinDir, "writ")
		out, err := exec.Command(goTool, "build", "-o", writBin, "writ.dev/writ/cmd/writ").CombinedOutput()
		if err != nil {
			writErr = errors.New(string(out))
		}
	})
	if writErr != nil {
		t.Fatalf("build cmd/writ: %v", writErr)
	}
	return writBin
}

type cliRun struct {
	stdout, stderr string
	code           int
}

func runWrit(t *testing.T, env []string, stdin string, args ...string) cliRun {
	t.Helper()
	bin := writBinary(t) // built once; the build is not part of the command's time
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(cleanEnv(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := cliRun{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SPIFFE_ENDPOINT_SOCKET=") {
			out = append(out, kv)
		}
	}
	return out
}

func TestCLI(t *testing.T) {
	e := newEnv(t)
	a := e.add("/a")
	e.add("/b")
	sock := "--socket-path=" + e.path

	t.Run("svid fetch text", func(t *testing.T) {
		r := runWrit(t, nil, "", "svid", "fetch", sock)
		t.Logf("stdout:\n%s", r.stdout)
		if r.code != 0 || !strings.HasPrefix(r.stdout, "Found 2 SVIDs\n") ||
			!strings.Contains(r.stdout, "spiffe://example.org/a\n") || !strings.Contains(r.stdout, "spiffe://example.org/b\n") {
			t.Fatalf("%+v", r)
		}
		if strings.Contains(r.stdout, "PRIVATE KEY") {
			t.Error("private key printed")
		}
	})
	t.Run("svid fetch json", func(t *testing.T) {
		r := runWrit(t, nil, "", "svid", "fetch", sock, "--output", "json")
		var out []map[string]any
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &out) != nil || len(out) != 2 {
			t.Fatalf("%+v", r)
		}
		if out[0]["spiffe_id"] != "spiffe://example.org/a" || out[0]["not_after"] == "" || out[0]["dns_names"] == nil {
			t.Errorf("%v", out[0])
		}
		for k := range out[0] {
			if strings.Contains(k, "key") {
				t.Errorf("field %q", k)
			}
		}
	})
	t.Run("svid fetch write", func(t *testing.T) {
		dir := filepath.Join(tempDir(t), "certs")
		r := runWrit(t, nil, "", "svid", "fetch", sock, "--write", dir, "--spiffe-id", "spiffe://example.org/b")
		if r.code != 0 || !strings.Contains(r.stdout, "Wrote the SVID of spiffe://example.org/b to ") {
			t.Fatalf("%+v", r)
		}
		s, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid_key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		if s.ID.String() != "spiffe://example.org/b" {
			t.Errorf("wrote %s", s.ID)
		}
		b, err := x509bundle.Load(td, filepath.Join(dir, "bundle.pem"))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := x509svid.Verify(s.Certificates, b); err != nil {
			t.Error(err)
		}
		fi, err := os.Stat(filepath.Join(dir, "svid_key.pem"))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("key file mode %v, %v", fi.Mode(), err)
		}
		// Again: the files are replaced as a set; no temporary files
		// stay, only the links to the current and previous sets and
		// their directories.
		if r := runWrit(t, nil, "", "svid", "fetch", sock, "--write", dir); r.code != 0 {
			t.Fatalf("%+v", r)
		}
		names, _ := filepath.Glob(filepath.Join(dir, "*"))
		hidden, _ := filepath.Glob(filepath.Join(dir, ".*"))
		gens := 0
		for _, h := range hidden {
			// .writ-x509-<id> and .writ-x509-<id>-previous link to the
			// generations .writ-x509-<id>.<random>.
			rest, ok := strings.CutPrefix(filepath.Base(h), ".writ-x509-")
			switch {
			case ok && strings.Contains(rest, "."):
				gens++
			case !ok:
				t.Errorf("%s left in the directory", h)
			}
		}
		// filepath.Glob's * matches names starting with a dot too.
		if len(names)-len(hidden) != 3 || gens != 2 {
			t.Errorf("files %v %v", names, hidden)
		}
		if s, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid_key.pem")); err != nil || s.ID != a.SPIFFEID {
			t.Errorf("default SVID written: %v %v", s, err)
		}
	})
	t.Run("svid fetch unknown ID", func(t *testing.T) {
		r := runWrit(t, nil, "", "svid", "fetch", sock, "--spiffe-id", "spiffe://example.org/zz")
		if r.code != 1 || !strings.Contains(r.stderr, "no SVID for spiffe://example.org/zz") {
			t.Fatalf("%+v", r)
		}
	})
	t.Run("socket address forms", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			env  []string
			args []string
			code int
		}{
			{"env", []string{"SPIFFE_ENDPOINT_SOCKET=unix://" + e.path}, nil, 0},
			{"flag address", nil, []string{"--socket-path", "unix://" + e.path}, 0},
			{"flag wins over env", []string{"SPIFFE_ENDPOINT_SOCKET=unix:///nonexistent/s"}, []string{sock}, 0},
			{"bad env", []string{"SPIFFE_ENDPOINT_SOCKET=tcp://127.0.0.1:1"}, nil, 1},
			{"plain path env", []string{"SPIFFE_ENDPOINT_SOCKET=" + e.path}, nil, 1},
			{"opaque flag", nil, []string{"--socket-path", "unix:" + e.path[1:]}, 2},
			{"missing socket", nil, []string{"--socket-path", filepath.Join(e.dir, "none")}, 1},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := runWrit(t, tc.env, "", append([]string{"svid", "fetch", "--timeout", "3s"}, tc.args...)...)
				t.Logf("stderr: %s", r.stderr)
				if r.code != tc.code {
					t.Fatalf("code %d, want %d: %+v", r.code, tc.code, r)
				}
				if tc.name == "missing socket" && !strings.Contains(r.stderr, "cannot connect to the Workload API socket") {
					t.Errorf("stderr %q", r.stderr)
				}
			})
		}
	})
	t.Run("jwt fetch", func(t *testing.T) {
		r := runWrit(t, nil, "", "jwt", "fetch", sock, "--audience", "db")
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if r.code != 0 || len(lines) != 2 {
			t.Fatalf("%+v", r)
		}
		r = runWrit(t, nil, "", "jwt", "fetch", sock, "--audience", "db", "--audience", "cache", "--spiffe-id", "spiffe://example.org/b", "--output", "json")
		var out []map[string]string
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &out) != nil || len(out) != 1 || out[0]["spiffe_id"] != "spiffe://example.org/b" || out[0]["expires_at"] == "" {
			t.Fatalf("%+v", r)
		}
		token := out[0]["token"]

		v := runWrit(t, nil, "", "jwt", "validate", sock, "--audience", "cache", "--token", token)
		if v.code != 0 || v.stdout != "spiffe://example.org/b\n" {
			t.Fatalf("validate: %+v", v)
		}
		v = runWrit(t, nil, token+"\n", "jwt", "validate", sock, "--audience", "db", "--token", "-")
		if v.code != 0 || v.stdout != "spiffe://example.org/b\n" {
			t.Fatalf("validate from stdin: %+v", v)
		}
		v = runWrit(t, nil, "", "jwt", "validate", sock, "--audience", "other", "--token", token)
		t.Logf("stderr: %s", v.stderr)
		if v.code != 1 || !strings.Contains(v.stderr, "audience") || strings.Contains(v.stderr, token) {
			t.Fatalf("wrong audience: %+v", v)
		}
		v = runWrit(t, nil, "", "jwt", "validate", sock, "--token", token)
		if v.code != 2 {
			t.Fatalf("no audience: %+v", v)
		}
		v = runWrit(t, nil, "", "jwt", "fetch", sock)
		if v.code != 2 {
			t.Fatalf("jwt fetch without audience: %+v", v)
		}
	})
	t.Run("no identity", func(t *testing.T) {
		e2 := newEnv(t)
		r := runWrit(t, nil, "", "svid", "fetch", "--socket-path", e2.path)
		t.Logf("stderr: %s", r.stderr)
		if r.code != 1 || !strings.Contains(r.stderr, "no identity issued") {
			t.Fatalf("%+v", r)
		}
		r = runWrit(t, nil, "", "jwt", "fetch", "--socket-path", e2.path, "--audience", "x")
		if r.code != 1 || !strings.Contains(r.stderr, "no identity issued") {
			t.Fatalf("%+v", r)
		}
	})
}
