package boltstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"

	"writ.dev/writ/internal/logkey"
)

// Log attribute keys.
const ()

const (
	// DefaultMaxEvents is how many events the log keeps when
	// Options.MaxEvents is zero.
	DefaultMaxEvents = 100_000
	// DefaultLockTimeout is how long Open waits for another process to
	// release the file when Options.LockTimeout is zero.
	DefaultLockTimeout = 200 * time.Millisecond

	// formatVersion is the layout of buckets and keys, stored under
	// keyFormat in the meta bucket.
	formatVersion byte = 1
	fileMode           = 0o600
)

// Bucket names. Entries are stored under a sequence number, the revision
// that created them, rather than under their random IDs: new entries then
// go to the end of the entries bucket and of each index range instead of
// dirtying pages all over the file, which more than halves the pages a
// batch of CreateEntries writes. entry_ids maps each ID to its sequence
// number, and the index keys end in it:
//
//	entries               seq -> entry record
//	entry_ids             ID -> seq
//	entries_unique        entry.UniqueKey -> ID
//	entries_by_spiffe_id  len|SPIFFE ID|seq -> 1
//	entries_by_parent_id  len|parent ID|seq -> 1
//	entries_by_selector   len|type|len|value|seq -> 1
//	events                revision -> event record
//	agents                SPIFFE ID -> agent record
//	join_tokens           hash -> token record
//	bundles               trust domain -> bundle record
//	ca_keys               ID -> CA key record
//	servers               server ID -> server record
//	federations           trust domain -> federation relationship (JSON)
//	oauth_clients         SPIFFE ID -> OAuth client (JSON)
//	client_assertions     hash -> expiry (unix nanoseconds, big endian)
//	revocations           datastore.RevocationKey -> revocation (JSON)
//	meta                  format, revision, pruned
var (
	bucketMeta       = []byte("meta")
	bucketEntries    = []byte("entries")
	bucketEntryIDs   = []byte("entry_ids")
	bucketBySPIFFEID = []byte("entries_by_spiffe_id")
	bucketByParentID = []byte("entries_by_parent_id")
	bucketBySelector = []byte("entries_by_selector")
	bucketUnique     = []byte("entries_unique")
	bucketAgents     = []byte("agents")
	bucketJoinTokens = []byte("join_tokens")
	bucketBundles    = []byte("bundles")
	bucketCAKeys     = []byte("ca_keys")
	bucketEvents     = []byte("events")
	// bucketServers came after format 1 was first written: files made
	// before it have no such bucket, and Open adds it.
	bucketServers = []byte("servers")
	// bucketFederations came after bucketServers, the same way.
	bucketFederations = []byte("federations")
	// The OAuth buckets came after bucketFederations, the same way.
	bucketOAuthClients     = []byte("oauth_clients")
	bucketClientAssertions = []byte("client_assertions")
	bucketRevocations      = []byte("revocations")

	allBuckets = [][]byte{
		bucketMeta, bucketEntries, bucketEntryIDs, bucketBySPIFFEID, bucketByParentID,
		bucketBySelector, bucketUnique, bucketAgents, bucketJoinTokens,
		bucketBundles, bucketCAKeys, bucketEvents,
	}
	// addedBuckets are created by Open in files that lack them.
	addedBuckets = [][]byte{bucketServers, bucketFederations, bucketOAuthClients, bucketClientAssertions, bucketRevocations}
)

// Keys of the meta bucket.
var (
	// keyFormat holds formatVersion.
	keyFormat = []byte("format")
	// keyRevision holds the revision of the latest change (uint64, big
	// endian). Each change of an entry, agent or bundle takes the next
	// revision and logs one event under it, so the event log holds every
	// revision from keyPruned+1 to keyRevision.
	keyRevision = []byte("revision")
	// keyPruned holds the highest revision whose event has been dropped.
	keyPruned = []byte("pruned")
)

// Options configure Open.
type Options struct {
	// Logger receives the store's few log records; nil discards them.
	Logger *slog.Logger
	// MaxEvents bounds the event log: each write drops the oldest events
	// beyond it. Zero means DefaultMaxEvents.
	MaxEvents int
	// LockTimeout is how long Open waits for another process holding the
	// file. Zero means DefaultLockTimeout.
	LockTimeout time.Duration
}

// Store is a datastore.Store in one bbolt file. Create it with Open.
type Store struct {
	db        *bbolt.DB
	path      string
	log       *slog.Logger
	maxEvents uint64

	mu sync.Mutex // guards watchers and closed
	// watchers are the channels handed out by Watch.
	watchers map[chan struct{}]struct{}
	closed   bool
}

var _ datastore.Store = (*Store)(nil)

// Open opens the datastore file at path, creating it if it does not
// exist. An existing file is checked in full before Open returns: if it
// cannot be read Open fails with an error wrapping datastore.ErrCorrupt
// and leaves the file as it is; it never initializes over existing data.
// If another process has the file open, Open fails after
// Options.LockTimeout with an error wrapping datastore.ErrInUse.
//
// The directory must exist; a new file gets mode 0600, and an existing
// file readable or writable by group or others is refused.
func Open(path string, opts Options) (*Store, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.MaxEvents < 0 {
		return nil, fmt.Errorf("open datastore %s: MaxEvents is negative", path)
	}
	maxEvents := opts.MaxEvents
	if maxEvents == 0 {
		maxEvents = DefaultMaxEvents
	}
	lockTimeout := opts.LockTimeout
	if lockTimeout <= 0 {
		lockTimeout = DefaultLockTimeout
	}

	info, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := create(path); err != nil {
			return nil, fmt.Errorf("create datastore %s: %w", path, err)
		}
		log.Info("created new datastore", logkey.Path, path)
		info, err = os.Stat(path)
	}
	if err != nil {
		return nil, fmt.Errorf("open datastore: %w", err)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("open datastore %s: not a regular file", path)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("open datastore %s: file mode is %#o, but the datastore must not be accessible to group or others (chmod 600 it)", path, perm)
	}
	if info.Size() == 0 {
		return nil, corruptFile(path, errors.New("file is empty"))
	}

	// Check the file read-only first: bbolt reads the free list when
	// it opens a file for writing and panics if that is damaged, and a
	// panic inside bbolt.Open leaks the file's memory map, and with it
	// the lock. A read-only handle is returned before any page but the
	// meta pages is read, so it can always be closed.
	ro, err := openBolt(path, lockTimeout, true)
	if err != nil {
		return nil, err
	}
	verifyErr := guardFaults(func() error { return verify(ro) })
	if err := ro.Close(); err != nil && verifyErr == nil {
		verifyErr = err
	}
	if verifyErr != nil {
		return nil, corruptFile(path, verifyErr)
	}
	db, err := openBolt(path, lockTimeout, false)
	if err != nil {
		return nil, err
	}
	if err := addBuckets(db); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open datastore %s: %w", path, err)
	}
	log.Debug("opened datastore", logkey.Path, path)
	return &Store{
		db:        db,
		path:      path,
		log:       log,
		maxEvents: uint64(maxEvents),
		watchers:  make(map[chan struct{}]struct{}),
	}, nil
}

// create makes a new, initialized datastore at path. It builds the file
// under a temporary name and links it into place, so that path never
// names a half-made file and a file that appeared meanwhile is kept.
func create(path string) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".new-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }()
	if err := f.Close(); err != nil {
		return err
	}
	db, err := bbolt.Open(tmp, fileMode, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	// bbolt syncs the file on commit.
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, name := range slices.Concat(allBuckets, addedBuckets) {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(keyFormat, []byte{formatVersion}); err != nil {
			return err
		}
		if err := meta.Put(keyRevision, revisionKey(0)); err != nil {
			return err
		}
		return meta.Put(keyPruned, revisionKey(0))
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// addBuckets creates the addedBuckets a file made by an earlier writ
// lacks. It writes nothing when they all exist.
func addBuckets(db *bbolt.DB) error {
	missing := false
	_ = db.View(func(tx *bbolt.Tx) error {
		for _, name := range addedBuckets {
			missing = missing || tx.Bucket(name) == nil
		}
		return nil
	})
	if !missing {
		return nil
	}
	return db.Update(func(tx *bbolt.Tx) error {
		for _, name := range addedBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
}

// openBolt opens an existing bbolt file and classifies failures.
func openBolt(path string, lockTimeout time.Duration, readOnly bool) (*bbolt.DB, error) {
	// file is what bbolt opened, to be closed if bbolt panics before it
	// can close it itself.
	var file *os.File
	opts := &bbolt.Options{
		Timeout:      lockTimeout,
		ReadOnly:     readOnly,
		FreelistType: bbolt.FreelistMapType,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, perm)
			file = f
			return f, err
		},
	}
	var db *bbolt.DB
	var boltErr error
	if panicErr := guardFaults(func() error {
		db, boltErr = bbolt.Open(path, fileMode, opts)
		return nil
	}); panicErr != nil {
		if file != nil {
			_ = file.Close()
		}
		return nil, corruptFile(path, panicErr)
	}
	switch {
	case boltErr == nil:
		return db, nil
	case errors.Is(boltErr, bolterrors.ErrTimeout):
		return nil, fmt.Errorf("datastore %s is in use by another process (another writ server?): %w", path, datastore.ErrInUse)
	case isIOError(boltErr):
		return nil, fmt.Errorf("open datastore %s: %w", path, boltErr)
	default:
		// ErrInvalid, ErrVersionMismatch, ErrChecksum, "file size too
		// small" and the like: the file is not a readable bbolt file.
		return nil, corruptFile(path, boltErr)
	}
}

// isIOError tells failures of the system (permissions, memory) from a
// file whose content bbolt cannot read.
func isIOError(err error) bool {
	var pathErr *fs.PathError
	var errno syscall.Errno
	return errors.As(err, &pathErr) || errors.As(err, &errno)
}

// guardFaults runs fn, turning a panic, or a memory fault such as the
// SIGBUS of reading a truncated memory-mapped file, into an error.
func guardFaults(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("reading the file failed: %v", r)
		}
	}()
	return fn()
}

// corruptFile is the error for a datastore file that cannot be read.
func corruptFile(path string, detail error) error {
	return fmt.Errorf("datastore %s is corrupt (%w); restore it from a backup: do not delete it, as a new datastore means a new CA that every agent distrusts: %w", path, detail, datastore.ErrCorrupt)
}

// Close closes the file, waiting for transactions in progress. It is
// idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close datastore %s: %w", s.path, err)
	}
	return nil
}

// Watch returns a channel that receives a value after each committed
// change (coalesced: it holds at most one), and a function, safe to call
// more than once, that stops the watch. Writers never block on it.
func (s *Store) Watch() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.watchers[ch] = struct{}{}
	s.mu.Unlock()
	return ch, sync.OnceFunc(func() {
		s.mu.Lock()
		delete(s.watchers, ch)
		s.mu.Unlock()
	})
}

func (s *Store) notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// view runs fn in a read transaction.
func (s *Store) view(ctx context.Context, fn func(r *reader) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(func(tx *bbolt.Tx) error {
		r, err := newReader(ctx, tx)
		if err != nil {
			return err
		}
		return fn(r)
	})
}

// update runs fn in a write transaction and, once it has committed,
// signals the watchers if fn changed anything.
func (s *Store) update(ctx context.Context, fn func(w *writer) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var changed bool
	err := s.db.Update(func(tx *bbolt.Tx) error {
		// Writers queue for bbolt's lock; a caller that gave up while
		// waiting gets nothing written.
		if err := ctx.Err(); err != nil {
			return err
		}
		r, err := newReader(ctx, tx)
		if err != nil {
			return err
		}
		w := &writer{reader: r, maxEvents: s.maxEvents}
		if w.rev, err = r.revision(); err != nil {
			return err
		}
		startRev := w.rev
		if err := fn(w); err != nil {
			return err
		}
		if w.rev != startRev {
			if err := w.meta.Put(keyRevision, revisionKey(w.rev)); err != nil {
				return err
			}
			if err := w.pruneEvents(w.maxEvents); err != nil {
				return err
			}
		}
		changed = w.changed || w.rev != startRev
		return nil
	})
	if err != nil {
		return err
	}
	if changed {
		s.notify()
	}
	return nil
}

// reader holds the buckets of a transaction, and the caller's context
// for long scans to check.
type reader struct {
	ctx                                     context.Context
	meta, entries, entryIDs                 *bbolt.Bucket
	bySPIFFEID, byParentID, bySelector      *bbolt.Bucket
	unique, agents, tokens, bundles, caKeys *bbolt.Bucket
	events                                  *bbolt.Bucket
	// servers is nil only while Open verifies a file made before it
	// existed.
	servers *bbolt.Bucket
	// federations and the OAuth buckets are nil in the same case.
	federations                                 *bbolt.Bucket
	oauthClients, clientAssertions, revocations *bbolt.Bucket
}

func newReader(ctx context.Context, tx *bbolt.Tx) (*reader, error) {
	r := &reader{ctx: ctx}
	for _, b := range []struct {
		name []byte
		dst  **bbolt.Bucket
	}{
		{bucketMeta, &r.meta},
		{bucketEntries, &r.entries},
		{bucketEntryIDs, &r.entryIDs},
		{bucketBySPIFFEID, &r.bySPIFFEID},
		{bucketByParentID, &r.byParentID},
		{bucketBySelector, &r.bySelector},
		{bucketUnique, &r.unique},
		{bucketAgents, &r.agents},
		{bucketJoinTokens, &r.tokens},
		{bucketBundles, &r.bundles},
		{bucketCAKeys, &r.caKeys},
		{bucketEvents, &r.events},
	} {
		if *b.dst = tx.Bucket(b.name); *b.dst == nil {
			return nil, fmt.Errorf("%w: bucket %q is missing", datastore.ErrCorrupt, b.name)
		}
	}
	r.servers = tx.Bucket(bucketServers)
	r.federations = tx.Bucket(bucketFederations)
	r.oauthClients = tx.Bucket(bucketOAuthClients)
	r.clientAssertions = tx.Bucket(bucketClientAssertions)
	r.revocations = tx.Bucket(bucketRevocations)
	return r, nil
}

func (r *reader) metaUint64(key []byte) (uint64, error) {
	v := r.meta.Get(key)
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: meta key %q is missing or malformed", datastore.ErrCorrupt, key)
	}
	return binary.BigEndian.Uint64(v), nil
}

func (r *reader) revision() (uint64, error) { return r.metaUint64(keyRevision) }
func (r *reader) pruned() (uint64, error)   { return r.metaUint64(keyPruned) }

// writer is a reader in a write transaction, tracking the revision.
type writer struct {
	*reader
	maxEvents uint64
	// rev is the latest revision, including changes made in this
	// transaction.
	rev uint64
	// changed records a change that takes no revision (join tokens, CA
	// keys).
	changed bool
}

// logEvent takes the next revision, sets it as e's revision (for entry
// events) and logs the event under it.
func (w *writer) logEvent(kind datastore.EventKind, key string, e *entry.Entry) error {
	w.rev++
	if e != nil {
		e.Revision = w.rev
	}
	// Revisions only grow, so the log is append-only: pack its pages.
	w.events.FillPercent = 1
	return w.events.Put(revisionKey(w.rev), encodeEvent(kind, key, e))
}
