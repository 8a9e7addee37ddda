package main

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
)

// configurable reports whether a --config file can set f: only flags that
// read an input source do; any other key would be accepted and ignored.
func configurable(f cli.Flag) bool {
	_, ok := f.(altsrc.FlagInputSourceExtension)
	return ok && !slices.Contains(f.Names(), "config")
}

// writeConfigReference writes docs/config.md: every command of app with
// every flag, its environment variables, its config-file key and its
// default, taken from the command definitions themselves.
func writeConfigReference(w io.Writer, app *cli.App) error {
	var b strings.Builder
	b.WriteString("# Configuration reference\n\n")
	b.WriteString("Generated from the command definitions by `make docs`; `make docs-check` (part of\n")
	b.WriteString("`make test`) fails when it is out of date. Do not edit by hand.\n\n")
	b.WriteString("Every flag may also come from the environment variable named beside it. Commands\n")
	b.WriteString("with `--config` read a YAML file whose keys are the flag names in the *config key*\n")
	b.WriteString("column; the command line overrides the environment, which overrides the file. A\n")
	b.WriteString("key the command does not know is refused with its name.\n")
	var walk func(path string, cmds []*cli.Command)
	walk = func(path string, cmds []*cli.Command) {
		for _, c := range cmds {
			if c.Hidden || c.Name == "help" {
				continue
			}
			name := path + " " + c.Name
			if len(c.Flags) > 0 || c.Action != nil && len(c.Subcommands) == 0 {
				writeCommandReference(&b, name, c)
			}
			walk(name, c.Subcommands)
		}
	}
	walk(app.Name, app.Commands)
	_, err := io.WriteString(w, b.String())
	return err
}

func writeCommandReference(b *strings.Builder, name string, c *cli.Command) {
	fmt.Fprintf(b, "\n## `%s`\n\n%s\n", name, mdCell(c.Usage))
	flags := visibleFlags(c.Flags)
	if len(flags) == 0 {
		b.WriteString("\nNo flags.\n")
		return
	}
	hasConfig := slices.ContainsFunc(c.Flags, func(f cli.Flag) bool { return slices.Contains(f.Names(), "config") })
	b.WriteString("\n| Flag | Environment | Config key | Default | Description |\n|---|---|---|---|---|\n")
	for _, f := range flags {
		names := f.Names()
		var flag []string
		for _, n := range names {
			if len(n) == 1 {
				flag = append(flag, "`-"+n+"`")
			} else {
				flag = append(flag, "`--"+n+"`")
			}
		}
		env, key, def, usage := "", "", "", ""
		if d, ok := f.(cli.DocGenerationFlag); ok {
			for _, e := range d.GetEnvVars() {
				env += "`" + e + "` "
			}
			if d.TakesValue() {
				if v := d.GetDefaultText(); v != "" && v != `""` && v != "[]" {
					def = "`" + strings.Trim(v, `"`) + "`"
				}
			} else {
				def = "`false`"
			}
			usage = d.GetUsage()
		}
		if hasConfig && configurable(f) {
			key = "`" + names[0] + "`"
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s |\n", strings.Join(flag, ", "), strings.TrimSpace(env), key, mdCell(def), mdCell(usage))
	}
}

// visibleFlags returns flags without the hidden ones and without help.
func visibleFlags(flags []cli.Flag) []cli.Flag {
	var out []cli.Flag
	for _, f := range flags {
		if vf, ok := f.(cli.VisibleFlag); ok && !vf.IsVisible() {
			continue
		}
		if slices.Contains(f.Names(), "help") {
			continue
		}
		out = append(out, f)
	}
	return out
}

// mdCell makes s safe inside a Markdown table cell.
func mdCell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", " ")
}
