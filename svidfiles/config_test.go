package svidfiles

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"syscall"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
)

func TestApplyConfig(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want func(*Config)
		err  error
	}{
		{
			name: "spiffe-helper example",
			src: `agent_address = "/tmp/spire-agent/public/api.sock"
cmd = "ghostunnel"
cmd_args = "server --listen localhost:8002 --keystore certs/svid_key.pem"
cert_dir = "certs"
renew_signal = "SIGUSR1"
svid_file_name = "svid.pem"
svid_key_file_name = "svid_key.pem"
svid_bundle_file_name = "svid_bundle.pem"
jwt_svids = [{jwt_audience="your-audience",jwt_extra_audiences=["extra-1", "extra-2"], jwt_svid_file_name="jwt_svid.token"}]
jwt_bundle_file_name = "bundle.json"
cert_file_mode = 0444
key_file_mode = 0400
jwt_bundle_file_mode = 0444
jwt_svid_file_mode = 0440
`,
			want: func(c *Config) {
				c.SocketPath = "/tmp/spire-agent/public/api.sock"
				c.Cmd = "ghostunnel"
				c.CmdArgs = "server --listen localhost:8002 --keystore certs/svid_key.pem"
				c.CertDir = "certs"
				c.RenewSignal = "SIGUSR1"
				c.SVIDBundleFileName = "svid_bundle.pem"
				c.JWTSVIDs = []JWTSVID{{Audience: "your-audience", ExtraAudiences: []string{"extra-1", "extra-2"}, FileName: "jwt_svid.token"}}
				c.JWTBundleFileName = "bundle.json"
				c.CertFileMode, c.KeyFileMode, c.JWTBundleFileMode, c.JWTSVIDFileMode = 0o444, 0o400, 0o444, 0o440
			},
		},
		{
			name: "comments, booleans, multi-line list",
			src: `# a comment
// another
/* a block
   comment */
daemon_mode = false   # trailing
add_intermediates_to_bundle = true
include_federated_domains = true
file_format = "der"
jwt_svids = [
  {jwt_audience = "a", jwt_svid_file_name = "a.jwt"},
  {
    jwt_audience = "b"
    jwt_svid_file_name = "b.jwt"
  },
]
`,
			want: func(c *Config) {
				c.DaemonMode = false
				c.AddIntermediatesToBundle = true
				c.IncludeFederatedDomains = true
				c.Format = DER
				c.JWTSVIDs = []JWTSVID{{Audience: "a", FileName: "a.jwt"}, {Audience: "b", FileName: "b.jwt"}}
			},
		},
		{name: "escapes", src: `cmd_args = "a \"b c\" d\\e"`, want: func(c *Config) { c.CmdArgs = `a "b c" d\e` }},
		{name: "unknown key", src: `nope = 1`, err: ErrConfig},
		{name: "unsupported key", src: `hint = "x"`, err: ErrConfig},
		{name: "block", src: "health_checks {\n listener_enabled = true\n}", err: ErrSyntax},
		{name: "duplicate", src: "cmd = \"a\"\ncmd = \"b\"", err: ErrSyntax},
		{name: "wrong type", src: `daemon_mode = "false"`, err: ErrConfig},
		{name: "unquoted", src: `cmd = ghostunnel`, err: ErrSyntax},
		{name: "unterminated string", src: `cmd = "a`, err: ErrSyntax},
		{name: "unterminated list", src: `jwt_svids = [{jwt_audience = "a"}`, err: ErrSyntax},
		{name: "two on a line", src: `cmd = "a" cmd_args = "b"`, err: ErrSyntax},
		{name: "bad mode", src: `key_file_mode = 01777`, err: ErrConfig},
		{name: "float", src: `key_file_mode = 1.5`, err: ErrSyntax},
		{name: "deep", src: `jwt_svids = [[[[[[[[[[]]]]]]]]]]`, err: ErrSyntax},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := DefaultConfig()
			_, err := applyConfig([]byte(tt.src), &got)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := DefaultConfig()
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestSplitArgs(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		bad  bool
	}{
		{in: "", want: nil},
		{in: "  -g  'daemon off;' ", want: []string{"-g", "daemon off;"}},
		{in: `a "b \"c\" $d" e\ f`, want: []string{"a", `b "c" $d`, "e f"}},
		{in: `''`, want: []string{""}},
		{in: `"unterminated`, bad: true},
		{in: `trailing\`, bad: true},
	}
	for _, tt := range tests {
		got, err := splitArgs(tt.in)
		if tt.bad != (err != nil) || !slices.Equal(got, tt.want) {
			t.Errorf("splitArgs(%q) = %q, %v; want %q (error %v)", tt.in, got, err, tt.want, tt.bad)
		}
	}
}

func TestCheck(t *testing.T) {
	base := func() Config {
		c := DefaultConfig()
		c.SocketPath, c.CertDir = "/s", "/d"
		return c
	}
	tests := []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{name: "minimal", mod: func(*Config) {}, ok: true},
		{name: "no socket", mod: func(c *Config) { c.SocketPath = "" }},
		{name: "no dir", mod: func(c *Config) { c.CertDir = "" }},
		{name: "signal without target", mod: func(c *Config) { c.RenewSignal = "SIGHUP" }},
		{name: "signal with pid file", mod: func(c *Config) { c.RenewSignal, c.PIDFileName = "HUP", "/p" }, ok: true},
		{name: "unknown signal", mod: func(c *Config) { c.RenewSignal, c.PIDFileName = "SIGFOO", "/p" }},
		{name: "pid file without signal", mod: func(c *Config) { c.PIDFileName = "/p" }},
		{name: "cmd without daemon", mod: func(c *Config) { c.Cmd, c.DaemonMode = "x", false }},
		{name: "path in a name", mod: func(c *Config) { c.SVIDFileName = "../x" }},
		{name: "same name twice", mod: func(c *Config) { c.SVIDKeyFileName = c.SVIDFileName }},
		{name: "a name of Writ's own", mod: func(c *Config) { c.SVIDBundleFileName = ".writ-x509" }},
		{name: "jwt without audience", mod: func(c *Config) { c.JWTSVIDs = []JWTSVID{{FileName: "t"}} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mod(&c)
			err := c.Check()
			if tt.ok != (err == nil) {
				t.Fatalf("Check: %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrConfig) {
				t.Fatalf("Check: %v is not ErrConfig", err)
			}
		})
	}
}

// setUmask sets a umask for the test; files must get their modes
// whatever it is.
func setUmask(t *testing.T, mask int) {
	old := syscall.Umask(mask)
	t.Cleanup(func() { syscall.Umask(old) })
}

// victim is a file outside dir that a link placed in dir points to; it
// must stay as it is.
type victim struct {
	path string
	data []byte
	mode fs.FileMode
}

func placeLink(t *testing.T, dir, name string, data []byte, mode fs.FileMode) victim {
	t.Helper()
	v := victim{path: filepath.Join(t.TempDir(), "victim-"+name), data: data, mode: mode}
	if err := os.WriteFile(v.path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(v.path, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(v.path, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	return v
}

func (v victim) check(t *testing.T) {
	t.Helper()
	fi, err := os.Lstat(v.path)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != v.mode {
		t.Errorf("%s: %v %v, want a regular file of mode %v", v.path, fi, err, v.mode)
	}
	if b, err := os.ReadFile(v.path); err != nil || !slices.Equal(b, v.data) {
		t.Errorf("%s was written through the link: %q %v", v.path, b, err)
	}
}

// Files get their modes whatever the umask, and a link someone placed at
// a file's path is replaced, never written through, even when the file
// it points to already holds the content and mode to write.
func TestWriteAtomicModes(t *testing.T) {
	setUmask(t, 0)
	dir := t.TempDir()
	files := []file{{name: "k", data: []byte("key"), mode: 0o600}, {name: "c", data: []byte("cert"), mode: 0o644}}
	victims := []victim{
		placeLink(t, dir, "k", []byte("victim"), 0o666),
		placeLink(t, dir, "c", []byte("cert"), 0o644), // what would be written
	}
	changed, err := writeFiles(dir, files)
	if err != nil || !changed {
		t.Fatalf("first write: changed %v, %v", changed, err)
	}
	checkFiles := func() {
		t.Helper()
		for _, f := range files {
			fi, err := lstat(dir, f.name)
			if err != nil {
				t.Fatal(err)
			}
			if !fi.Mode().IsRegular() || fi.Mode().Perm() != f.mode {
				t.Errorf("%s: %v, want a regular file of mode %v", f.name, fi.Mode(), f.mode)
			}
			if b := readFile(t, dir, f.name); !slices.Equal(b, f.data) {
				t.Errorf("%s: %q, want %q", f.name, b, f.data)
			}
		}
		for _, v := range victims {
			v.check(t)
		}
	}
	checkFiles()
	changed, err = writeFiles(dir, files)
	if err != nil || changed {
		t.Fatalf("same content again: changed %v, %v; want unchanged", changed, err)
	}
	files[0].data = []byte("key2")
	if changed, err = writeFiles(dir, files); err != nil || !changed {
		t.Fatalf("new content: changed %v, %v", changed, err)
	}
	checkFiles()
	entries, _ := readDir(dir)
	if len(entries) != 2 {
		t.Errorf("%d files in the directory, want 2 (temporary files left behind?)", len(entries))
	}
}

// The same for the X.509 set: modes whatever the umask, and links placed
// at the configured paths replaced, never written through.
func TestWriteX509FilesModes(t *testing.T) {
	setUmask(t, 0)
	own := newTestIssuer(t, "example.org")
	cfg := DefaultConfig()
	cfg.CertDir = t.TempDir()
	// Made 0777 under umask 0: a directory every user may write to is
	// refused (TestWriteX509FilesDirWritableByOthers).
	if err := os.Chmod(cfg.CertDir, 0o755); err != nil {
		t.Fatal(err)
	}
	svid := own.svid(t, "/web")
	files, err := cfg.x509Files(svid, x509bundle.NewSet(own.bundle()))
	if err != nil {
		t.Fatal(err)
	}
	var victims []victim
	for _, f := range files {
		victims = append(victims, placeLink(t, cfg.CertDir, f.name, f.data, f.mode)) // the content to write, even
	}
	if changed, err := cfg.WriteX509Files(svid, x509bundle.NewSet(own.bundle())); err != nil || !changed {
		t.Fatalf("write: changed %v, %v", changed, err)
	}
	for _, v := range victims {
		v.check(t)
	}
	checkLayout(t, &cfg, []string{cfg.SVIDFileName, cfg.SVIDKeyFileName, cfg.SVIDBundleFileName})
	fi, err := os.Stat(filepath.Join(cfg.CertDir, cfg.setNames().current))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("the generation directory: %v %v, want mode 0755", fi, err)
	}
}

func readFile(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func FuzzParseHCL(f *testing.F) {
	for _, s := range []string{
		`agent_address = "/tmp/a.sock"`,
		"jwt_svids = [{jwt_audience=\"a\", jwt_extra_audiences=[\"b\"], jwt_svid_file_name=\"t\"}]\n",
		"/* c */ daemon_mode = false # x\nkey_file_mode = 0600",
		`cmd_args = "a \"b\""`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		m, err := parseHCL(src)
		if err != nil && !errors.Is(err, ErrSyntax) {
			t.Fatalf("error %v is not ErrSyntax", err)
		}
		if err == nil && m == nil {
			t.Fatal("nil map without error")
		}
		c := DefaultConfig()
		_, _ = applyConfig(src, &c)
	})
}

func lstat(dir, name string) (fs.FileInfo, error) { return os.Lstat(filepath.Join(dir, name)) }

func readDir(dir string) ([]fs.DirEntry, error) { return os.ReadDir(dir) }
