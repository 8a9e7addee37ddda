//go:build linux

package unixattest_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"writ.dev/writ/ca/clock/fakeclock"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/peercred"
	"writ.dev/writ/workloadapi/unixattest"
)

func selfGroups(t testing.TB) []uint32 {
	t.Helper()
	gs, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	var out []uint32
	for _, g := range gs {
		out = append(out, uint32(g))
	}
	return out
}

// settled is a clock an hour ahead, so that binaries copied or built just
// now count as unchanged long enough for their hashes to be cached.
func settled() *fakeclock.Clock { return fakeclock.New(time.Now().Add(time.Hour)) }

func TestSelf(t *testing.T) {
	a := unixattest.New(unixattest.Config{Logger: testLogger(t)})
	p, err := a.Pin(selfCred())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Cred() != selfCred() {
		t.Errorf("Cred() = %+v, want %+v", p.Cred(), selfCred())
	}
	cred := selfCred()
	checkSelectors(t, p, wantSelectors(t, cred.UID, cred.GID, selfGroups(t), resolved(t, selfExe(t))))
	if err := p.Check(); err != nil {
		t.Errorf("Check: %v", err)
	}
}

func TestChild(t *testing.T) {
	for _, pn := range pinners {
		t.Run(pn.name, func(t *testing.T) {
			c := startChild(t, publicBin(t), nil)
			if want := (peercred.Cred{PID: int32(c.cmd.Process.Pid), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}); c.cred != want {
				t.Fatalf("peer cred %+v, want %+v", c.cred, want)
			}
			a := pn.new(unixattest.Config{Logger: testLogger(t)})
			p := mustPin(t, pn, a, c)
			want := wantSelectors(t, c.cred.UID, c.cred.GID, selfGroups(t), resolved(t, c.path))
			checkSelectors(t, p, want)
			checkSelectors(t, p, want) // remembered

			c.exit(t)
			// A zombie: exited, not yet reaped.
			eventuallyChanged(t, p)
			if _, err := p.Selectors(context.Background()); !errors.Is(err, unixattest.ErrProcessChanged) {
				t.Errorf("Selectors of an exited process = %v, want ErrProcessChanged", err)
			}
			c.wait(t)
			if err := p.Check(); !errors.Is(err, unixattest.ErrProcessChanged) {
				t.Errorf("Check of a reaped process = %v, want ErrProcessChanged", err)
			}
			if _, err := pn.pin(a, c); !errors.Is(err, unixattest.ErrProcessChanged) {
				t.Errorf("pinning a reaped process = %v, want ErrProcessChanged", err)
			}
		})
	}
}

// TestExec: a process that connects, then executes another program that
// inherits the connection, is no longer attested.
func TestExec(t *testing.T) {
	for _, pn := range pinners {
		t.Run(pn.name, func(t *testing.T) {
			for _, before := range []bool{false, true} {
				t.Run(fmt.Sprintf("selectors before exec %v", before), func(t *testing.T) {
					c := startChild(t, selfExe(t), nil, envExec+"="+publicBin(t))
					a := pn.new(unixattest.Config{Logger: testLogger(t)})
					p := mustPin(t, pn, a, c)
					if before {
						if _, err := p.Selectors(context.Background()); err != nil {
							t.Fatal(err)
						}
					}
					c.do(t, 'e', 'i')
					if err := p.Check(); !errors.Is(err, unixattest.ErrProcessChanged) {
						t.Errorf("Check after exec = %v, want ErrProcessChanged", err)
					}
					if sel, err := p.Selectors(context.Background()); !errors.Is(err, unixattest.ErrProcessChanged) || sel != nil {
						t.Errorf("Selectors after exec = %v, %v; want ErrProcessChanged", sel, err)
					}
					// The new program, pinned afresh, is attested as itself.
					c.do(t, 'p', 'p')
					p2 := mustPin(t, pn, a, c)
					checkSelectors(t, p2, wantSelectors(t, c.cred.UID, c.cred.GID, selfGroups(t), resolved(t, publicBin(t))))
				})
			}
		})
	}
}

// TestOtherUser attests a child running as another user, with a
// supplementary group that has no name.
func TestOtherUser(t *testing.T) {
	uid, gid := testUser(t)
	nameless := uint32(3_999_999_999)
	if _, err := user.LookupGroupId(fmt.Sprint(nameless)); err == nil {
		t.Fatalf("group %d exists", nameless)
	}
	for _, pn := range pinners {
		t.Run(pn.name, func(t *testing.T) {
			c := startChild(t, publicBin(t), &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{gid, nameless}})
			if c.cred.UID != uid || c.cred.GID != gid {
				t.Fatalf("peer cred %+v, want uid %d gid %d", c.cred, uid, gid)
			}
			a := pn.new(unixattest.Config{Logger: testLogger(t)})
			p := mustPin(t, pn, a, c)
			want := wantSelectors(t, uid, gid, []uint32{gid, nameless}, resolved(t, c.path))
			checkSelectors(t, p, want)
			for _, s := range []string{"unix:user:writ-test", fmt.Sprint("unix:supplementary_gid:", nameless)} {
				if !entry.Match([]entry.Selector{mustSelector(t, s)}, want) {
					t.Errorf("selectors lack %s", s)
				}
			}
			// A process of another uid cannot claim this one's PID.
			wrong := c.cred
			wrong.UID = uint32(os.Geteuid())
			if _, err := a.Pin(wrong); !errors.Is(err, unixattest.ErrProcessChanged) {
				t.Errorf("Pin with uid %d of a uid %d process = %v, want ErrProcessChanged", wrong.UID, uid, err)
			}
		})
	}
}

// TestSetuid: a process that connects as root, then switches to another
// uid, is no longer attested.
func TestSetuid(t *testing.T) {
	uid, gid := testUser(t)
	for _, pn := range pinners {
		t.Run(pn.name, func(t *testing.T) {
			c := startChild(t, selfExe(t), nil, fmt.Sprint(envUID, "=", uid), fmt.Sprint(envGID, "=", gid))
			a := pn.new(unixattest.Config{Logger: testLogger(t)})
			p := mustPin(t, pn, a, c)
			if _, err := p.Selectors(context.Background()); err != nil {
				t.Fatal(err)
			}
			c.do(t, 'u', 'u')
			if err := p.Check(); !errors.Is(err, unixattest.ErrProcessChanged) {
				t.Errorf("Check after setresuid = %v, want ErrProcessChanged", err)
			}
			if _, err := p.Selectors(context.Background()); !errors.Is(err, unixattest.ErrProcessChanged) {
				t.Errorf("Selectors after setresuid = %v, want ErrProcessChanged", err)
			}
			// Pinning again with the credentials of the connection fails
			// too: the process no longer has them.
			if _, err := pn.pin(a, c); !errors.Is(err, unixattest.ErrProcessChanged) {
				t.Errorf("pinning after setresuid = %v, want ErrProcessChanged", err)
			}
		})
	}
}

// TestReplacedExecutable: changing the file system under a running
// process never makes it attest as the new file.
func TestReplacedExecutable(t *testing.T) {
	other := filepath.Join(publicTempDir(t), "other")
	if err := os.WriteFile(other, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		// replace changes the file system under the child running bin,
		// and returns the path the running executable now has, or "" if it
		// has none.
		replace func(t *testing.T, bin string) string
	}{
		{name: "renamed over", replace: func(t *testing.T, bin string) string {
			tmp := bin + ".new"
			if err := copyFile(other, tmp); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, bin); err != nil {
				t.Fatal(err)
			}
			return ""
		}},
		{name: "removed", replace: func(t *testing.T, bin string) string {
			if err := os.Remove(bin); err != nil {
				t.Fatal(err)
			}
			return ""
		}},
		{name: "directory renamed, path reused", replace: func(t *testing.T, bin string) string {
			dir := filepath.Dir(bin)
			if err := os.Rename(dir, dir+".old"); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := copyFile(other, bin); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir + ".old") })
			return filepath.Join(dir+".old", filepath.Base(bin))
		}},
		{name: "written in place", replace: func(t *testing.T, bin string) string {
			// The kernel refuses to write a running executable.
			err := os.WriteFile(bin, []byte("changed"), 0o755)
			if !errors.Is(err, syscall.ETXTBSY) {
				t.Fatalf("writing a running executable: %v, want ETXTBSY", err)
			}
			return bin
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, before := range []bool{false, true} {
				t.Run(fmt.Sprintf("selectors before %v", before), func(t *testing.T) {
					bin := resolved(t, copyBin(t, "dir/bin"))
					orig := wantSelectors(t, uint32(os.Geteuid()), uint32(os.Getegid()), selfGroups(t), bin)
					c := startChild(t, bin, nil)
					a := unixattest.New(unixattest.Config{Logger: testLogger(t)})
					p, err := a.PinConn(c.conn)
					if err != nil {
						t.Fatal(err)
					}
					defer p.Close()
					if before {
						checkSelectors(t, p, orig)
					}
					now := tt.replace(t, bin)
					if before {
						// Remembered, and the process still runs that inode.
						checkSelectors(t, p, orig)
					}
					p2, err := a.PinConn(c.conn)
					if err != nil {
						t.Fatal(err)
					}
					defer p2.Close()
					sel, err := p2.Selectors(context.Background())
					if now == "" {
						if !errors.Is(err, unixattest.ErrExecutableReplaced) || sel != nil {
							t.Fatalf("Selectors = %v, %v; want ErrExecutableReplaced", sel, err)
						}
						return
					}
					if err != nil {
						t.Fatal(err)
					}
					want := slices.Clone(orig)
					for i, s := range want {
						if strings.HasPrefix(s.Value, "path:") {
							want[i].Value = "path:" + now
						}
					}
					slices.SortFunc(want, entry.Selector.Compare)
					if !slices.Equal(sel, want) {
						t.Errorf("Selectors =\n  %v\nwant\n  %v", sel, want)
					}
				})
			}
		})
	}
}

func TestExecutableTooLarge(t *testing.T) {
	a := unixattest.New(unixattest.Config{MaxHashSize: 4096, Logger: testLogger(t)})
	p, err := a.Pin(selfCred())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for range 2 {
		sel, err := p.Selectors(context.Background())
		if !errors.Is(err, unixattest.ErrExecutableTooLarge) || sel != nil {
			t.Fatalf("Selectors = %v, %v; want ErrExecutableTooLarge and no selectors", sel, err)
		}
	}
	if n := unixattest.HashCount(a); n != 0 {
		t.Errorf("hashed %d executables, want 0", n)
	}
}

func TestPinRefuses(t *testing.T) {
	self := selfCred()
	tests := []struct {
		name string
		cred peercred.Cred
		want error
	}{
		{name: "pid 0", cred: peercred.Cred{PID: 0, UID: self.UID, GID: self.GID}, want: unixattest.ErrNoPID},
		{name: "negative pid", cred: peercred.Cred{PID: -1, UID: self.UID, GID: self.GID}, want: unixattest.ErrNoPID},
		{name: "other uid", cred: peercred.Cred{PID: self.PID, UID: self.UID + 1, GID: self.GID}, want: unixattest.ErrProcessChanged},
		{name: "other gid", cred: peercred.Cred{PID: self.PID, UID: self.UID, GID: self.GID + 1}, want: unixattest.ErrProcessChanged},
		{name: "no such process", cred: peercred.Cred{PID: 1<<22 + 1, UID: self.UID, GID: self.GID}, want: unixattest.ErrProcessChanged},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, a := range []*unixattest.Attestor{unixattest.New(unixattest.Config{}), unixattest.NewWithoutPidfd(unixattest.Config{})} {
				p, err := a.Pin(tt.cred)
				if !errors.Is(err, tt.want) || p != nil {
					t.Errorf("Pin(%+v) = %v, %v; want %v", tt.cred, p, err, tt.want)
				}
			}
		})
	}
}

// TestPinConnReapedPeer: a connection whose peer has exited and been
// reaped cannot be pinned.
func TestPinConnReapedPeer(t *testing.T) {
	for _, pn := range pinners {
		t.Run(pn.name, func(t *testing.T) {
			c := startChild(t, publicBin(t), nil)
			c.exit(t)
			c.wait(t)
			a := pn.new(unixattest.Config{Logger: testLogger(t)})
			if p, err := pn.pin(a, c); !errors.Is(err, unixattest.ErrProcessChanged) {
				t.Errorf("pinning a reaped peer = %v, %v; want ErrProcessChanged", p, err)
			}
		})
	}
}

func TestPinConnSelf(t *testing.T) {
	dir := publicTempDir(t)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.DialUnix("unix", nil, l.Addr().(*net.UnixAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a := unixattest.New(unixattest.Config{Logger: testLogger(t)})
	p, err := a.PinConn(s)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Cred() != selfCred() {
		t.Errorf("Cred() = %+v, want %+v", p.Cred(), selfCred())
	}
	if err := p.Check(); err != nil {
		t.Error(err)
	}
}

func TestClose(t *testing.T) {
	a := unixattest.New(unixattest.Config{})
	p, err := a.Pin(selfCred())
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := p.Check(); !errors.Is(err, unixattest.ErrClosed) {
		t.Errorf("Check after Close = %v, want ErrClosed", err)
	}
	if _, err := p.Selectors(context.Background()); !errors.Is(err, unixattest.ErrClosed) {
		t.Errorf("Selectors after Close = %v, want ErrClosed", err)
	}
}

func TestSelectorsContext(t *testing.T) {
	a := unixattest.New(unixattest.Config{})
	p, err := a.Pin(selfCred())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Selectors(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Selectors(canceled) = %v, want context.Canceled", err)
	}
	// Not remembered.
	if _, err := p.Selectors(context.Background()); err != nil {
		t.Fatalf("Selectors after a canceled call: %v", err)
	}
}

func TestHashCache(t *testing.T) {
	bin := publicBin(t)
	tests := []struct {
		name string
		cfg  unixattest.Config
		// order: which executable each attestation runs (0 self, 1 bin).
		order      []int
		wantHashes int64
	}{
		{name: "hashed once", cfg: unixattest.Config{Clock: settled()}, order: []int{0, 0, 1, 1, 0, 1}, wantHashes: 2},
		{name: "recently changed, not cached", cfg: unixattest.Config{}, order: []int{1, 1}, wantHashes: 2},
		{name: "evicted", cfg: unixattest.Config{Clock: settled(), HashCacheSize: 1}, order: []int{0, 0, 1, 0, 1}, wantHashes: 4},
		{name: "no cache", cfg: unixattest.Config{Clock: settled(), HashCacheSize: -1}, order: []int{0, 0}, wantHashes: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bin := bin
			if tt.name == "recently changed, not cached" {
				bin = copyBin(t, "fresh") // ctime: now
			}
			c := startChild(t, bin, nil)
			a := unixattest.New(tt.cfg)
			for _, which := range tt.order {
				cred := selfCred()
				if which == 1 {
					cred = c.cred
				}
				p, err := a.Pin(cred)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := p.Selectors(context.Background()); err != nil {
					t.Fatal(err)
				}
				p.Close()
				unixattest.ForgetIdentities(a) // count hashes, not shared selectors
			}
			if n := unixattest.HashCount(a); n != tt.wantHashes {
				t.Errorf("hashed %d times, want %d", n, tt.wantHashes)
			}
		})
	}
}

// TestConcurrent attests one binary from many connections at once: it is
// hashed once, and Check, Selectors and Close race cleanly.
func TestConcurrent(t *testing.T) {
	a := unixattest.New(unixattest.Config{Clock: settled(), Logger: testLogger(t)})
	want := wantSelectors(t, selfCred().UID, selfCred().GID, selfGroups(t), resolved(t, selfExe(t)))
	var wg sync.WaitGroup
	for range 8 {
		p, err := a.Pin(selfCred())
		if err != nil {
			t.Fatal(err)
		}
		for i := range 4 {
			wg.Go(func() {
				for range 20 {
					sel, err := p.Selectors(context.Background())
					switch {
					case errors.Is(err, unixattest.ErrClosed):
					case err != nil:
						t.Errorf("Selectors: %v", err)
					case !slices.Equal(sel, want):
						t.Errorf("Selectors = %v, want %v", sel, want)
					}
					if err := p.Check(); err != nil && !errors.Is(err, unixattest.ErrClosed) {
						t.Errorf("Check: %v", err)
					}
				}
				if i == 3 {
					p.Close()
				}
			})
		}
	}
	wg.Wait()
	if n := unixattest.HashCount(a); n != 1 {
		t.Errorf("hashed %d times, want 1", n)
	}
}

// TestProcFiles feeds Pin and Selectors unexpected procfs content through
// Config.ProcRoot: every anomaly fails the attestation.
func TestProcFiles(t *testing.T) {
	self := selfCred()
	goodStat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	goodStatus, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	status := func(uid uint32, groups string) string {
		return fmt.Sprintf("Name:\tx\nUid:\t%d\t%d\t%d\t%d\nGid:\t%d\t%d\t%d\t%d\nGroups:\t%s\n",
			uid, uid, uid, uid, self.GID, self.GID, self.GID, self.GID, groups)
	}
	tests := []struct {
		name      string
		stat      string
		status    string
		exe       string // see fakeProc
		wantPin   error  // nil: Pin must succeed
		wantSel   error  // nil: Selectors must fail with any error
		selectsOK bool
	}{
		{name: "real files", stat: string(goodStat), status: string(goodStatus), selectsOK: true},
		{name: "stat of another pid", stat: strings.Replace(string(goodStat), fmt.Sprint(self.PID), "1", 1), status: string(goodStatus), wantPin: errors.New("any")},
		{name: "zombie", stat: fmt.Sprintf("%d (x) Z%s", self.PID, strings.Repeat(" 0", 50)), status: string(goodStatus), wantPin: unixattest.ErrProcessChanged},
		{name: "garbage stat", stat: "garbage", status: string(goodStatus), wantPin: errors.New("any")},
		{name: "status of another uid", stat: string(goodStat), status: status(self.UID+1, ""), wantSel: unixattest.ErrProcessChanged},
		{name: "status without groups", stat: string(goodStat), status: "Uid:\t0\t0\t0\t0\n"},
		{name: "status with a bad group", stat: string(goodStat), status: status(self.UID, "1 two")},
		{name: "status with two Uid lines", stat: string(goodStat), status: status(self.UID, "") + "Uid:\t1\t1\t1\t1\n"},
		{name: "status too large", stat: string(goodStat), status: status(self.UID, "") + strings.Repeat("x", 1<<20)},
		{name: "executable named as deleted", stat: string(goodStat), status: string(goodStatus), exe: "bin (deleted)", wantSel: unixattest.ErrExecutableReplaced},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, _ := fakeProc(t, tt.stat, tt.status, tt.exe)
			a := unixattest.New(unixattest.Config{ProcRoot: root, Logger: testLogger(t)})
			p, err := a.Pin(self)
			if tt.wantPin != nil {
				if err == nil {
					p.Close()
					t.Fatal("Pin succeeded")
				}
				if errors.Is(tt.wantPin, unixattest.ErrProcessChanged) && !errors.Is(err, tt.wantPin) {
					t.Fatalf("Pin = %v, want %v", err, tt.wantPin)
				}
				t.Logf("Pin: %v", err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			sel, err := p.Selectors(context.Background())
			if tt.selectsOK {
				if err != nil || len(sel) == 0 {
					t.Fatalf("Selectors = %v, %v", sel, err)
				}
				return
			}
			if err == nil || sel != nil {
				t.Fatalf("Selectors = %v, %v; want an error", sel, err)
			}
			if tt.wantSel != nil && !errors.Is(err, tt.wantSel) {
				t.Fatalf("Selectors = %v, want %v", err, tt.wantSel)
			}
			t.Logf("Selectors: %v", err)
		})
	}
}

func mustSelector(t testing.TB, s string) entry.Selector {
	t.Helper()
	sel, err := entry.ParseSelector(s)
	if err != nil {
		t.Fatal(err)
	}
	return sel
}

// fakeProc makes a procfs for this process in a new directory: stat and
// status have the given content, exe links to the test binary or, if exe
// is not empty, to a copy of it named exe, and self links to /proc/self.
// It returns the directory and the process's directory within it.
func fakeProc(t *testing.T, stat, status, exe string) (root, dir string) {
	t.Helper()
	root = t.TempDir()
	dir = filepath.Join(root, fmt.Sprint(os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/proc/self", filepath.Join(root, "self")); err != nil {
		t.Fatal(err)
	}
	target := selfExe(t)
	if exe != "" {
		target = filepath.Join(root, exe)
		if err := copyFile(selfExe(t), target); err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range map[string]string{"stat": stat, "status": status} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(target, filepath.Join(dir, "exe")); err != nil {
		t.Fatal(err)
	}
	return root, dir
}

// TestSelectorsRemembered: failures that cannot go away are remembered by
// the Process; others are retried by the next call.
func TestSelectorsRemembered(t *testing.T) {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	t.Run("transient", func(t *testing.T) {
		root, dir := fakeProc(t, string(stat), "garbage", "")
		p, err := unixattest.New(unixattest.Config{ProcRoot: root}).Pin(selfCred())
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if _, err := p.Selectors(ctx); err == nil {
			t.Fatal("Selectors succeeded with a garbled status")
		}
		if err := os.WriteFile(filepath.Join(dir, "status"), status, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Selectors(ctx); err != nil {
			t.Fatalf("Selectors after the status was repaired: %v", err)
		}
	})

	t.Run("permanent", func(t *testing.T) {
		root, dir := fakeProc(t, string(stat), string(status), "bin (deleted)")
		a := unixattest.New(unixattest.Config{ProcRoot: root})
		p, err := a.Pin(selfCred())
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if _, err := p.Selectors(ctx); !errors.Is(err, unixattest.ErrExecutableReplaced) {
			t.Fatalf("Selectors = %v, want ErrExecutableReplaced", err)
		}
		// Give the same inode an innocent name.
		bin := filepath.Join(root, "bin")
		if err := os.Rename(bin+" (deleted)", bin); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(dir, "exe")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(bin, filepath.Join(dir, "exe")); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Selectors(ctx); !errors.Is(err, unixattest.ErrExecutableReplaced) {
			t.Fatalf("second Selectors = %v, want ErrExecutableReplaced remembered", err)
		}
		p2, err := a.Pin(selfCred())
		if err != nil {
			t.Fatal(err)
		}
		defer p2.Close()
		if _, err := p2.Selectors(ctx); err != nil {
			t.Fatalf("Selectors of a new Process: %v", err)
		}
	})
}
