// Package pgstore is a datastore.Store in PostgreSQL, which several CA
// servers can share.
//
//	s, err := pgstore.Open(ctx, pgstore.Config{ConnString: "postgres://writ@db/writ", Logger: log})
//
// Open applies the embedded schema migrations (migrations/*.sql,
// versioned in writ_schema_migrations) under a pg_advisory_lock, so that
// servers starting at once migrate the database once; a database with a
// newer schema than this Writ knows is refused (ErrSchemaTooNew) before
// anything is written.
//
// Ordering. Every transaction that logs events (entries, agents,
// bundles) first locks the single writ_meta row, takes its revisions
// from it and writes it back. The next such transaction waits for the
// lock until this one has committed, so revisions become visible in the
// order they were taken: a reader of Events never finds a revision below
// one it has already seen. The lock also makes CreateEntries' duplicate
// check (one query for the whole batch, then COPY) and UpdateEntry's and
// UpdateAgent's read-modify-write (SELECT ... FOR UPDATE) atomic across
// servers. ConsumeJoinToken is one DELETE ... RETURNING: one caller gets
// the row. UpdateBundle runs fn outside the transaction and writes only
// if the bundle is unchanged (checked with the row locked), else retries.
//
// Change feed. Each committing write sends NOTIFY writ_changes with the
// latest revision. Every Store LISTENs on a connection of its own; its
// own writes signal its watchers directly. As any role that can connect
// may NOTIFY, a notification is only a hint: the Store ignores its
// payload, reads the latest revision, and signals its watchers if that
// grew or if the sender's role may update writ_meta (changes that take
// no revision, such as CA keys, show only so); notifications received
// during a check are checked together afterwards. If that connection breaks, it reconnects with backoff and
// signals the watchers once it has, so that they catch up through Events;
// a poll of the latest revision every SafetyPoll backs this up.
//
// Availability. Calls made while the database cannot be reached fail
// promptly (each connection attempt is bounded by the connection
// string's connect_timeout, DefaultConnectTimeout if unset) with an
// error wrapping datastore.ErrUnavailable; the connection pool
// reconnects by itself when the database is back.
//
// Records are JSON in bytea columns, keys bytea (ordered byte by byte,
// as in boltstore); strings must be valid UTF-8 (entry.ErrInvalid
// otherwise). The store also keeps the records of the servers sharing
// it (PutServer, ListServers), which log no event.
package pgstore
