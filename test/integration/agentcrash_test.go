//go:build linux

package integration_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// killOnDirEvent SIGKILLs p the moment a file in dir is created (the
// first step of writing one) or renamed into place (the last), as chosen
// by mask (syscall.IN_CREATE or syscall.IN_MOVED_TO). It returns a
// channel closed once p was killed for that reason.
func killOnDirEvent(t *testing.T, p *agentProc, dir string, mask uint32) <-chan string {
	t.Helper()
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := syscall.InotifyAddWatch(fd, dir, mask); err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "inotify")
	killed := make(chan string, 1)
	go func() {
		defer f.Close()
		buf := make([]byte, 4096)
		for {
			n, err := f.Read(buf)
			if err != nil {
				return
			}
			for off := 0; off+syscall.SizeofInotifyEvent <= n; {
				ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := strings.TrimRight(string(buf[off+syscall.SizeofInotifyEvent:off+syscall.SizeofInotifyEvent+int(ev.Len)]), "\x00")
				off += syscall.SizeofInotifyEvent + int(ev.Len)
				if ev.Mask&mask != 0 && !strings.HasSuffix(name, ".sock") {
					p.cmd.Process.Kill()
					killed <- name
					return
				}
			}
		}
	}()
	t.Cleanup(func() { f.Close() })
	return killed
}

// TestIntegrationAgentKilledDuringRenewal kills a real agent with SIGKILL
// while it writes its renewed agent SVID to disk (at the first file
// created, or at the first file renamed into place), then restarts it
// without a join token: it must come back with its identity each time.
func TestIntegrationAgentKilledDuringRenewal(t *testing.T) {
	e := newNodeEnv(t, "--default-x509-svid-ttl", "6s")
	const id = "spiffe://example.org/writ/agent/crash"
	dataDir := filepath.Join(e.dir, "a")
	p := startAgent(t, e.addr, dataDir, e.bundle, e.token(id))
	for i, mask := range []uint32{syscall.IN_MOVED_TO, syscall.IN_CREATE, syscall.IN_MOVED_TO, syscall.IN_CREATE} {
		killed := killOnDirEvent(t, p, dataDir, mask)
		var name string
		select {
		case name = <-killed:
		case <-p.done:
			t.Fatalf("round %d: agent exited before renewing: %v\n%s", i, p.err, tail(p.log.String(), 40))
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: agent wrote nothing within 30s (no renewal)\n%s", i, tail(p.log.String(), 40))
		}
		<-p.done
		t.Logf("round %d: killed at %s of %s", i, map[uint32]string{syscall.IN_MOVED_TO: "rename", syscall.IN_CREATE: "creation"}[mask], name)

		p = startAgent(t, e.addr, dataDir, e.bundle, "")
		if strings.Contains(p.log.String(), "agent attested") {
			t.Fatalf("round %d: the restarted agent attested again", i)
		}
		if got := e.agentIDs(); len(got) != 1 || got[0] != id {
			t.Fatalf("round %d: agent list %v", i, got)
		}
		for name, want := range map[string]os.FileMode{"agent_state.json": 0o600, "": 0o700} {
			fi, err := os.Stat(filepath.Join(dataDir, name))
			if err != nil || fi.Mode().Perm() != want {
				t.Fatalf("round %d: %s/%s: %v %v", i, dataDir, name, fi.Mode(), err)
			}
		}
	}
	p.stop()
}
