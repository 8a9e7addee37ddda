-- OAuth: which SPIFFE IDs may get access tokens for which audiences and
-- scopes, the client assertions already used (until they expire), and
-- the revocations of access tokens (until the tokens expire). Keys are
-- bytea as everywhere; expires_at is in unix nanoseconds.
CREATE TABLE writ_oauth_clients (
	spiffe_id bytea PRIMARY KEY,
	data      bytea NOT NULL
);

CREATE TABLE writ_client_assertions (
	hash       bytea PRIMARY KEY,
	expires_at bigint NOT NULL
);
CREATE INDEX writ_client_assertions_expires_at ON writ_client_assertions (expires_at);

-- key is "jti:" + JTI or "client:" + client SPIFFE ID.
CREATE TABLE writ_revocations (
	key        bytea PRIMARY KEY,
	expires_at bigint NOT NULL,
	data       bytea NOT NULL
);
CREATE INDEX writ_revocations_expires_at ON writ_revocations (expires_at);
