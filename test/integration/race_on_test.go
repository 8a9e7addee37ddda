//go:build race

package integration_test

func init() { buildFlags = append(buildFlags, "-race") }
