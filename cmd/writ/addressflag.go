package main

import (
	"strings"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
)

// multiValueFlag is a repeatable string flag that a config file may give as a
// list or as one string, so that a file written when the flag took one
// value still works. Values are split on commas by splitList.
type multiValueFlag struct {
	*altsrc.StringSliceFlag
}

func newMultiValueFlag(f *cli.StringSliceFlag) *multiValueFlag {
	return &multiValueFlag{altsrc.NewStringSliceFlag(f)}
}

// ApplyInputSourceValue sets the flag from the config file unless the
// command line or the environment set it.
func (f *multiValueFlag) ApplyInputSourceValue(c *cli.Context, isc altsrc.InputSourceContext) error {
	if c.IsSet(f.Name) {
		return nil
	}
	values, err := isc.StringSlice(f.Name)
	if err != nil {
		s, serr := isc.String(f.Name)
		if serr != nil {
			return err
		}
		values = []string{s}
	}
	for _, v := range values {
		if err := c.Set(f.Name, v); err != nil {
			return err
		}
	}
	return nil
}

// splitList splits each value on commas and drops empty items and white
// space around items.
func splitList(values []string) []string {
	var out []string
	for _, v := range values {
		for item := range strings.SplitSeq(v, ",") {
			if item = strings.TrimSpace(item); item != "" {
				out = append(out, item)
			}
		}
	}
	return out
}
