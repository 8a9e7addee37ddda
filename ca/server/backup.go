package server

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/admin"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/keymanager/keystore"
	"writ.dev/writ/internal/datadir"
)

// A backup is a tar archive of these members, in this order: the
// manifest, the server ID, the datastore (a bbolt file), and the private
// key files the datastore's CA key records of this server name (only with
// the disk key store).
const (
	backupManifest  = "writ-backup.json"
	backupFormat    = 1
	maxManifestSize = 64 << 10
	maxKeyFileSize  = 64 << 10
)

// ErrRestore means a backup archive cannot be restored: it is not a Writ
// backup, is damaged, or the target directory is in use.
var ErrRestore = errors.New("cannot restore backup")

// BackupManifest describes a backup archive.
type BackupManifest struct {
	Format      int       `json:"format"`
	TrustDomain string    `json:"trust_domain"`
	ServerID    string    `json:"server_id"`
	CreatedAt   time.Time `json:"created_at"`
	Version     string    `json:"version"`
	// KeyManager is the key store of the server; CA private keys are in
	// the archive only for KeyManagerDisk.
	KeyManager string   `json:"key_manager"`
	KeyIDs     []string `json:"key_ids,omitempty"`
}

// backupSource is a datastore that can write a consistent copy of itself
// (boltstore).
type backupSource interface {
	Backup(ctx context.Context, w io.Writer) ([]*datastore.CAKey, error)
}

// backuper writes backups of a running server (admin.Backuper).
type backuper struct {
	store      datastore.Store
	dir        *datadir.Dir
	td         spiffeid.TrustDomain
	serverID   string
	keyManager string
	clock      clock.Clock
}

// WriteBackup writes the archive to w. The datastore is first copied into
// a private temporary file in the data directory (so that the read
// transaction is short whatever the reader's speed), then the key files
// its records name are read; if one was removed in between (a rotation
// pruned it), the copy is taken again.
func (b *backuper) WriteBackup(ctx context.Context, w io.Writer) error {
	src, ok := b.store.(backupSource)
	if !ok {
		return fmt.Errorf("%w: the server's datastore is a shared database; back it up with its own tools (pg_dump for PostgreSQL) and keep each server's data directory (its keys and server-id)", admin.ErrBackupUnsupported)
	}
	var (
		snap *os.File
		keys map[string][]byte
		err  error
	)
	for attempt := 0; ; attempt++ {
		snap, keys, err = b.snapshot(ctx, src)
		if err == nil || !errors.Is(err, fs.ErrNotExist) || attempt == 2 {
			break
		}
	}
	if err != nil {
		return err
	}
	defer func() { snap.Close(); os.Remove(snap.Name()) }()
	info, err := snap.Stat()
	if err != nil {
		return err
	}
	m := BackupManifest{Format: backupFormat, TrustDomain: b.td.Name(), ServerID: b.serverID, CreatedAt: b.clock.Now().UTC(), Version: buildVersion(), KeyManager: b.keyManager}
	for id := range keys {
		m.KeyIDs = append(m.KeyIDs, id)
	}
	slices.Sort(m.KeyIDs)
	manifest, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	put := func(name string, size int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: size, ModTime: m.CreatedAt, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := io.Copy(tw, r)
		return err
	}
	if err := put(backupManifest, int64(len(manifest)), strings.NewReader(string(manifest))); err != nil {
		return err
	}
	if err := put(ServerIDFile, int64(len(b.serverID)+1), strings.NewReader(b.serverID+"\n")); err != nil {
		return err
	}
	if err := put(DatastoreFile, info.Size(), snap); err != nil {
		return err
	}
	for _, id := range m.KeyIDs {
		if err := put(path.Join(KeysDir, id+".pem"), int64(len(keys[id])), strings.NewReader(string(keys[id]))); err != nil {
			return err
		}
	}
	return tw.Close()
}

// snapshot copies the datastore into a temporary file and reads the key
// files of this server's CA keys that the copy names.
func (b *backuper) snapshot(ctx context.Context, src backupSource) (*os.File, map[string][]byte, error) {
	f, err := os.CreateTemp(b.dir.Path(), ".backup-*.db")
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (*os.File, map[string][]byte, error) {
		f.Close()
		os.Remove(f.Name())
		return nil, nil, err
	}
	if err := f.Chmod(0o600); err != nil {
		return fail(err)
	}
	records, err := src.Backup(ctx, f)
	if err != nil {
		return fail(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fail(err)
	}
	keys := map[string][]byte{}
	if b.keyManager == KeyManagerDisk {
		for _, r := range records {
			if r.ServerID != "" && r.ServerID != b.serverID {
				continue // another server's key (a shared datastore)
			}
			if !keystore.ValidID(r.ID) {
				return fail(fmt.Errorf("datastore names a CA key with an invalid ID %q", r.ID))
			}
			data, err := datadir.ReadFile(b.dir.Join(KeysDir, r.ID+".pem"))
			if err != nil {
				return fail(fmt.Errorf("CA key %s: %w", r.ID, err))
			}
			keys[r.ID] = data
		}
	}
	return f, keys, nil
}

// Restore recreates a server data directory at dataDir from the backup
// archive r. dataDir must not exist or be empty; on failure nothing is
// left in it. The restored datastore is opened once to check it.
func Restore(r io.Reader, dataDir string) (*BackupManifest, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, err
	}
	if entries, err := os.ReadDir(abs); err == nil && len(entries) > 0 {
		return nil, fmt.Errorf("%w: %s is not empty; restore into a new or empty directory", ErrRestore, abs)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	dir, err := datadir.Open(abs)
	if err != nil {
		return nil, err
	}
	m, err := restoreInto(r, dir)
	dir.Close()
	if err != nil {
		cleanDir(abs)
		return nil, err
	}
	return m, nil
}

func restoreInto(r io.Reader, dir *datadir.Dir) (*BackupManifest, error) {
	tr := tar.NewReader(r)
	var m *BackupManifest
	seen := map[string]bool{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: not a Writ backup archive: %w", ErrRestore, err)
		}
		name := h.Name
		if h.Typeflag != tar.TypeReg || seen[name] {
			return nil, fmt.Errorf("%w: unexpected member %q", ErrRestore, name)
		}
		seen[name] = true
		if m == nil && name != backupManifest {
			return nil, fmt.Errorf("%w: not a Writ backup archive (no %s first)", ErrRestore, backupManifest)
		}
		switch {
		case name == backupManifest:
			if m, err = readManifest(tr, h.Size); err != nil {
				return nil, err
			}
		case name == ServerIDFile:
			id, err := readSmall(tr, h.Size, 256)
			if err != nil || strings.TrimSpace(string(id)) != m.ServerID {
				return nil, fmt.Errorf("%w: %s does not match the manifest", ErrRestore, ServerIDFile)
			}
			if err := datadir.WriteFile(dir.Join(ServerIDFile), id); err != nil {
				return nil, err
			}
		case name == DatastoreFile:
			if err := writeStream(dir.Join(DatastoreFile), tr); err != nil {
				return nil, err
			}
		case strings.HasPrefix(name, KeysDir+"/") && strings.HasSuffix(name, ".pem") && keystore.ValidID(strings.TrimSuffix(strings.TrimPrefix(name, KeysDir+"/"), ".pem")):
			data, err := readSmall(tr, h.Size, maxKeyFileSize)
			if err != nil {
				return nil, fmt.Errorf("%w: %s: %w", ErrRestore, name, err)
			}
			if err := datadir.MkdirPrivate(dir.Join(KeysDir)); err != nil {
				return nil, err
			}
			if err := datadir.WriteFile(dir.Join(filepath.FromSlash(name)), data); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("%w: unexpected member %q", ErrRestore, name)
		}
	}
	if m == nil || !seen[DatastoreFile] || !seen[ServerIDFile] {
		return nil, fmt.Errorf("%w: archive is incomplete (want %s, %s and %s)", ErrRestore, backupManifest, ServerIDFile, DatastoreFile)
	}
	for _, id := range m.KeyIDs {
		if !seen[KeysDir+"/"+id+".pem"] {
			return nil, fmt.Errorf("%w: archive lacks CA key %s", ErrRestore, id)
		}
	}
	store, err := boltstore.Open(dir.Join(DatastoreFile), boltstore.Options{})
	if err != nil {
		return nil, fmt.Errorf("%w: the archive's datastore: %w", ErrRestore, err)
	}
	defer store.Close()
	td, err := spiffeid.TrustDomainFromString(m.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("%w: manifest trust domain: %w", ErrRestore, err)
	}
	if _, err := store.FetchBundle(context.Background(), td); err != nil {
		return nil, fmt.Errorf("%w: the archive's datastore holds no bundle of %s: %w", ErrRestore, td.Name(), err)
	}
	return m, nil
}

// ReadBackupManifest reads the manifest, the first member of a backup
// archive.
func ReadBackupManifest(tr *tar.Reader) (*BackupManifest, error) {
	h, err := tr.Next()
	if err != nil {
		return nil, fmt.Errorf("%w: not a Writ backup archive: %w", ErrRestore, err)
	}
	if h.Name != backupManifest || h.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("%w: not a Writ backup archive (no %s first)", ErrRestore, backupManifest)
	}
	return readManifest(tr, h.Size)
}

func readManifest(r io.Reader, size int64) (*BackupManifest, error) {
	data, err := readSmall(r, size, maxManifestSize)
	if err != nil {
		return nil, fmt.Errorf("%w: manifest: %w", ErrRestore, err)
	}
	var m BackupManifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest: %w", ErrRestore, err)
	}
	if m.Format != backupFormat {
		return nil, fmt.Errorf("%w: backup format %d; this writ reads format %d", ErrRestore, m.Format, backupFormat)
	}
	if m.ServerID == "" || m.TrustDomain == "" {
		return nil, fmt.Errorf("%w: manifest lacks the server ID or trust domain", ErrRestore)
	}
	for _, id := range m.KeyIDs {
		if !keystore.ValidID(id) {
			return nil, fmt.Errorf("%w: manifest names an invalid key ID", ErrRestore)
		}
	}
	return &m, nil
}

// readSmall reads a member of at most limit bytes.
func readSmall(r io.Reader, size, limit int64) ([]byte, error) {
	if size < 0 || size > limit {
		return nil, fmt.Errorf("member of %d bytes, at most %d allowed", size, limit)
	}
	return io.ReadAll(io.LimitReader(r, size))
}

// writeStream writes r to a new private file at path and syncs it.
func writeStream(path string, r io.Reader) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return datadir.SyncDir(filepath.Dir(path))
}

// cleanDir empties dir after a failed restore (it was empty before).
func cleanDir(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		_ = os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}
