package svidfiles_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	gojwtsvid "github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/jwtsvid"
	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/testuser"
	"writ.dev/writ/svidfiles"
	"writ.dev/writ/workloadapi"
	"writ.dev/writ/workloadapi/unixattest"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// jwtTTL is the lifetime of the JWT-SVIDs the test agent signs.
const jwtTTL = time.Minute

// agent is a Workload API server on a real socket with a real cache,
// whose clock is a fake one (cacheClock), so that JWT-SVIDs age on
// demand.
type agent struct {
	t          *testing.T
	iss        *x509ca.Issuer
	jwtKey     jwtsvid.Key
	cache      *svidcache.Cache
	cacheClock *fakeclock.Clock
	socket     string
	en         *entry.Entry
}

type signer struct {
	a     *agent
	mu    sync.Mutex // guards cache
	cache *svidcache.Cache
}

func (s *signer) SignJWTSVID(_ context.Context, entryID string, audience []string) (string, error) {
	s.mu.Lock()
	c := s.cache
	s.mu.Unlock()
	e, ok := c.Entry(entryID)
	if !ok {
		return "", svidcache.ErrUnknownEntry
	}
	now := s.a.cacheClock.Now()
	tok, _, err := jwtsvid.Sign(now, s.a.jwtKey, e.SPIFFEID, audience, jwtTTL, now.Add(time.Hour))
	return tok, err
}

func newAgent(t *testing.T) *agent {
	t.Helper()
	now := time.Now()
	a := &agent{t: t, cacheClock: fakeclock.New(now)}
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509ca.NewSelfSignedCA(now.Add(-time.Minute), td, key, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	a.iss = &x509ca.Issuer{Cert: cert, Signer: key}
	jk, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	a.jwtKey = jwtsvid.Key{ID: "k1", Signer: jk}
	b := spiffebundle.FromX509Authorities(td, []*x509.Certificate{cert})
	if err := b.AddJWTAuthority("k1", jk.Public()); err != nil {
		t.Fatal(err)
	}
	log := testLogger(t)
	sg := &signer{a: a}
	a.cache, err = svidcache.New(svidcache.Config{TrustDomain: td, Clock: a.cacheClock, Logger: log, JWTSigner: sg})
	if err != nil {
		t.Fatal(err)
	}
	sg.cache = a.cache
	a.cache.Apply(svidcache.Update{Full: true, Bundle: b})
	a.en = &entry.Entry{ID: entry.NewID(), SPIFFEID: spiffeid.RequireFromPath(td, "/web"), ParentID: spiffeid.RequireFromPath(td, "/writ/agent/n")}
	sel, err := entry.ParseSelector(fmt.Sprintf("unix:uid:%d", os.Geteuid()))
	if err != nil {
		t.Fatal(err)
	}
	a.en.Selectors = []entry.Selector{sel}
	a.en.Normalize()
	a.cache.Apply(svidcache.Update{Entries: []*entry.Entry{a.en}})
	a.rotate()

	dir, err := os.MkdirTemp("", "h")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	a.socket = filepath.Join(dir, "s")
	srv, err := workloadapi.New(workloadapi.Config{
		SocketPath: a.socket, Cache: a.cache, TrustDomain: td, Logger: log, Clock: clock.Real(),
		Attestor: unixattest.New(unixattest.Config{Logger: log}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return a
}

// rotate signs a new X.509-SVID for the entry.
func (a *agent) rotate() *svidcache.X509SVID {
	a.t.Helper()
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		a.t.Fatal(err)
	}
	der, err := x509ca.SignX509SVID(time.Now(), a.iss, x509ca.SVIDParams{ID: a.en.SPIFFEID, TTL: time.Hour, PublicKey: key.Public()})
	if err != nil {
		a.t.Fatal(err)
	}
	s, err := svidcache.NewX509SVID(a.en.ID, [][]byte{der}, key)
	if err != nil {
		a.t.Fatal(err)
	}
	if err := a.cache.SetX509SVID(s); err != nil {
		a.t.Fatal(err)
	}
	return s
}

func (a *agent) config(t *testing.T) svidfiles.Config {
	cfg := svidfiles.DefaultConfig()
	cfg.SocketPath = a.socket
	cfg.CertDir = t.TempDir()
	return cfg
}

func read(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHelperWritesRotatesAndSignals(t *testing.T) {
	a := newAgent(t)
	cfg := a.config(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.RenewSignal, cfg.PIDFileName = "SIGUSR1", pidFile
	cfg.JWTSVIDs = []svidfiles.JWTSVID{{Audience: "db", ExtraAudiences: []string{"cache"}, FileName: "db.jwt"}}
	cfg.JWTBundleFileName = "jwt_bundle.json"
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGUSR1)
	defer signal.Stop(sigs)

	hclk := fakeclock.New(time.Now())
	h, err := svidfiles.New(cfg, hclk, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	run := runHelper(t, h)
	waitSignal(t, sigs) // after the first write

	dir := cfg.CertDir
	pair, err := tls.X509KeyPair(read(t, dir, "svid.pem"), read(t, dir, "svid_key.pem"))
	if err != nil {
		t.Fatalf("svid.pem and svid_key.pem are not a pair: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "svid_key.pem")); fi.Mode().Perm() != 0o600 {
		t.Errorf("svid_key.pem mode %v, want 0600", fi.Mode().Perm())
	}
	bundle := pemCerts(t, read(t, dir, "bundle.pem"))
	if len(bundle) != 1 || !bundle[0].Equal(a.iss.Cert) {
		t.Error("bundle.pem is not the CA")
	}
	tok, err := gojwtsvid.ParseInsecure(strings.TrimSpace(string(read(t, dir, "db.jwt"))), []string{"db", "cache"})
	if err != nil || tok.ID != a.en.SPIFFEID {
		t.Fatalf("db.jwt: %v, %v", tok, err)
	}
	if _, err := jwtbundle.Parse(td, read(t, dir, "jwt_bundle.json")); err != nil {
		t.Fatalf("jwt_bundle.json: %v", err)
	}

	// A rotation rewrites the files and signals again.
	s := a.rotate()
	waitSignal(t, sigs)
	if leaf := pemCerts(t, read(t, dir, "svid.pem"))[0]; !bytes.Equal(leaf.Raw, s.LeafDER()) {
		t.Error("svid.pem is not the rotated SVID")
	}
	if bytes.Equal(pair.Certificate[0], s.LeafDER()) {
		t.Fatal("rotation produced the same certificate")
	}

	// The JWT-SVID is fetched again at half its lifetime.
	if err := hclk.WaitForTimers(run.ctx, 1); err != nil {
		t.Fatal(err)
	}
	a.cacheClock.Advance(jwtTTL/2 + time.Second)
	hclk.Advance(jwtTTL/2 + time.Second)
	waitSignal(t, sigs)
	tok2, err := gojwtsvid.ParseInsecure(strings.TrimSpace(string(read(t, dir, "db.jwt"))), []string{"db"})
	if err != nil {
		t.Fatal(err)
	}
	if !tok2.Expiry.After(tok.Expiry) {
		t.Errorf("refreshed JWT-SVID expires %v, not after the first's %v", tok2.Expiry, tok.Expiry)
	}
}

func TestHelperOnceDER(t *testing.T) {
	a := newAgent(t)
	cfg := a.config(t)
	cfg.DaemonMode = false
	cfg.Format = svidfiles.DER
	cfg.SVIDFileName, cfg.SVIDKeyFileName, cfg.SVIDBundleFileName = "svid.der", "key.der", "bundle.der"
	h, err := svidfiles.New(cfg, nil, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	certs, err := x509.ParseCertificates(read(t, cfg.CertDir, "svid.der"))
	if err != nil || len(certs) != 1 {
		t.Fatalf("svid.der: %d certificates, %v", len(certs), err)
	}
	if _, err := x509.ParsePKCS8PrivateKey(read(t, cfg.CertDir, "key.der")); err != nil {
		t.Fatalf("key.der: %v", err)
	}
	if b, err := x509.ParseCertificates(read(t, cfg.CertDir, "bundle.der")); err != nil || !b[0].Equal(a.iss.Cert) {
		t.Fatalf("bundle.der: %v", err)
	}
}

func waitSignal(t *testing.T, sigs <-chan os.Signal) {
	t.Helper()
	select {
	case <-sigs:
	case <-time.After(15 * time.Second):
		t.Fatal("no signal within 15s")
	}
}

// runningHelper is a Helper running in the background until the test ends.
type runningHelper struct {
	ctx  context.Context // ends when the test does
	done chan struct{}   // closed once Run returned
	err  error           // what it returned
}

// runHelper runs h until the test ends, then checks that Run returned nil.
func runHelper(t *testing.T, h *svidfiles.Helper) *runningHelper {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	r := &runningHelper{ctx: ctx, done: make(chan struct{})}
	go func() { r.err = h.Run(ctx); close(r.done) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
		if r.err != nil {
			t.Errorf("Run: %v", r.err)
		}
	})
	return r
}

func pemCerts(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatal("no certificate")
	}
	return out
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// TestHelperDefaultSocketTrust: with CheckSocket (the socket path is a
// default the user did not name), the helper refuses a socket whose
// directory or file another user owns, as when that user created
// /tmp/writ-agent first, and writes nothing; with the directory and
// socket of this user or root it writes the files.
func TestHelperDefaultSocketTrust(t *testing.T) {
	uid, gid := testuser.Lookup(t)
	a := newAgent(t)
	dir := filepath.Dir(a.socket)
	for _, tc := range []struct {
		name  string
		owned []string // chowned to the other user
	}{
		{"other user's directory", []string{dir}},
		{"other user's socket", []string{a.socket}},
		{"other user's directory and socket", []string{dir, a.socket}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, p := range tc.owned {
				if err := os.Lchown(p, int(uid), int(gid)); err != nil {
					t.Fatal(err)
				}
			}
			t.Cleanup(func() {
				for _, p := range tc.owned {
					if err := os.Lchown(p, 0, 0); err != nil {
						t.Fatal(err)
					}
				}
			})
			cfg := a.config(t)
			cfg.DaemonMode, cfg.CheckSocket = false, true
			h, err := svidfiles.New(cfg, nil, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			err = h.Run(t.Context())
			if !errors.Is(err, workloadapi.ErrSocketPath) || !strings.Contains(err.Error(), fmt.Sprintf("owned by uid %d", uid)) {
				t.Fatalf("Run: %v; want the socket refused, naming its owner", err)
			}
			if files, _ := os.ReadDir(cfg.CertDir); len(files) != 0 {
				t.Errorf("files written from a refused socket: %v", files)
			}
		})
	}
	t.Run("this user's", func(t *testing.T) {
		cfg := a.config(t)
		cfg.DaemonMode, cfg.CheckSocket = false, true
		h, err := svidfiles.New(cfg, nil, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := h.Run(t.Context()); err != nil {
			t.Fatalf("Run: %v", err)
		}
		read(t, cfg.CertDir, "svid.pem")
	})
	t.Run("not checked when named", func(t *testing.T) {
		if err := os.Lchown(dir, int(uid), int(gid)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Lchown(dir, 0, 0) })
		cfg := a.config(t)
		cfg.DaemonMode = false
		h, err := svidfiles.New(cfg, nil, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := h.Run(t.Context()); err != nil {
			t.Fatalf("Run: %v", err)
		}
	})
}

// signalWriter is a log destination that passes everything to t.Log and
// closes found[s] the first time a record contains s.
type signalWriter struct {
	t     *testing.T
	mu    sync.Mutex // guards found
	found map[string]chan struct{}
}

func newSignalWriter(t *testing.T, wants ...string) *signalWriter {
	w := &signalWriter{t: t, found: map[string]chan struct{}{}}
	for _, s := range wants {
		w.found[s] = make(chan struct{})
	}
	return w
}

func (w *signalWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	w.mu.Lock()
	defer w.mu.Unlock()
	for s, ch := range w.found {
		if ch != nil && strings.Contains(string(b), s) {
			close(ch)
			w.found[s] = nil
		}
	}
	return len(b), nil
}

// wait returns the channel closed once a record contains s.
func (w *signalWriter) wait(s string) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ch := w.found[s]; ch != nil {
		return ch
	}
	ch := make(chan struct{})
	close(ch)
	return ch
}

// TestHelperDefaultSocketCheckedOnEachDial: in daemon mode a default
// socket missing at start (the agent not yet up) is checked when it
// appears: one another user put there first is refused, and the helper
// connects once it is this user's or root's.
func TestHelperDefaultSocketCheckedOnEachDial(t *testing.T) {
	uid, gid := testuser.Lookup(t)
	a := newAgent(t)
	// base stands for /tmp: root's, sticky, writable by all.
	base := filepath.Join(filepath.Dir(a.socket), "tmp")
	if err := os.Mkdir(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	agentDir := filepath.Join(base, "agent")
	cfg := a.config(t)
	cfg.SocketPath, cfg.CheckSocket = filepath.Join(agentDir, "api.sock"), true
	refused := fmt.Sprintf("owned by uid %d", uid)
	w := newSignalWriter(t, "no such file or directory", refused)
	h, err := svidfiles.New(cfg, nil, slog.New(slog.NewTextHandler(w, nil)))
	if err != nil {
		t.Fatal(err)
	}
	run := runHelper(t, h)

	// Running, and finding no socket yet.
	select {
	case <-w.wait("no such file or directory"):
	case <-run.done:
		t.Fatalf("Run: %v", run.err)
	case <-time.After(time.Minute):
		t.Fatal("no attempt to connect within a minute")
	}

	// The other user makes the directory, with a way to the agent's
	// socket in it (set up aside, then renamed into place at once).
	staging := filepath.Join(base, "staging")
	if err := os.Mkdir(staging, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(a.socket, filepath.Join(staging, "api.sock")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{staging, filepath.Join(staging, "api.sock")} {
		if err := os.Lchown(p, int(uid), int(gid)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(staging, agentDir); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.wait(refused):
	case <-h.Ready():
		t.Fatal("the helper wrote files from another user's socket")
	case <-time.After(time.Minute):
		t.Fatal("no refusal logged within a minute")
	}
	if files, _ := os.ReadDir(cfg.CertDir); len(files) != 0 {
		t.Fatalf("files written from a refused socket: %v", files)
	}

	// Root's now: the next attempt connects.
	for _, p := range []string{agentDir, cfg.SocketPath} {
		if err := os.Lchown(p, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-h.Ready():
	case <-time.After(2 * time.Minute):
		t.Fatal("the helper did not connect once the socket was root's")
	}
	read(t, cfg.CertDir, "svid.pem")
}

// Once the new set of X.509 files is in place, the consumer is signalled
// even if cleaning up after the switch fails: it must not keep the old
// certificate until that expires.
func TestHelperSignalsWhenCleanupFails(t *testing.T) {
	a := newAgent(t)
	cfg := a.config(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.RenewSignal, cfg.PIDFileName = "SIGUSR2", pidFile
	svidfiles.SetFault(&cfg, func(step string) error {
		if step == svidfiles.StepLinked {
			return errors.New("cleanup fails")
		}
		return nil
	})
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGUSR2)
	defer signal.Stop(sigs)

	h, err := svidfiles.New(cfg, fakeclock.New(time.Now()), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	runHelper(t, h)
	waitSignal(t, sigs) // after the first write
	s := a.rotate()
	waitSignal(t, sigs)
	if leaf := pemCerts(t, read(t, cfg.CertDir, "svid.pem"))[0]; !bytes.Equal(leaf.Raw, s.LeafDER()) {
		t.Error("svid.pem is not the rotated SVID")
	}
}

// TestHelperCommandGetsIgnoredRenewSignal: a helper started with its
// renew signal ignored (under nohup) still reaches a shell command,
// which could not trap a signal it inherited ignored.
func TestHelperCommandGetsIgnoredRenewSignal(t *testing.T) {
	signal.Ignore(syscall.SIGHUP)
	defer signal.Reset(syscall.SIGHUP)
	a := newAgent(t)
	cfg := a.config(t)
	dir := t.TempDir()
	hups, ready := filepath.Join(dir, "hups"), filepath.Join(dir, "ready")
	cfg.Cmd = "/bin/sh"
	cfg.CmdArgs = fmt.Sprintf(`-c 'trap "echo hup >> %s" HUP; : > %s; while :; do sleep 0.05 & wait $!; done'`, hups, ready)
	cfg.RenewSignal = "SIGHUP"

	h, err := svidfiles.New(cfg, fakeclock.New(time.Now()), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	runHelper(t, h)
	waitFile := func(what, path string) []byte {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if b, err := os.ReadFile(path); err == nil && (path != hups || len(b) > 0) {
				return b
			}
		}
		t.Fatalf("%s: not within 10s", what)
		return nil
	}
	waitFile("the command's trap set", ready)
	a.rotate()
	if b := waitFile("SIGHUP recorded by the command", hups); !strings.Contains(string(b), "hup") {
		t.Fatalf("hups holds %q", b)
	}
}
