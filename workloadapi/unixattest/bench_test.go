//go:build linux

package unixattest_test

import (
	"context"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"writ.dev/writ/internal/peercred"
	"writ.dev/writ/workloadapi/unixattest"
)

// sleeper starts sleep(1), an executable installed long ago, as the
// process to attest.
func sleeper(b *testing.B) peercred.Cred {
	path, err := exec.LookPath("sleep")
	if err != nil {
		b.Skip("no sleep(1):", err)
	}
	cmd := exec.Command(path, "3600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return peercred.Cred{PID: int32(cmd.Process.Pid), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
}

var benchAttestors = []struct {
	name string
	new  func(unixattest.Config) *unixattest.Attestor
}{
	{"pidfd", unixattest.New},
	{"no pidfd", unixattest.NewWithoutPidfd},
}

// BenchmarkCheck is the cost added to every Workload API call.
func BenchmarkCheck(b *testing.B) {
	cred := sleeper(b)
	for _, ba := range benchAttestors {
		b.Run(ba.name, func(b *testing.B) {
			p, err := ba.new(unixattest.Config{}).Pin(cred)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			b.ReportAllocs()
			for b.Loop() {
				if err := p.Check(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPinAndSelectors is the cost of attesting a new connection from
// a binary whose hash is cached (and whose user and group names are).
func BenchmarkPinAndSelectors(b *testing.B) {
	cred := sleeper(b)
	for _, ba := range benchAttestors {
		b.Run(ba.name, func(b *testing.B) {
			a := ba.new(unixattest.Config{})
			attest := func() {
				p, err := a.Pin(cred)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := p.Selectors(context.Background()); err != nil {
					b.Fatal(err)
				}
				p.Close()
			}
			attest() // warm the caches
			b.ReportAllocs()
			for b.Loop() {
				attest()
			}
			if n := unixattest.HashCount(a); n != 1 {
				b.Errorf("hashed %d times, want 1", n)
			}
		})
	}
}
