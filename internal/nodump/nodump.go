package nodump

import (
	"fmt"
	"syscall"
)

// Disable turns core files off for this process and, where the system
// allows it, makes the process non-dumpable.
func Disable() error {
	if err := syscall.Setrlimit(syscall.RLIMIT_CORE, &syscall.Rlimit{}); err != nil {
		return fmt.Errorf("disable core files: %w", err)
	}
	return setNotDumpable()
}
