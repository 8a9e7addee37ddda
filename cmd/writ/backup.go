package main

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/server"
)

func serverBackupCommand() *cli.Command {
	return &cli.Command{
		Name:  "backup",
		Usage: "write a backup of the running server (its datastore and, with the disk key manager, its CA keys) to a file",
		Description: "The backup is taken while the server runs; signing goes on. The file holds CA private keys:\n" +
			"it is created 0600, and only root and the server's own uid may ask for it. Servers on a\n" +
			"PostgreSQL datastore refuse: back up the database with pg_dump and each server's data dir.",
		Flags: withAdminFlags(
			&cli.StringFlag{Name: "file", Usage: "`FILE` to write the backup to (replaced atomically if it exists), or - for standard output", Required: true, TakesFile: true},
		),
		Action: serverBackup,
	}
}

func serverRestoreCommand() *cli.Command {
	return &cli.Command{
		Name:  "restore",
		Usage: "recreate a server's data directory from a backup file (the server must not be running on it)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "file", Usage: "backup `FILE` written by writ server backup, or - for standard input", Required: true, TakesFile: true},
			&cli.StringFlag{Name: "data-dir", Usage: "data `DIR` to create; it must not exist or be empty", Required: true, TakesFile: true},
			&cli.StringFlag{Name: flagOutput, Value: "text", Usage: "output `FORMAT`: text or json"},
		},
		Action: serverRestore,
	}
}

// jsonBackup is what backup and restore print with --output json.
type jsonBackup struct {
	File        string   `json:"file,omitempty"`
	DataDir     string   `json:"data_dir,omitempty"`
	Bytes       int64    `json:"bytes,omitempty"`
	TrustDomain string   `json:"trust_domain"`
	ServerID    string   `json:"server_id"`
	CreatedAt   string   `json:"created_at"`
	KeyManager  string   `json:"key_manager"`
	KeyIDs      []string `json:"key_ids"`
}

func manifestToJSON(m *server.BackupManifest) *jsonBackup {
	ids := m.KeyIDs
	if ids == nil {
		ids = []string{}
	}
	return &jsonBackup{TrustDomain: m.TrustDomain, ServerID: m.ServerID, CreatedAt: m.CreatedAt.UTC().Format("2006-01-02T15:04:05Z"), KeyManager: m.KeyManager, KeyIDs: ids}
}

func serverBackup(c *cli.Context) error {
	a, err := newAdminCmd(c)
	if err != nil {
		return err
	}
	file := c.String("file")
	if file == "" {
		return usagef(c, "--file is empty")
	}
	var out io.Writer = c.App.Writer
	var tmp *os.File
	if file != "-" {
		if tmp, err = os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp*"); err != nil {
			return fmt.Errorf("backup file: %w", err)
		}
		defer func() { tmp.Close(); os.Remove(tmp.Name()) }()
		if err := tmp.Chmod(0o600); err != nil {
			return err
		}
		out = tmp
	}
	var n int64
	_, err = callAdmin(c.Context, a, func(ctx context.Context, client *adminClient) (struct{}, error) {
		stream, err := client.servers.Backup(ctx, &adminv1.BackupRequest{})
		if err != nil {
			return struct{}{}, err
		}
		for {
			chunk, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return struct{}{}, nil
			}
			if err != nil {
				return struct{}{}, err
			}
			k, err := out.Write(chunk.GetData())
			n += int64(k)
			if err != nil {
				return struct{}{}, &serverError{msg: fmt.Sprintf("write %s: %v", file, err)}
			}
		}
	})
	if err != nil {
		return err
	}
	if tmp == nil {
		return nil // the archive went to standard output
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	m, err := server.ReadBackupManifest(tar.NewReader(tmp))
	if err != nil {
		return fmt.Errorf("the server's backup does not read back: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return err
	}
	j := manifestToJSON(m)
	j.File, j.Bytes = file, n
	if a.format == jsonOutput {
		return writeJSON(c.App.Writer, j)
	}
	fmt.Fprintf(c.App.Writer, "backup of server %s (trust domain %s) written to %s: %d bytes, %d CA keys\n",
		entry.Printable(m.ServerID), entry.Printable(m.TrustDomain), file, n, len(m.KeyIDs))
	if m.KeyManager != server.KeyManagerDisk {
		fmt.Fprintf(c.App.ErrWriter, "writ: the server's CA keys are in its %s key manager, not in the backup\n", entry.Printable(m.KeyManager))
	}
	return nil
}

func serverRestore(c *cli.Context) error {
	format, err := parseOutputFormat(c.String(flagOutput))
	if err != nil {
		return usagef(c, "%v", err)
	}
	if c.Args().Present() {
		return usagef(c, "unexpected argument %q", c.Args().First())
	}
	file, dataDir := c.String("file"), c.String("data-dir")
	var in io.Reader = c.App.Reader
	if file != "-" {
		f, err := os.Open(file) //nolint:gosec // the operator names the backup file
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	m, err := server.Restore(in, dataDir)
	if err != nil {
		return err
	}
	j := manifestToJSON(m)
	j.DataDir = dataDir
	if format == jsonOutput {
		return writeJSON(c.App.Writer, j)
	}
	fmt.Fprintf(c.App.Writer, "restored server %s (trust domain %s, backup of %s) into %s\nstart it with: writ server run --trust-domain %s --data-dir %s\n",
		entry.Printable(m.ServerID), entry.Printable(m.TrustDomain), j.CreatedAt, dataDir, entry.Printable(m.TrustDomain), dataDir)
	if m.KeyManager != server.KeyManagerDisk {
		fmt.Fprintf(c.App.ErrWriter, "writ: the backup holds no CA keys (key manager %s): start the server with the same --key-manager settings\n", entry.Printable(m.KeyManager))
	}
	return nil
}
