package svidfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/testuser"
)

// testIssuer is a CA of a trust domain.
type testIssuer struct {
	iss *x509ca.Issuer
	td  spiffeid.TrustDomain
}

func newTestIssuer(t testing.TB, td string) *testIssuer {
	t.Helper()
	d := spiffeid.RequireTrustDomainFromString(td)
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509ca.NewSelfSignedCA(time.Now().Add(-time.Minute), d, key, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &testIssuer{iss: &x509ca.Issuer{Cert: cert, Signer: key}, td: d}
}

// svid signs a new X.509-SVID, with a new key, for path.
func (i *testIssuer) svid(t testing.TB, path string) *x509svid.SVID {
	t.Helper()
	key, err := x509ca.GenerateKey(x509ca.KeyTypeECP256)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(i.td, path)
	der, err := x509ca.SignX509SVID(time.Now(), i.iss, x509ca.SVIDParams{ID: id, TTL: time.Hour, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

func (i *testIssuer) bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(i.td, []*x509.Certificate{i.iss.Cert})
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// A trust domain that drops out of the X.509 context loses its federated
// bundle file; files that only resemble one, and configured names, stay.
func TestWriteX509FilesRemovesDefederatedBundles(t *testing.T) {
	own, fedA, fedB := newTestIssuer(t, "example.org"), newTestIssuer(t, "a.test"), newTestIssuer(t, "b.test")
	for _, format := range []Format{PEM, DER} {
		t.Run(string(format), func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.CertDir, cfg.Format = t.TempDir(), format
			cfg.JWTBundleFileName = "federated_bundle.jwt.test." + string(format) // configured: never stale
			keepers := []string{
				cfg.JWTBundleFileName,
				"federated_bundle.notes.txt",
				"federated_bundle.b.test.pem.bak",
				"federated_bundle..pem",
				"federated_bundle.B.test." + string(format), // not a trust domain name
			}
			for _, n := range keepers {
				if err := os.WriteFile(filepath.Join(cfg.CertDir, n), []byte("mine"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			// A directory named like a bundle file is not touched either.
			dirLike := "federated_bundle.c.test." + string(format)
			if err := os.Mkdir(filepath.Join(cfg.CertDir, dirLike), 0o700); err != nil {
				t.Fatal(err)
			}
			keepers = append(keepers, dirLike)
			svid := own.svid(t, "/web")
			aFile, bFile := FederatedBundleFileName("a.test", format), FederatedBundleFileName("b.test", format)

			if _, err := cfg.WriteX509Files(svid, x509bundle.NewSet(own.bundle(), fedA.bundle(), fedB.bundle())); err != nil {
				t.Fatal(err)
			}
			names := dirNames(t, cfg.CertDir)
			if !slices.Contains(names, aFile) || !slices.Contains(names, bFile) {
				t.Fatalf("files %v: want %s and %s", names, aFile, bFile)
			}
			changed, err := cfg.WriteX509Files(svid, x509bundle.NewSet(own.bundle(), fedA.bundle()))
			if err != nil || !changed {
				t.Fatalf("b.test dropped: changed %v, %v", changed, err)
			}
			names = dirNames(t, cfg.CertDir)
			if slices.Contains(names, bFile) {
				t.Errorf("%s is still there after b.test left the context: %v", bFile, names)
			}
			if !slices.Contains(names, aFile) {
				t.Errorf("%s is gone: %v", aFile, names)
			}
			for _, n := range keepers {
				if !slices.Contains(names, n) {
					t.Errorf("%s, not a federated bundle file of Writ's, was removed", n)
				}
			}
		})
	}
}

// readSet reads the certificate, key and bundle files through the paths
// users configure.
func readSet(cfg *Config) (cert, key, bundle []byte, err error) {
	if cert, err = os.ReadFile(filepath.Join(cfg.CertDir, cfg.SVIDFileName)); err != nil {
		return
	}
	if key, err = os.ReadFile(filepath.Join(cfg.CertDir, cfg.SVIDKeyFileName)); err != nil {
		return
	}
	bundle, err = os.ReadFile(filepath.Join(cfg.CertDir, cfg.SVIDBundleFileName))
	return
}

// A reader polling the files while they rotate many times never sees a
// key that does not match the certificate: it reads the certificate, the
// key, and the certificate again, and when both certificate reads agree
// (no switch fell between them) the key must be that certificate's.
func TestWriteX509FilesReaderSeesWholeSets(t *testing.T) {
	own := newTestIssuer(t, "example.org")
	cfg := DefaultConfig()
	cfg.CertDir = t.TempDir()
	bundles := x509bundle.NewSet(own.bundle())
	const rotations = 100
	svids := make([]*x509svid.SVID, rotations)
	for i := range svids {
		svids[i] = own.svid(t, "/web")
	}
	if _, err := cfg.WriteX509Files(svids[0], bundles); err != nil {
		t.Fatal(err)
	}

	done := make(chan struct{})
	type result struct{ checked, mismatched int }
	res := make(chan result)
	go func() {
		var r result
		for {
			select {
			case <-done:
				res <- r
				return
			default:
			}
			cert := filepath.Join(cfg.CertDir, cfg.SVIDFileName)
			c1, err1 := os.ReadFile(cert)
			k, err2 := os.ReadFile(filepath.Join(cfg.CertDir, cfg.SVIDKeyFileName))
			c2, err3 := os.ReadFile(cert)
			if err1 != nil || err2 != nil || err3 != nil || !slices.Equal(c1, c2) {
				continue // a generation removed under a slow reader, or a switch between the reads
			}
			r.checked++
			if _, err := tls.X509KeyPair(c1, k); err != nil {
				r.mismatched++
			}
		}
	}()
	for _, s := range svids[1:] {
		if _, err := cfg.WriteX509Files(s, bundles); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	r := <-res
	t.Logf("%d rotations, %d consistent reads checked, %d with a key of another certificate", rotations, r.checked, r.mismatched)
	if r.mismatched > 0 {
		t.Errorf("the reader saw a key that does not match the certificate %d times", r.mismatched)
	}
	if r.checked == 0 {
		t.Error("the reader checked nothing")
	}
}

// A crash at any step of a write leaves the previous complete set, or
// the new one once it is switched to; the next write completes and
// removes what the crash left.
func TestWriteX509FilesCrash(t *testing.T) {
	own, fed := newTestIssuer(t, "example.org"), newTestIssuer(t, "a.test")
	steps := []struct {
		step    string
		visible int // which set readers see after the crash: 0 the old, 1 the new
	}{
		{step: stepGenerationWritten, visible: 0},
		{step: stepPreviousLinked, visible: 0},
		{step: stepSwitched, visible: 1},
		{step: stepLinked, visible: 1},
	}
	for _, tc := range steps {
		t.Run(tc.step, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.CertDir = t.TempDir()
			old, next, last := own.svid(t, "/web"), own.svid(t, "/web"), own.svid(t, "/web")
			// The old set has a federated bundle, the new one not.
			if _, err := cfg.WriteX509Files(old, x509bundle.NewSet(own.bundle(), fed.bundle())); err != nil {
				t.Fatal(err)
			}
			want := make([][3][]byte, 2)
			c, k, b, err := readSet(&cfg)
			if err != nil {
				t.Fatal(err)
			}
			want[0] = [3][]byte{c, k, b}

			errCrash := errors.New("crash")
			cfg.fault = func(step string) error {
				if step == tc.step {
					return errCrash
				}
				return nil
			}
			if _, err := cfg.WriteX509Files(next, x509bundle.NewSet(own.bundle())); !errors.Is(err, errCrash) {
				t.Fatalf("write with a crash at %q: %v", tc.step, err)
			}
			cfg.fault = nil
			c, k, b, err = readSet(&cfg)
			if err != nil {
				t.Fatal(err)
			}
			got := [3][]byte{c, k, b}
			files, err := cfg.x509Files(next, x509bundle.NewSet(own.bundle()))
			if err != nil {
				t.Fatal(err)
			}
			want[1] = [3][]byte{files[2].data, files[1].data, files[0].data}
			if !slices.EqualFunc(got[:], want[tc.visible][:], slices.Equal) {
				t.Fatalf("after a crash at %q readers see a set that is not the %s one", tc.step, []string{"old", "new"}[tc.visible])
			}
			if _, err := tls.X509KeyPair(c, k); err != nil {
				t.Fatalf("after a crash at %q: %v", tc.step, err)
			}

			// The next write completes; only its generation and the
			// previous one stay.
			if _, err := cfg.WriteX509Files(last, x509bundle.NewSet(own.bundle())); err != nil {
				t.Fatal(err)
			}
			c, k, _, err = readSet(&cfg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tls.X509KeyPair(c, k); err != nil || !slices.Equal(c, (&Config{Format: PEM}).encodeCerts(last.Certificates)) {
				t.Fatalf("the write after the crash: %v", err)
			}
			checkLayout(t, &cfg, []string{cfg.SVIDFileName, cfg.SVIDKeyFileName, cfg.SVIDBundleFileName})
		})
	}
}

// checkLayout checks that dir holds the links names, the current and
// previous links and at most two generations, nothing else.
func checkLayout(t *testing.T, cfg *Config, names []string) {
	t.Helper()
	sn := cfg.setNames()
	gens := 0
	for _, n := range dirNames(t, cfg.CertDir) {
		switch {
		case sn.isGen(n):
			gens++
		case n == sn.current || n == sn.previous:
		case slices.Contains(names, n):
			if target, err := os.Readlink(filepath.Join(cfg.CertDir, n)); err != nil || target != sn.current+"/"+n {
				t.Errorf("%s links to %q, %v", n, target, err)
			}
		default:
			t.Errorf("%s left in the directory", n)
		}
	}
	if gens < 1 || gens > 2 {
		t.Errorf("%d generations in the directory, want 1 or 2", gens)
	}
	cur := filepath.Join(cfg.CertDir, sn.current)
	for _, want := range []struct {
		name string
		mode fs.FileMode
	}{{cfg.SVIDFileName, cfg.CertFileMode}, {cfg.SVIDKeyFileName, cfg.KeyFileMode}, {cfg.SVIDBundleFileName, cfg.CertFileMode}} {
		fi, err := os.Lstat(filepath.Join(cur, want.name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != want.mode {
			t.Errorf("%s: %v %v, want a regular file of mode %v", want.name, fi, err, want.mode)
		}
	}
}

// A current-set link someone else pointed at a directory of theirs, with
// the very content to write, is not taken for Writ's: the write makes a
// set of its own and leaves their directory alone.
func TestWriteX509FilesForeignGeneration(t *testing.T) {
	testuser.RequireRoot(t)
	uid, gid := testuser.Lookup(t)
	own := newTestIssuer(t, "example.org")
	cfg := DefaultConfig()
	cfg.CertDir = t.TempDir()
	svid := own.svid(t, "/web")
	files, err := cfg.x509Files(svid, x509bundle.NewSet(own.bundle()))
	if err != nil {
		t.Fatal(err)
	}
	sn := cfg.setNames()
	foreign := sn.genPrefix + "theirs"
	fdir := filepath.Join(cfg.CertDir, foreign)
	if err := os.Mkdir(fdir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(fdir, f.name), f.data, f.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(fdir, f.name), f.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(sn.current+"/"+f.name, filepath.Join(cfg.CertDir, f.name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(fdir, int(uid), int(gid)); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(foreign, filepath.Join(cfg.CertDir, sn.current)); err != nil {
		t.Fatal(err)
	}
	changed, err := cfg.WriteX509Files(svid, x509bundle.NewSet(own.bundle()))
	if err != nil || !changed {
		t.Fatalf("write: changed %v, %v; want a set of Writ's own", changed, err)
	}
	if cur, _ := os.Readlink(filepath.Join(cfg.CertDir, sn.current)); cur == foreign || !sn.isGen(cur) {
		t.Fatalf("the current set is %q", cur)
	}
	// Their directory stays (it is now the previous set) until it is no
	// longer kept, and is never removed: it is not Writ's.
	for range 3 {
		if _, err := cfg.WriteX509Files(own.svid(t, "/web"), x509bundle.NewSet(own.bundle())); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Lstat(fdir); err != nil {
		t.Errorf("their directory: %v", err)
	}
}

// In a shared sticky directory, another user who made the names of
// temporary links first (as files, as links of theirs) and a federated
// bundle file of a trust domain not in the context does not stop the
// write: temporary names are random, and their files are left alone,
// while a stale federated file of this uid is still removed.
func TestWriteX509FilesSharedStickyDir(t *testing.T) {
	testuser.RequireRoot(t)
	uid, gid := testuser.Lookup(t)
	own, fed := newTestIssuer(t, "example.org"), newTestIssuer(t, "a.test")
	cfg := DefaultConfig()
	cfg.CertDir = filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(cfg.CertDir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(cfg.CertDir, 0o777|fs.ModeSticky); err != nil {
		t.Fatal(err)
	}
	logged := &strings.Builder{}
	cfg.Log = slog.New(slog.NewTextHandler(logged, nil))
	// Ours, stale once a.test leaves the context.
	if _, err := cfg.WriteX509Files(own.svid(t, "/web"), x509bundle.NewSet(own.bundle(), fed.bundle())); err != nil {
		t.Fatal(err)
	}
	theirs := map[string]bool{}
	put := func(name string, link bool) {
		p := filepath.Join(cfg.CertDir, name)
		var err error
		if link {
			err = os.Symlink("/nowhere", p)
		} else {
			err = os.WriteFile(p, []byte("theirs"), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, int(uid), int(gid)); err != nil {
			t.Fatal(err)
		}
		theirs[name] = true
	}
	// The names temporary links had before they were random.
	for _, n := range []string{cfg.SVIDFileName, cfg.SVIDKeyFileName, cfg.SVIDBundleFileName, cfg.setNames().current, cfg.setNames().previous} {
		put(".writ-link."+n, n == cfg.SVIDKeyFileName)
	}
	put(FederatedBundleFileName("b.test", PEM), false)
	put(FederatedBundleFileName("c.test", PEM), true)

	for range 3 {
		svid := own.svid(t, "/web")
		changed, err := cfg.WriteX509Files(svid, x509bundle.NewSet(own.bundle()))
		if err != nil || !changed {
			t.Fatalf("write: changed %v, %v", changed, err)
		}
		c, k, _, err := readSet(&cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tls.X509KeyPair(c, k); err != nil || !slices.Equal(c, cfg.encodeCerts(svid.Certificates)) {
			t.Fatalf("the files are not the new SVID's: %v", err)
		}
	}
	names := dirNames(t, cfg.CertDir)
	if slices.Contains(names, FederatedBundleFileName("a.test", PEM)) {
		t.Error("the stale federated bundle file of this uid is still there")
	}
	for n := range theirs {
		fi, err := os.Lstat(filepath.Join(cfg.CertDir, n))
		if err != nil || fi.Sys().(*syscall.Stat_t).Uid != uid {
			t.Errorf("%s of the other user: %v %v", n, fi, err)
		}
	}
	if !strings.Contains(logged.String(), FederatedBundleFileName("b.test", PEM)) {
		t.Errorf("the federated bundle file left alone is not logged: %q", logged.String())
	}
}

// A certificate directory every user may write to is refused unless it
// is sticky.
func TestWriteX509FilesDirWritableByOthers(t *testing.T) {
	own := newTestIssuer(t, "example.org")
	for _, tc := range []struct {
		mode fs.FileMode
		ok   bool
	}{{0o777, false}, {0o757, false}, {0o777 | fs.ModeSticky, true}, {0o775, true}, {0o755, true}} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.CertDir = t.TempDir()
			if err := os.Chmod(cfg.CertDir, tc.mode); err != nil {
				t.Fatal(err)
			}
			_, err := cfg.WriteX509Files(own.svid(t, "/web"), x509bundle.NewSet(own.bundle()))
			if tc.ok && err != nil {
				t.Fatal(err)
			}
			if !tc.ok {
				if !errors.Is(err, ErrDirWritable) {
					t.Fatalf("write: %v, want ErrDirWritable", err)
				}
				if names := dirNames(t, cfg.CertDir); len(names) != 0 {
					t.Errorf("wrote %v", names)
				}
			}
		})
	}
}

// Two writers of other file names sharing one directory (two helpers,
// or `writ svid fetch --write` in a helper's directory): after each
// write of either, both sets are whole and current, federated bundle
// files included, and each keeps its own generations.
func TestWriteX509FilesTwoWritersOneDir(t *testing.T) {
	own, fedA, fedB := newTestIssuer(t, "example.org"), newTestIssuer(t, "a.test"), newTestIssuer(t, "b.test")
	dir := t.TempDir()
	a := DefaultConfig()
	a.CertDir = dir
	b := DefaultConfig()
	b.CertDir, b.SVIDFileName, b.SVIDKeyFileName, b.SVIDBundleFileName = dir, "b.pem", "b_key.pem", "b_bundle.pem"
	if a.setNames() == b.setNames() {
		t.Fatal("two configurations of other names share their set names")
	}
	type writer struct {
		cfg     *Config
		bundles *x509bundle.Set
		last    *x509svid.SVID
	}
	ws := []*writer{
		{cfg: &a, bundles: x509bundle.NewSet(own.bundle(), fedA.bundle())},
		{cfg: &b, bundles: x509bundle.NewSet(own.bundle(), fedB.bundle())},
	}
	for i := range 8 {
		w := ws[i%2]
		w.last = own.svid(t, "/web")
		if _, err := w.cfg.WriteX509Files(w.last, w.bundles); err != nil {
			t.Fatal(err)
		}
		for j, w := range ws {
			if w.last == nil {
				continue
			}
			c, k, _, err := readSet(w.cfg)
			if err != nil {
				t.Fatalf("write %d: writer %d's files: %v", i, j, err)
			}
			if _, err := tls.X509KeyPair(c, k); err != nil || !slices.Equal(c, w.cfg.encodeCerts(w.last.Certificates)) {
				t.Fatalf("write %d: writer %d's files are not its last SVID's: %v", i, j, err)
			}
		}
		names := dirNames(t, dir)
		for j, n := range []string{FederatedBundleFileName("a.test", PEM), FederatedBundleFileName("b.test", PEM)} {
			if ws[j].last != nil && !slices.Contains(names, n) {
				t.Fatalf("write %d: %s removed by the other writer", i, n)
			}
		}
	}
	for _, w := range ws {
		gens := 0
		for _, n := range dirNames(t, dir) {
			if w.cfg.setNames().isGen(n) {
				gens++
			}
		}
		if gens != 2 {
			t.Errorf("%d generations of %s's set, want 2", gens, w.cfg.SVIDFileName)
		}
	}
}
