package nodump

import (
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
)

const envChild = "WRIT_NODUMP_CHILD"

// TestDisable runs Disable in a child process, so that this one keeps
// its limits, and checks its effect there.
func TestDisable(t *testing.T) {
	if os.Getenv(envChild) == "1" {
		if err := Disable(); err != nil {
			t.Fatal(err)
		}
		var lim syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_CORE, &lim); err != nil {
			t.Fatal(err)
		}
		if lim.Cur != 0 || lim.Max != 0 {
			t.Errorf("core limit %d/%d after Disable, want 0/0", lim.Cur, lim.Max)
		}
		if runtime.GOOS == "linux" {
			if d, err := dumpable(); err != nil || d {
				t.Errorf("dumpable %v (%v) after Disable, want false", d, err)
			}
			// The process still reads its own /proc entries.
			if _, err := os.ReadFile("/proc/self/status"); err != nil {
				t.Errorf("read own status: %v", err)
			}
		}
		return
	}
	if runtime.GOOS == "linux" {
		if d, err := dumpable(); err != nil || !d {
			t.Fatalf("this process is not dumpable to begin with (%v, %v): the check would prove nothing", d, err)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestDisable$", "-test.v")
	cmd.Env = append(os.Environ(), envChild+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
