package server

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"writ.dev/writ/internal/datadir"
)

// ServerIDFile holds the server's ID inside its data directory.
const ServerIDFile = "server-id"

// LoadOrCreateServerID returns the ID kept in dir/server-id, creating a
// random one on a first start. The ID names this server among the
// servers that share a datastore and owns its CA keys there, so it must
// survive restarts: a lost ID makes the server a stranger to its own keys.
func LoadOrCreateServerID(dir string) (string, error) {
	path := filepath.Join(dir, ServerIDFile)
	data, err := datadir.ReadFile(path)
	switch {
	case err == nil:
		id := strings.TrimSpace(string(data))
		if !validServerID(id) {
			return "", fmt.Errorf("server ID file %s is corrupt; restore it from backup", path)
		}
		return id, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("server ID file: %w", err)
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	id := hex.EncodeToString(b[:])
	if err := datadir.WriteFile(path, []byte(id+"\n")); err != nil {
		return "", fmt.Errorf("write server ID: %w", err)
	}
	return id, nil
}

func validServerID(id string) bool {
	if len(id) != 16 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}
