package datadir_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"writ.dev/writ/internal/datadir"
)

func TestOpenCreatesPrivateDirWhateverTheUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "a", "data")
	d, err := datadir.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Fatalf("mode %04o, want 0700", fi.Mode().Perm())
	}
	if err := datadir.WriteFile(d.Join("k"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(d.Join("k")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %04o, want 0600", fi.Mode().Perm())
	}
}

func TestOpenRefusesLoosePermissions(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := datadir.Open(dir)
	if !errors.Is(err, datadir.ErrPermissions) {
		t.Fatalf("Open on 0755 dir: %v, want ErrPermissions", err)
	}
	if !strings.Contains(err.Error(), "chmod 700") {
		t.Errorf("message does not say how to fix: %v", err)
	}
}

func TestOpenRefusesSymlinkedDir(t *testing.T) {
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := datadir.Open(link); !errors.Is(err, datadir.ErrPermissions) {
		t.Fatalf("Open(symlink) = %v, want ErrPermissions", err)
	}
}

func TestCheckFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := datadir.CheckFile(p); !errors.Is(err, datadir.ErrPermissions) {
		t.Fatalf("0644 file: %v", err)
	}
	if _, err := datadir.ReadFile(p); !errors.Is(err, datadir.ErrPermissions) {
		t.Fatalf("ReadFile on 0644 file: %v", err)
	}
	os.Chmod(p, 0o600)
	if err := datadir.CheckFile(p); err != nil {
		t.Fatal(err)
	}
	l := filepath.Join(dir, "l")
	os.Symlink(p, l)
	if err := datadir.CheckFile(l); !errors.Is(err, datadir.ErrPermissions) {
		t.Fatalf("symlink: %v", err)
	}
}

// TestSecondOpenerFailsFast locks the directory in a child process and
// checks that this process is refused at once, with the holder's pid.
func TestSecondOpenerFailsFast(t *testing.T) {
	if dir := os.Getenv("DATADIR_HOLD"); dir != "" {
		d, err := datadir.Open(dir)
		if err != nil {
			os.Exit(3)
		}
		defer d.Close()
		os.Stdout.WriteString("locked\n")
		buf := make([]byte, 1)
		os.Stdin.Read(buf) // hold until the parent closes stdin
		return
	}
	dir := filepath.Join(t.TempDir(), "d")
	cmd := exec.Command(os.Args[0], "-test.run=^TestSecondOpenerFailsFast$")
	cmd.Env = append(os.Environ(), "DATADIR_HOLD="+dir)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	buf := make([]byte, 7)
	if _, err := stdout.Read(buf); err != nil || string(buf) != "locked\n" {
		t.Fatalf("child did not lock: %q %v", buf, err)
	}
	_, err := datadir.Open(dir)
	if !errors.Is(err, datadir.ErrInUse) {
		t.Fatalf("second Open = %v, want ErrInUse", err)
	}
	if !strings.Contains(err.Error(), "pid ") {
		t.Errorf("message does not name the holder: %v", err)
	}
	stdin.Close()
	cmd.Wait()
	d, err := datadir.Open(dir)
	if err != nil {
		t.Fatalf("Open after holder exited: %v", err)
	}
	d.Close()
}

func TestCloseIsIdempotent(t *testing.T) {
	d, err := datadir.Open(filepath.Join(t.TempDir(), "d"))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}
