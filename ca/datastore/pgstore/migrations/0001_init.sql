-- Writ's datastore schema, version 1. Keys are bytea so that any key a
-- caller gives is stored exactly and ordered byte by byte; records are
-- JSON (in bytea) read only by Writ.

-- The versions applied, one row each.
CREATE TABLE writ_schema_migrations (
	version    integer PRIMARY KEY,
	applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row: the latest revision, and the highest revision whose event has
-- been pruned. Every transaction that logs events locks this row first,
-- so revisions are taken, and become visible, in commit order.
CREATE TABLE writ_meta (
	id       boolean PRIMARY KEY DEFAULT true CHECK (id),
	revision bigint NOT NULL,
	pruned   bigint NOT NULL
);
INSERT INTO writ_meta (id, revision, pruned) VALUES (true, 0, 0);

-- seq is the revision that created the entry: listings follow it.
-- selectors holds each selector as len(type)|':'|type|value.
CREATE TABLE writ_entries (
	id         bytea PRIMARY KEY,
	seq        bigint NOT NULL UNIQUE,
	revision   bigint NOT NULL,
	spiffe_id  bytea NOT NULL,
	parent_id  bytea NOT NULL,
	selectors  bytea[] NOT NULL,
	unique_key bytea NOT NULL UNIQUE,
	data       bytea NOT NULL
);
CREATE INDEX writ_entries_spiffe_id ON writ_entries (spiffe_id);
CREATE INDEX writ_entries_parent_id ON writ_entries (parent_id);
CREATE INDEX writ_entries_selectors ON writ_entries USING gin (selectors);

-- entry is, for entry events, the entry as of the revision (NULL once
-- deleted, and for other kinds).
CREATE TABLE writ_events (
	revision bigint PRIMARY KEY,
	kind     smallint NOT NULL,
	key      bytea NOT NULL,
	entry    bytea
);

CREATE TABLE writ_agents (
	spiffe_id bytea PRIMARY KEY,
	data      bytea NOT NULL
);

-- expires_at is in Unix nanoseconds.
CREATE TABLE writ_join_tokens (
	hash       bytea PRIMARY KEY,
	expires_at bigint NOT NULL,
	data       bytea NOT NULL
);
CREATE INDEX writ_join_tokens_expires_at ON writ_join_tokens (expires_at);

CREATE TABLE writ_bundles (
	trust_domain bytea PRIMARY KEY,
	data         bytea NOT NULL
);

CREATE TABLE writ_ca_keys (
	id        bytea PRIMARY KEY,
	server_id bytea NOT NULL,
	state     text NOT NULL,
	data      bytea NOT NULL
);

CREATE TABLE writ_servers (
	id   bytea PRIMARY KEY,
	data bytea NOT NULL
);
