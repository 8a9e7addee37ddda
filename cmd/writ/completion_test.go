package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// writOnPath puts a `writ` on PATH that runs this test binary as the CLI,
// so that shell completion scripts call a real writ process.
func writOnPath(t *testing.T) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script := "#!/bin/sh\n" + envRunCLI + "=1 exec '" + exe + "' \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "writ"), []byte(script), 0o755); err != nil { //nolint:gosec // an executable test script
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

func TestCompletionBash(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not installed")
	}
	writOnPath(t)
	cases := []struct {
		words string // the command line typed so far; the last word is completed
		want  string
		not   string
	}{
		{words: "writ en", want: "entry", not: "server"},
		{words: "writ entry cr", want: "create", not: "list"},
		{words: "writ entry create --spiffe", want: "--spiffe-id", not: "--selector"},
		{words: "writ ca x509 ta", want: "taint"},
		{words: "writ comp", want: "completion"},
	}
	for _, tc := range cases {
		t.Run(tc.words, func(t *testing.T) {
			words := strings.Fields(tc.words)
			prog := "source <(writ completion bash)\n" +
				"COMP_WORDS=(" + strings.Join(words, " ") + ")\n" +
				"COMP_CWORD=" + strconv.Itoa(len(words)-1) + "\n" +
				"_writ_complete\n" +
				`printf '%s\n' "${COMPREPLY[@]}"` + "\n"
			var out, errb bytes.Buffer
			cmd := exec.Command(bash, "--norc", "--noprofile", "-c", prog)
			cmd.Stdout, cmd.Stderr = &out, &errb
			if err := cmd.Run(); err != nil {
				t.Fatalf("bash: %v: %s", err, errb.String())
			}
			got := strings.Fields(out.String())
			if !slices.Contains(got, tc.want) {
				t.Errorf("completions of %q = %q, want %q among them", tc.words, got, tc.want)
			}
			if tc.not != "" && slices.Contains(got, tc.not) {
				t.Errorf("completions of %q = %q, do not want %q", tc.words, got, tc.not)
			}
		})
	}
}

func TestCompletionScripts(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		var out, errb bytes.Buffer
		if code := run(t.Context(), []string{"writ", "completion", shell}, nil, &out, &errb); code != exitOK {
			t.Fatalf("completion %s: exit %d: %s", shell, code, errb.String())
		}
		if !strings.Contains(out.String(), "writ") {
			t.Errorf("completion %s: script does not mention writ:\n%s", shell, out.String())
		}
		// Each script must at least parse in its shell, where installed.
		check := map[string][]string{"bash": {"bash", "-n"}, "zsh": {"zsh", "-n"}, "fish": {"fish", "--no-execute"}}[shell]
		if path, err := exec.LookPath(check[0]); err == nil {
			cmd := exec.Command(path, check[1:]...)
			cmd.Stdin = bytes.NewReader(out.Bytes())
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("%s does not parse its completion script: %v: %s", shell, err, b)
			}
		}
	}
	var out, errb bytes.Buffer
	if code := run(t.Context(), []string{"writ", "completion", "tcsh"}, nil, &out, &errb); code != exitUsage {
		t.Errorf("completion tcsh: exit %d, want %d", code, exitUsage)
	}
	if code := run(t.Context(), []string{"writ", "completion"}, nil, &out, &errb); code != exitUsage {
		t.Errorf("completion without a shell: exit %d, want %d", code, exitUsage)
	}
}
