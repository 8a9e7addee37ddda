-- Federation relationships: trust domains whose bundles the servers fetch
-- from their SPIFFE bundle endpoints.
CREATE TABLE writ_federations (
	trust_domain bytea PRIMARY KEY,
	data         bytea NOT NULL
);
