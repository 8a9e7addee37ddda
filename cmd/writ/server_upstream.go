package main

import (
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"writ.dev/writ/ca/server"
)

// keyFlags are the flags of `writ server run` that choose where the CA
// keys live and who signs the CA certificates. Like every server flag,
// each has an environment variable and a config file key (its name).
func keyFlags() []cli.Flag {
	return []cli.Flag{
		altsrc.NewStringFlag(&cli.StringFlag{Name: "key-manager", Value: server.KeyManagerDisk, Usage: "where CA private keys live: disk (files in the data dir) or memory (lost on exit: a restart makes a new CA)", EnvVars: []string{"WRIT_KEY_MANAGER"}}),
	}
}

// keysConfig reads the key flags.
func keysConfig(c *cli.Context) server.KeysConfig {
	return server.KeysConfig{
		KeyManager: c.String("key-manager"),
	}
}
