package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"

	"writ.dev/writ/internal/logkey"
)

// Log attribute keys.
const ()

const (
	// DefaultMaxEvents is how many events the log keeps when
	// Config.MaxEvents is zero.
	DefaultMaxEvents = 100_000
	// DefaultConnectTimeout bounds each connection attempt when the
	// connection string sets none, so that calls fail promptly with
	// datastore.ErrUnavailable while the database cannot be reached.
	DefaultConnectTimeout = 5 * time.Second
	// SafetyPoll is how often the store looks for changes it was not
	// notified of, in case the change feed broke unnoticed.
	SafetyPoll = 5 * time.Second

	// notifyChannel is the LISTEN/NOTIFY channel every write notifies
	// after it commits, with the latest revision as payload, which
	// readers ignore: any role can notify any channel.
	notifyChannel = "writ_changes"

	retryMin = 100 * time.Millisecond
	retryMax = 10 * time.Second
)

// Config configures Open.
type Config struct {
	// ConnString is a PostgreSQL connection string, URL or keyword/value
	// form, as libpq takes it, plus pgx's pool settings such as
	// pool_max_conns (default: 4, or the number of CPUs if more). The
	// password may also come from PGPASSWORD or a PGPASSFILE. Each Store
	// holds one more connection for its change feed.
	ConnString string
	// Password, if set, replaces the connection string's.
	Password string
	// Logger receives the store's few log records; nil discards them. The
	// connection string and password are never logged.
	Logger *slog.Logger
	// Clock times the change feed's reconnection backoff and safety
	// poll; nil means the system clock.
	Clock clock.Clock
	// MaxEvents bounds the event log: each write drops the oldest events
	// beyond it. Zero means DefaultMaxEvents.
	MaxEvents int
}

// Store is a datastore.Store in a PostgreSQL database, which several
// Stores (several CA servers) may share. Create it with Open.
type Store struct {
	pool      *pgxpool.Pool
	connCfg   *pgx.ConnConfig
	log       *slog.Logger
	clock     clock.Clock
	maxEvents int64

	// stopFeed stops the change feed; feedDone is closed when it has.
	stopFeed context.CancelFunc
	feedDone chan struct{}

	mu sync.Mutex // guards watchers and closed
	// watchers are the channels handed out by Watch.
	watchers map[chan struct{}]struct{}
	closed   bool
}

var _ datastore.Store = (*Store)(nil)

// Open connects to the database, brings its schema up to date (under an
// advisory lock, so that servers starting at once migrate it once) and
// starts following the changes other Stores commit. A database whose
// schema is newer than this version of Writ knows is refused
// (ErrSchemaTooNew) without writing anything. If the database cannot be
// reached, the error wraps datastore.ErrUnavailable.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	clk := cfg.Clock
	if clk == nil {
		clk = clock.Real()
	}
	if cfg.MaxEvents < 0 {
		return nil, errors.New("open datastore: MaxEvents is negative")
	}
	maxEvents := cfg.MaxEvents
	if maxEvents == 0 {
		maxEvents = DefaultMaxEvents
	}
	poolCfg, err := pgxpool.ParseConfig(cfg.ConnString)
	if err != nil {
		// pgx's parse errors redact the password.
		return nil, fmt.Errorf("open datastore: %w", err)
	}
	if cfg.Password != "" {
		poolCfg.ConnConfig.Password = cfg.Password
	}
	if poolCfg.ConnConfig.ConnectTimeout == 0 {
		poolCfg.ConnConfig.ConnectTimeout = DefaultConnectTimeout
	}
	// Writ's queries touch few rows, but the planner overestimates some
	// (the one-row writ_meta joined to the events, before autovacuum
	// has analyzed it), and a plan estimated above jit_above_cost is
	// compiled with LLVM on every execution: hundreds of milliseconds of
	// CPU for a millisecond of work. The connection string may still
	// turn JIT on. A SET rather than a startup parameter, which
	// connection poolers such as PgBouncer refuse.
	if _, set := poolCfg.ConnConfig.RuntimeParams["jit"]; !set {
		poolCfg.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
			_, err := conn.Exec(ctx, "SET jit = off")
			return err
		}
	}
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return nil, fmt.Errorf("open datastore: %w", classify(ctx, err))
	}
	s := &Store{
		pool:      pool,
		connCfg:   poolCfg.ConnConfig,
		log:       log,
		clock:     clk,
		maxEvents: int64(maxEvents),
		watchers:  make(map[chan struct{}]struct{}),
		feedDone:  make(chan struct{}),
	}
	if err := migrate(ctx, pool, log); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open datastore: %w", classify(ctx, err))
	}
	// Listen before returning, so that Watch misses nothing committed
	// after Open.
	conn, err := s.listen(ctx)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("open datastore: %w", classify(ctx, err))
	}
	rev, err := s.revision(ctx)
	if err != nil {
		_ = conn.Close(context.Background())
		pool.Close()
		return nil, fmt.Errorf("open datastore: %w", classify(ctx, err))
	}
	feedCtx, stop := context.WithCancel(context.Background())
	s.stopFeed = stop
	go s.followChanges(feedCtx, conn, rev)
	log.Debug("opened datastore", logkey.Host, s.connCfg.Host, logkey.Database, s.connCfg.Database)
	return s, nil
}

// Close stops the change feed and closes every connection, waiting for
// calls in progress. It is idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.stopFeed()
	<-s.feedDone
	s.pool.Close()
	return nil
}

// Watch returns a channel that receives a value after each change
// committed through any Store on the database (coalesced: it holds at most
// one), and whenever the change feed is restored after it broke; and a
// function, safe to call more than once, that stops the watch. Writers
// never block on it.
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

// listen opens the change feed's own connection and listens on it.
func (s *Store) listen(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, s.connCfg.Copy())
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		_ = conn.Close(context.Background())
		return nil, err
	}
	return conn, nil
}

// followChanges signals the watchers when a notification turns out to
// stand for a change. When the connection breaks it reconnects with
// backoff, and signals the watchers once it has, so that they read what
// they may have missed. A slow poll of the latest revision backs it up.
// It returns when ctx ends.
//
// NOTIFY needs no privilege: any role that can connect to the database
// can send one on the channel, with any payload. A notification is
// therefore only a hint to look (checkHints): its payload is ignored,
// the latest revision is read from the database, and the watchers are
// signaled if it grew, or if the sender is a role that may write the
// store (a change that takes no revision, such as a CA key, shows only
// so). Notifications are coalesced: at most one check runs at a time.
func (s *Store) followChanges(ctx context.Context, conn *pgx.Conn, rev int64) {
	defer close(s.feedDone)
	// The checker shares lastRev with the poll, and takes the senders of
	// the notifications received since its last check from receive.
	var revMu sync.Mutex
	lastRev := rev
	seen := func(r int64) bool {
		revMu.Lock()
		defer revMu.Unlock()
		if r > lastRev {
			lastRev = r
			return true
		}
		return false
	}
	h := &hints{wake: make(chan struct{}, 1), pids: map[int32]struct{}{}}
	checkDone := make(chan struct{})
	go func() {
		defer close(checkDone)
		s.checkHints(ctx, h, seen)
	}()
	defer func() { <-checkDone }()
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		t := s.clock.NewTimer(SafetyPoll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C():
			}
			pctx, cancel := context.WithTimeout(ctx, SafetyPoll)
			r, err := s.revision(pctx)
			cancel()
			if err == nil && seen(r) {
				s.notify()
			}
			t.Reset(SafetyPoll)
		}
	}()
	defer func() { <-pollDone }()

	failures := 0
	for {
		if conn != nil {
			err := s.receive(ctx, conn, h)
			_ = conn.Close(context.Background())
			conn = nil
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("datastore change feed lost; reconnecting", logkey.Error, err.Error())
		}
		var err error
		conn, err = s.listen(ctx)
		if ctx.Err() != nil {
			if conn != nil {
				_ = conn.Close(context.Background())
			}
			return
		}
		if err != nil {
			failures++
			if failures%10 == 1 {
				s.log.Warn("datastore change feed: cannot reconnect", logkey.Error, err.Error(), "failures", failures)
			}
			t := s.clock.NewTimer(backoff(failures))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C():
			}
			continue
		}
		failures = 0
		s.log.Info("datastore change feed restored")
		// Whatever was committed while the feed was down was not
		// notified: have the watchers read it now.
		s.notify()
	}
}

// hints are the notifications received and not yet checked: the server
// process IDs of their senders (at most one per connection to the
// database), and wake, which has a value while there are any.
type hints struct {
	wake chan struct{}
	mu   sync.Mutex // guards pids
	pids map[int32]struct{}
}

func (h *hints) add(pid int32) {
	h.mu.Lock()
	h.pids[pid] = struct{}{}
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

func (h *hints) take() []int32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	pids := make([]int32, 0, len(h.pids))
	for pid := range h.pids {
		pids = append(pids, pid)
	}
	clear(h.pids)
	return pids
}

// receive hands each notification on conn to the checker, until the
// connection fails or ctx ends.
func (s *Store) receive(ctx context.Context, conn *pgx.Conn, h *hints) error {
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		h.add(int32(n.PID))
	}
}

// checkHints checks the notifications h collects, all received since the
// last check at once, until ctx ends: it signals the watchers if the
// latest revision grew (recorded with seen) or if one of the senders is
// a session of a role that may update writ_meta, as the Stores' own are.
// A notification from any other role, whatever its payload, changes
// nothing. If the check itself fails the watchers are signaled, as a
// spurious signal costs a read and a missed one a change.
func (s *Store) checkHints(ctx context.Context, h *hints, seen func(int64) bool) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.wake:
		}
		pids := h.take()
		if len(pids) == 0 {
			continue
		}
		qctx, cancel := context.WithTimeout(ctx, SafetyPoll)
		var rev int64
		var byWriter bool
		err := s.pool.QueryRow(qctx, `SELECT m.revision, EXISTS (
			SELECT 1 FROM pg_stat_activity a WHERE a.pid = ANY($1) AND a.usesysid IS NOT NULL
			AND has_table_privilege(a.usesysid, 'writ_meta', 'UPDATE'))
			FROM writ_meta m`, pids).Scan(&rev, &byWriter)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.log.Debug("datastore change feed: cannot check a notification", logkey.Error, err.Error())
			s.notify()
			continue
		}
		if grew := seen(rev); grew || byWriter {
			s.notify()
		}
	}
}

func backoff(failures int) time.Duration {
	d := retryMin
	for i := 1; i < failures && d < retryMax; i++ {
		d *= 2
	}
	return min(d, retryMax)
}

// revision reads the latest revision.
func (s *Store) revision(ctx context.Context) (int64, error) {
	var rev int64
	err := s.pool.QueryRow(ctx, "SELECT revision FROM writ_meta").Scan(&rev)
	return rev, err
}

// classify marks errors that mean the database cannot be reached with
// datastore.ErrUnavailable. An error after ctx ended is ctx's.
func classify(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		if errors.Is(err, ctxErr) {
			return err
		}
		return fmt.Errorf("%w: %w", ctxErr, err)
	}
	if isUnavailable(err) {
		return fmt.Errorf("%w: %w", datastore.ErrUnavailable, err)
	}
	return err
}

func isUnavailable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case len(pgErr.Code) == 5 && pgErr.Code[:2] == "08": // connection exception
			return true
		case pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03", // shutdown, starting
			pgErr.Code == "53300": // too many connections
			return true
		}
		return false
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	var errno syscall.Errno
	return errors.As(err, &connectErr) || errors.As(err, &netErr) || errors.As(err, &errno) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		pgconn.SafeToRetry(err) || pgconn.Timeout(err)
}

// readTx runs fn in a read-only transaction that sees one snapshot.
func (s *Store) readTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, fn)
	return classify(ctx, err)
}

// call runs fn, which makes one statement or query, with ctx checked
// first and its error classified.
func (s *Store) call(ctx context.Context, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return classify(ctx, fn())
}

// listRows runs query, which selects a key and a data column, and calls
// fn with each row, in order. A failure is classified as call's are.
func (s *Store) listRows(ctx context.Context, query string, fn func(key, data []byte) error) error {
	return s.call(ctx, func() error {
		rows, err := s.pool.Query(ctx, query)
		if err != nil {
			return err
		}
		var key, data []byte
		_, err = pgx.ForEachRow(rows, []any{&key, &data}, func() error { return fn(key, data) })
		return err
	})
}

// writer is a write transaction. Methods that log events call lock
// first.
type writer struct {
	s   *Store
	ctx context.Context
	tx  pgx.Tx
	// locked is set once the meta row is locked; rev and pruned are
	// then the latest revision (including this transaction's) and the
	// pruned mark.
	locked      bool
	startRev    int64
	rev, pruned int64
	events      [][]any
	// changed records a change that takes no revision (join tokens, CA
	// keys), which watchers are told of all the same.
	changed bool
}

// write runs fn in a transaction and commits it. Once it has committed,
// it notifies every Store on the database (NOTIFY, sent by the commit)
// and this one's watchers, if fn changed anything.
func (s *Store) write(ctx context.Context, fn func(w *writer) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	changed := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		w := &writer{s: s, ctx: ctx, tx: tx}
		if err := fn(w); err != nil {
			return err
		}
		if err := w.finish(); err != nil {
			return err
		}
		changed = w.changed || w.rev != w.startRev
		return nil
	})
	if err != nil {
		return classify(ctx, err)
	}
	if changed {
		s.notify()
	}
	return nil
}

// lock locks the meta row, which orders every transaction that logs
// events: the next such transaction takes its revisions only after this
// one has committed, so revisions become visible in order.
func (w *writer) lock() error {
	if w.locked {
		return nil
	}
	err := w.tx.QueryRow(w.ctx, "SELECT revision, pruned FROM writ_meta FOR UPDATE").Scan(&w.rev, &w.pruned)
	if err != nil {
		return err
	}
	w.locked = true
	w.startRev = w.rev
	return nil
}

// logEvent takes the next revision for an event and queues the event.
// entryData is the entry as of the revision (entry events), or nil.
func (w *writer) logEvent(kind datastore.EventKind, key []byte, entryData []byte) int64 {
	if !w.locked {
		panic("pgstore: logEvent without lock")
	}
	w.rev++
	w.events = append(w.events, []any{w.rev, int16(kind), key, entryData})
	return w.rev
}

// finish writes the queued events, the new revision and any pruning,
// and queues the notification that the commit sends.
func (w *writer) finish() error {
	if len(w.events) > 0 {
		if len(w.events) == 1 {
			if _, err := w.tx.Exec(w.ctx, "INSERT INTO writ_events (revision, kind, key, entry) VALUES ($1, $2, $3, $4)", w.events[0]...); err != nil {
				return err
			}
		} else if _, err := w.tx.CopyFrom(w.ctx, pgx.Identifier{"writ_events"}, []string{"revision", "kind", "key", "entry"}, pgx.CopyFromRows(w.events)); err != nil {
			return err
		}
	}
	if w.locked && w.rev != w.startRev {
		if err := w.pruneEvents(w.s.maxEvents); err != nil {
			return err
		}
	}
	if w.changed || (w.locked && w.rev != w.startRev) {
		// Delivered to the listeners when the transaction commits.
		if _, err := w.tx.Exec(w.ctx, "SELECT pg_notify($1, $2)", notifyChannel, strconv.FormatInt(w.rev, 10)); err != nil {
			return err
		}
	}
	return nil
}

// pruneEvents drops the oldest events so that at most keep remain, and
// stores the revision and pruned mark.
func (w *writer) pruneEvents(keep int64) error {
	if err := w.lock(); err != nil {
		return err
	}
	pruned := w.pruned
	if upTo := w.rev - keep; upTo > pruned {
		if _, err := w.tx.Exec(w.ctx, "DELETE FROM writ_events WHERE revision <= $1", upTo); err != nil {
			return err
		}
		pruned = upTo
	}
	if pruned == w.pruned && w.rev == w.startRev {
		return nil
	}
	w.pruned = pruned
	_, err := w.tx.Exec(w.ctx, "UPDATE writ_meta SET revision = $1, pruned = $2", w.rev, w.pruned)
	return err
}
