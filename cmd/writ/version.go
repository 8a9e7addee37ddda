package main

import (
	"fmt"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

// buildVersion is what `writ version` reports.
type buildVersion struct {
	Version   string `json:"version"`    // the module version, "(devel)" when built from a checkout
	Commit    string `json:"commit"`     // the VCS revision, "unknown" when not recorded
	Modified  bool   `json:"modified"`   // the build had uncommitted changes
	GoVersion string `json:"go_version"` // the Go toolchain
}

// readBuildVersion reads the version from the binary's build information.
func readBuildVersion() buildVersion {
	v := buildVersion{Version: "(devel)", Commit: "unknown", GoVersion: "unknown"}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if info.Main.Version != "" {
		v.Version = info.Main.Version
	}
	v.GoVersion = info.GoVersion
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			if s.Value != "" {
				v.Commit = s.Value
			}
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

func (v buildVersion) String() string {
	s := fmt.Sprintf("writ %s (commit %s", v.Version, v.Commit)
	if v.Modified {
		s += ", modified"
	}
	return s + ", " + v.GoVersion + ")"
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version and VCS commit of this writ binary",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Value: "text", Usage: "output format: text or json"},
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef(c, "unexpected argument %q", c.Args().First())
			}
			v := readBuildVersion()
			switch c.String("output") {
			case "text":
				_, err := fmt.Fprintln(c.App.Writer, v)
				return err
			case "json":
				return writeJSON(c.App.Writer, v)
			}
			return usagef(c, "unknown --output %q: want text or json", c.String("output"))
		},
	}
}

// versionFlagAction wraps the top-level action so that `writ --version`
// prints the version.
func versionFlagAction(next cli.ActionFunc) cli.ActionFunc {
	return func(c *cli.Context) error {
		if c.Bool("version") {
			_, err := fmt.Fprintln(c.App.Writer, readBuildVersion())
			return err
		}
		return next(c)
	}
}
