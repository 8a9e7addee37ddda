package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestSystemdUnits checks the units in packaging/systemd: every flag their
// ExecStart passes is a flag of that writ command, and, where
// systemd-analyze is installed, systemd accepts them.
func TestSystemdUnits(t *testing.T) {
	units, err := filepath.Glob(filepath.Join("..", "..", "packaging", "systemd", "*.service"))
	if err != nil || len(units) == 0 {
		t.Fatalf("no units found: %v", err)
	}
	app := newApp(nil, &bytes.Buffer{}, &bytes.Buffer{})
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, unit := range units {
		data, err := os.ReadFile(unit)
		if err != nil {
			t.Fatal(err)
		}
		var execStart string
		for line := range strings.SplitSeq(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
				execStart = v
			}
		}
		args := strings.Fields(execStart)
		if len(args) < 3 || args[0] != "/usr/local/bin/writ" {
			t.Fatalf("%s: ExecStart %q does not run /usr/local/bin/writ", unit, execStart)
		}
		cmd := findCommand(app.Commands, args[1:3])
		if cmd == nil {
			t.Fatalf("%s: no command %q", unit, strings.Join(args[1:3], " "))
		}
		for _, a := range args[3:] {
			name, ok := strings.CutPrefix(a, "--")
			if !ok {
				continue
			}
			name, _, _ = strings.Cut(name, "=")
			if !hasFlag(cmd, name) {
				t.Errorf("%s: writ %s has no flag --%s", unit, strings.Join(args[1:3], " "), name)
			}
		}
		// systemd-analyze wants the executable to exist: point the copy
		// at this test binary.
		copied := filepath.Join(dir, filepath.Base(unit))
		if err := os.WriteFile(copied, bytes.ReplaceAll(data, []byte("/usr/local/bin/writ"), []byte(exe)), 0o644); err != nil { //nolint:gosec // a unit file
			t.Fatal(err)
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: units checked against the flags only")
		return
	}
	copies, _ := filepath.Glob(filepath.Join(dir, "*.service"))
	out, err := exec.Command(analyze, append([]string{"verify"}, copies...)...).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func findCommand(cmds []*cli.Command, path []string) *cli.Command {
	var found *cli.Command
	for _, name := range path {
		found = nil
		for _, c := range cmds {
			if c.HasName(name) {
				found = c
				break
			}
		}
		if found == nil {
			return nil
		}
		cmds = found.Subcommands
	}
	return found
}

func hasFlag(c *cli.Command, name string) bool {
	for _, f := range c.Flags {
		for _, n := range f.Names() {
			if n == name {
				return true
			}
		}
	}
	return false
}
