package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"writ.dev/writ/ca/ui"
	"writ.dev/writ/internal/datadir"
)

// uiFlags are writ server run's flags for the status page.
func uiFlags() []cli.Flag {
	return []cli.Flag{
		altsrc.NewStringFlag(&cli.StringFlag{Name: "ui-address", Usage: "host:port of the read-only status page (off when empty; a bare :port means 127.0.0.1)", EnvVars: []string{"WRIT_UI_ADDRESS"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "ui-token-file", Usage: "`FILE` holding the status page's token; created 0600 with a random token if missing (default: ui-token in the data dir)", EnvVars: []string{"WRIT_UI_TOKEN_FILE"}, TakesFile: true}),
	}
}

// uiSettings returns the status page's address and token, creating the
// token file if it is missing. Both are empty when the page is off.
func uiSettings(c *cli.Context) (addr, token string, err error) {
	addr = c.String("ui-address")
	if addr == "" {
		if c.String("ui-token-file") != "" {
			return "", "", usagef(c, "--ui-token-file needs --ui-address")
		}
		return "", "", nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", "", usagef(c, "--ui-address %q: %v", addr, err)
	}
	if host == "" {
		addr = net.JoinHostPort("127.0.0.1", port)
	}
	path := c.String("ui-token-file")
	if path == "" {
		if err := datadir.MkdirPrivate(c.String("data-dir")); err != nil {
			return "", "", err
		}
		path = filepath.Join(c.String("data-dir"), "ui-token")
	}
	token, err = loadOrCreateToken(path)
	if err != nil {
		return "", "", fmt.Errorf("--ui-token-file %s: %w", path, err)
	}
	return addr, token, nil
}

// loadOrCreateToken reads the token in path (which must not be readable
// by group or others), or writes a new random one there, 0600.
func loadOrCreateToken(path string) (string, error) {
	data, err := datadir.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		token := ui.NewToken()
		if err := datadir.WriteFile(path, []byte(token+"\n")); err != nil {
			return "", err
		}
		return token, nil
	}
	if err != nil {
		return "", err
	}
	token := strings.TrimSpace(string(data))
	if len(token) < ui.MinTokenLength {
		return "", fmt.Errorf("the token must be at least %d characters", ui.MinTokenLength)
	}
	if strings.ContainsFunc(token, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return "", errors.New("the token must not contain spaces or control characters")
	}
	return token, nil
}
