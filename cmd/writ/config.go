package main

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"
)

// maxConfigFile bounds the size of a --config file.
const maxConfigFile = 1 << 20

// checkConfigKeys reads the YAML --config file at path and refuses keys
// that name no flag of the command (the flag names, without "--"), naming
// the key and its line; a misspelled key would otherwise be ignored and
// its flag left at its default. The key "config" itself is refused too.
func checkConfigKeys(path string, flags []cli.Flag) error {
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	if info.Size() > maxConfigFile {
		return fmt.Errorf("larger than %d KiB", maxConfigFile>>10)
	}
	data, err := os.ReadFile(path) //nolint:gosec // the operator names the config file
	if err != nil {
		return err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return err
	}
	if len(doc.Content) == 0 {
		return nil // an empty file sets nothing
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: want a mapping of flag names to values", root.Line)
	}
	known := configKeys(flags)
	for i := 0; i+1 < len(root.Content); i += 2 {
		k := root.Content[i]
		if !slices.Contains(known, k.Value) {
			return fmt.Errorf("line %d: unknown key %q (known keys: %s)", k.Line, printableKey(k.Value), strings.Join(known, ", "))
		}
	}
	return nil
}

// configKeys returns the names a config file may set: every name of each
// flag that reads the file (configurable), so that a key naming a flag the
// file cannot set is refused rather than ignored.
func configKeys(flags []cli.Flag) []string {
	var keys []string
	for _, f := range flags {
		if configurable(f) {
			keys = append(keys, f.Names()...)
		}
	}
	return keys
}

// printableKey bounds and escapes a key from a config file for a message.
func printableKey(s string) string {
	const max = 64
	if len(s) > max {
		s = s[:max] + "..."
	}
	return strings.ToValidUTF8(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s), "?")
}
