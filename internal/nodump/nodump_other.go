//go:build !linux

package nodump

func setNotDumpable() error { return nil }

func dumpable() (bool, error) { return false, nil }
