package agent

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/x509ca"
	"writ.dev/writ/internal/datadir"
)

var testTD = spiffeid.RequireTrustDomainFromString("example.org")

// stateCA mints agent SVIDs for state tests.
type stateCA struct {
	iss    *x509ca.Issuer
	bundle *spiffebundle.Bundle
	now    time.Time
}

func newStateCA(t *testing.T) *stateCA {
	t.Helper()
	now := time.Now().Truncate(time.Second)
	key, err := x509ca.GenerateKey(keyType)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509ca.NewSelfSignedCA(now, testTD, key, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b := spiffebundle.New(testTD)
	b.AddX509Authority(cert)
	return &stateCA{iss: &x509ca.Issuer{Cert: cert, Signer: key}, bundle: b, now: now}
}

func (ca *stateCA) svid(t *testing.T) *agentSVID {
	t.Helper()
	key, err := x509ca.GenerateKey(keyType)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509ca.SignX509SVID(ca.now, ca.iss, x509ca.SVIDParams{
		ID: spiffeid.RequireFromPath(testTD, "/host/a"), TTL: time.Hour, PublicKey: key.Public(),
	})
	if err != nil {
		t.Fatal(err)
	}
	s, err := newAgentSVID(testTD, [][]byte{der}, key, ca.bundle, ca.now)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func openDir(t *testing.T, path string) *datadir.Dir {
	t.Helper()
	d, err := datadir.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// loadFresh loads the state as a restarted agent would: a new store on
// the directory as the crash left it.
func loadFresh(t *testing.T, path string, now time.Time) *savedState {
	t.Helper()
	d := openDir(t, path)
	st, err := newStateStore(d).load(testTD, now)
	d.Close()
	if err != nil {
		t.Fatalf("load after crash: %v", err)
	}
	return st
}

func sameSVID(a, b *agentSVID) bool {
	return a != nil && b != nil && string(a.chain[0]) == string(b.chain[0])
}

// checkPerms requires the state file 0600 and its directory 0700, and no
// temporary file left over.
func checkPerms(t *testing.T, dir string) {
	t.Helper()
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data dir: %v %v", fi.Mode(), err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), stateTempPrefix) {
			t.Fatalf("temporary file %s left over", e.Name())
		}
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().IsRegular() && fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s has mode %v", e.Name(), fi.Mode().Perm())
		}
	}
}

// crashAt returns a hook that stops a write after step k.
func crashAt(k writeStep) func(writeStep) error {
	return func(s writeStep) error {
		if s == k {
			return errCrashed
		}
		return nil
	}
}

// TestStateCrashAtEveryWriteStep stops the writer after each of its
// steps, as a crash would, then loads the directory afresh: the agent
// always finds a complete identity, the old one if the crash came before
// the rename and the new one after.
func TestStateCrashAtEveryWriteStep(t *testing.T) {
	ca := newStateCA(t)
	for _, tc := range []struct {
		name string
		// hadOld: an identity was saved before (renewal); otherwise this
		// is the first attestation.
		hadOld bool
	}{
		{name: "renewal", hadOld: true},
		{name: "attestation", hadOld: false},
	} {
		for k := writeStep(0); k <= numWriteSteps; k++ {
			t.Run(tc.name+"/step"+string(rune('0'+k)), func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "d")
				d := openDir(t, path)
				st := newStateStore(d)
				var old *agentSVID
				if tc.hadOld {
					old = ca.svid(t)
					if err := st.save(old, ca.bundle); err != nil {
						t.Fatal(err)
					}
				}
				renewed := ca.svid(t)
				st.afterStep = crashAt(k)
				err := st.save(renewed, ca.bundle)
				if k < numWriteSteps && !errors.Is(err, errCrashed) {
					t.Fatalf("save = %v, want the crash", err)
				}
				if k == numWriteSteps && err != nil {
					t.Fatal(err)
				}
				d.Close()

				got := loadFresh(t, path, ca.now)
				if got.svidErr != nil {
					t.Fatalf("saved SVID not usable: %v", got.svidErr)
				}
				want := old
				if k >= stepRename {
					want = renewed
				}
				switch {
				case want == nil && got.svid != nil:
					t.Fatal("an SVID was loaded before one was saved")
				case want != nil && !sameSVID(got.svid, want):
					t.Fatalf("after a crash at step %d: loaded %v, want the %s SVID", k, got.svid != nil, map[bool]string{true: "new", false: "old"}[k >= stepRename])
				}
				checkPerms(t, path)
			})
		}
	}
}

// writeLegacy writes the layout of earlier versions: key, chain and
// bundle in three files.
func writeLegacy(t *testing.T, dir string, s *agentSVID, b *spiffebundle.Bundle) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(s.key)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		legacyKeyFile:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		legacySVIDFile:   encodeCerts(s.chain),
		legacyBundleFile: raw,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStateMigratesLegacyLayout: an agent upgraded from the three-file
// layout keeps its identity without attesting again, its files are
// moved into StateFile, and a crash at any step of the move loses
// nothing.
func TestStateMigratesLegacyLayout(t *testing.T) {
	ca := newStateCA(t)
	for k := writeStep(0); k <= numWriteSteps; k++ {
		t.Run("crash_after_step"+string(rune('0'+k)), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "d")
			d := openDir(t, path)
			s := ca.svid(t)
			writeLegacy(t, path, s, ca.bundle)
			st := newStateStore(d)
			st.afterStep = crashAt(k)
			got, err := st.load(testTD, ca.now)
			d.Close()
			if k < numWriteSteps {
				if !errors.Is(err, errCrashed) {
					t.Fatalf("load = %v, want the crash", err)
				}
			} else if err != nil || !sameSVID(got.svid, s) {
				t.Fatalf("load: %v; same SVID %v", err, err == nil && sameSVID(got.svid, s))
			}

			// The restarted agent has its identity, and after that load
			// only StateFile remains.
			again := loadFresh(t, path, ca.now)
			if !sameSVID(again.svid, s) || again.bundle == nil || !again.bundle.Equal(ca.bundle) {
				t.Fatalf("after a crash at step %d the identity is lost: %v", k, again.svidErr)
			}
			for _, name := range []string{legacyKeyFile, legacySVIDFile, legacyBundleFile} {
				if _, err := os.Stat(filepath.Join(path, name)); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("%s still there: %v", name, err)
				}
			}
			if _, err := os.Stat(filepath.Join(path, StateFile)); err != nil {
				t.Fatal(err)
			}
			checkPerms(t, path)
		})
	}
}

// TestStateBundleUpdateKeepsIdentity: saving a new bundle keeps the
// saved key and SVID, and saving a renewed SVID keeps the bundle.
func TestStateBundleUpdateKeepsIdentity(t *testing.T) {
	ca := newStateCA(t)
	path := filepath.Join(t.TempDir(), "d")
	d := openDir(t, path)
	st := newStateStore(d)
	s := ca.svid(t)
	if err := st.save(s, ca.bundle); err != nil {
		t.Fatal(err)
	}
	b2 := ca.bundle.Clone()
	b2.SetSequenceNumber(7)
	if err := st.saveBundle(b2); err != nil {
		t.Fatal(err)
	}
	s2 := ca.svid(t)
	if err := st.saveSVID(s2); err != nil {
		t.Fatal(err)
	}
	d.Close()
	got := loadFresh(t, path, ca.now)
	if !sameSVID(got.svid, s2) || !got.bundle.Equal(b2) {
		t.Fatalf("loaded SVID current %v, bundle current %v", sameSVID(got.svid, s2), got.bundle.Equal(b2))
	}
}
