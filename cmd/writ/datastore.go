package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// maxPasswordFile bounds what readPasswordFile reads.
const maxPasswordFile = 4096

var (
	errPasswordFileMode  = errors.New("password file is readable by group or others")
	errPasswordFileEmpty = errors.New("password file is empty")
)

// readPasswordFile returns the content of path with surrounding white
// space trimmed. The file (after symbolic links) must be a regular file
// that neither group nor others can read.
func readPasswordFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !info.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	if perm := info.Mode().Perm(); perm&0o044 != 0 {
		return "", fmt.Errorf("%w: %s has mode %04o; run: chmod 600 %s", errPasswordFileMode, path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxPasswordFile+1))
	if err != nil {
		return "", err
	}
	if len(data) > maxPasswordFile {
		return "", fmt.Errorf("%s is longer than %d bytes", path, maxPasswordFile)
	}
	password := strings.TrimSpace(string(data))
	if password == "" {
		return "", fmt.Errorf("%w: %s", errPasswordFileEmpty, path)
	}
	return password, nil
}
