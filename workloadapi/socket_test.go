package workloadapi_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/workloadapi"
	"writ.dev/writ/workloadapi/unixattest"
)

// serverAt returns a Server for path with an empty cache.
func serverAt(t *testing.T, path string) *workloadapi.Server {
	t.Helper()
	cache, err := svidcache.New(svidcache.Config{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	s, err := workloadapi.New(workloadapi.Config{
		SocketPath:  path,
		Cache:       cache,
		Attestor:    unixattest.New(unixattest.Config{}),
		TrustDomain: td,
		Logger:      testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// runBriefly runs s until it is ready, then stops it; it returns Run's
// error if Run fails before being ready.
func runBriefly(t *testing.T, s *workloadapi.Server, whileReady func()) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case err := <-done:
		return err
	case <-s.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("not ready")
	}
	if whileReady != nil {
		whileReady()
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after a clean stop: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	return nil
}

func TestSocketHygiene(t *testing.T) {
	t.Run("created with its directory, mode 0777, removed on exit", func(t *testing.T) {
		path := filepath.Join(tempDir(t), "sub", "s")
		err := runBriefly(t, serverAt(t, path), func() {
			fi, err := os.Lstat(path)
			if err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o777 {
				t.Errorf("socket %v, %v", fi.Mode(), err)
			}
			di, err := os.Stat(filepath.Dir(path))
			if err != nil || di.Mode().Perm() != 0o755 {
				t.Errorf("directory %v, %v", di.Mode(), err)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("socket left behind: %v", err)
		}
	})
	t.Run("stale socket replaced", func(t *testing.T) {
		path := filepath.Join(tempDir(t), "s")
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		l.SetUnlinkOnClose(false)
		l.Close()
		if err := runBriefly(t, serverAt(t, path), nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("live socket refused", func(t *testing.T) {
		path := filepath.Join(tempDir(t), "s")
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		if err := runBriefly(t, serverAt(t, path), nil); !errors.Is(err, workloadapi.ErrSocketInUse) {
			t.Fatalf("got %v, want ErrSocketInUse", err)
		}
		if _, err := os.Lstat(path); err != nil {
			t.Errorf("the live socket was removed: %v", err)
		}
	})
	t.Run("rules of internal/unixsock apply: a regular file is kept", func(t *testing.T) {
		path := filepath.Join(tempDir(t), "s")
		if err := os.WriteFile(path, []byte("keep"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := runBriefly(t, serverAt(t, path), nil); !errors.Is(err, workloadapi.ErrSocketPath) {
			t.Fatalf("got %v, want ErrSocketPath", err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "keep" {
			t.Errorf("file changed: %q %v", b, err)
		}
	})
	t.Run("world-writable directory refused", func(t *testing.T) {
		dir := tempDir(t)
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := runBriefly(t, serverAt(t, filepath.Join(dir, "s")), nil); !errors.Is(err, workloadapi.ErrSocketPath) {
			t.Fatalf("got %v, want ErrSocketPath", err)
		}
	})
}

func TestNewConfig(t *testing.T) {
	cache, err := svidcache.New(svidcache.Config{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	good := workloadapi.Config{SocketPath: "/tmp/x/s", Cache: cache, Attestor: unixattest.New(unixattest.Config{}), TrustDomain: td}
	if _, err := workloadapi.New(good); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(*workloadapi.Config)
		want error
	}{
		{"no socket", func(c *workloadapi.Config) { c.SocketPath = "" }, workloadapi.ErrConfig},
		{"no cache", func(c *workloadapi.Config) { c.Cache = nil }, workloadapi.ErrConfig},
		{"no attestor", func(c *workloadapi.Config) { c.Attestor = nil }, workloadapi.ErrConfig},
		{"no trust domain", func(c *workloadapi.Config) { c.TrustDomain = spiffeid.TrustDomain{} }, workloadapi.ErrConfig},
		{"negative limit", func(c *workloadapi.Config) { c.MaxConnections = -1 }, workloadapi.ErrConfig},
		{"negative per-uid limit", func(c *workloadapi.Config) { c.MaxConnectionsPerUID = -1 }, workloadapi.ErrConfig},
		{"per-uid limit above the global one", func(c *workloadapi.Config) { c.MaxConnections, c.MaxConnectionsPerUID = 4, 5 }, workloadapi.ErrConfig},
		{"per-uid limit above the default global one", func(c *workloadapi.Config) { c.MaxConnectionsPerUID = workloadapi.DefaultMaxConnections + 1 }, workloadapi.ErrConfig},
		{"per-uid limit equal to the global one", func(c *workloadapi.Config) { c.MaxConnections, c.MaxConnectionsPerUID = 4, 4 }, nil},
		{"small global limit", func(c *workloadapi.Config) { c.MaxConnections = 1 }, nil},
		{"path too long", func(c *workloadapi.Config) { c.SocketPath = "/" + strings.Repeat("s", workloadapi.MaxSocketPathLen) }, workloadapi.ErrSocketPath},
		{"longest path", func(c *workloadapi.Config) { c.SocketPath = "/" + strings.Repeat("s", workloadapi.MaxSocketPathLen-1) }, nil},
		{"abstract socket", func(c *workloadapi.Config) { c.SocketPath = "@writ" }, workloadapi.ErrSocketPath},
		{"NUL", func(c *workloadapi.Config) { c.SocketPath = "/tmp/a\x00b" }, workloadapi.ErrSocketPath},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.edit(&cfg)
			if _, err := workloadapi.New(cfg); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestEndpointAddr(t *testing.T) {
	for _, tc := range []struct {
		addr, path string
		ok         bool
	}{
		{"unix:///run/writ/workload.sock", "/run/writ/workload.sock", true},
		{"unix:///tmp/a%20b/s", "/tmp/a b/s", true},
		{"unix:///tmp/100%25/s", "/tmp/100%/s", true},
		{"unix:/run/s", "/run/s", true},
		{"unix:run/s", "", false},
		{"unix://host/run/s", "", false},
		{"unix://user@/run/s", "", false},
		{"unix:///run/s?x=1", "", false},
		{"unix:///run/s?", "", false},
		{"unix:///run/s#f", "", false},
		{"unix:///run/s#", "", false},
		{"tcp://127.0.0.1:8000", "", false},
		{"/run/s", "", false},
		{"", "", false},
		{"unix://", "", false},
		{"unix:///" + strings.Repeat("s", 200), "", false},
		{"unix:///tmp/%zz", "", false},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			p, err := workloadapi.ParseEndpointAddr(tc.addr)
			if tc.ok != (err == nil) || p != tc.path {
				t.Fatalf("got %q, %v", p, err)
			}
			if err != nil && !errors.Is(err, workloadapi.ErrSocketPath) {
				t.Errorf("error %v is not ErrSocketPath", err)
			}
			if tc.ok {
				a, err := workloadapi.EndpointAddr(p)
				if err != nil {
					t.Fatal(err)
				}
				if back, err := workloadapi.ParseEndpointAddr(a); err != nil || back != p {
					t.Errorf("round trip %q -> %q -> %q, %v", p, a, back, err)
				}
			}
		})
	}
	if _, err := workloadapi.EndpointAddr("rel/s"); !errors.Is(err, workloadapi.ErrSocketPath) {
		t.Errorf("relative path: %v", err)
	}
}
