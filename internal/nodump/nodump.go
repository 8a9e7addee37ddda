package nodump

import (
	"fmt"
	"syscall"
)

// Disable turns core files off for this process and, where the system
// allows it, makes the process non-dumpable.
func Disable() error {
	if err := DisableCoreFiles(); err != nil {
		return err
	}
	return setNotDumpable()
}

// DisableCoreFiles turns core files off for this process only. A process
// that is itself a workload uses it instead of Disable: the agent must
// still read its executable from /proc to attest it, which a
// non-dumpable process of a non-root agent's uid refuses.
func DisableCoreFiles() error {
	if err := syscall.Setrlimit(syscall.RLIMIT_CORE, &syscall.Rlimit{}); err != nil {
		return fmt.Errorf("disable core files: %w", err)
	}
	return nil
}
