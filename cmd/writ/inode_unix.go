//go:build unix

package main

import (
	"os"
	"syscall"
)

// inode returns the file's inode number, so that a file replaced by a
// rename with the same size and time still counts as changed.
func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Ino) //nolint:gosec // an inode number, compared for equality only
	}
	return 0
}
