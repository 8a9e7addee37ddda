package server

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/internal/datadir"
)

// Datastore backends, as ParseDatastore names them.
const (
	// BackendBolt is the bbolt file DatastoreFile in the data directory.
	BackendBolt = "bolt"
	// BackendPostgres is a PostgreSQL database, shared by several
	// servers.
	BackendPostgres = "postgres"
)

var (
	// ErrDatastoreURL means Config.Datastore is not a datastore this
	// server knows.
	ErrDatastoreURL = errors.New("invalid datastore")
	// ErrDatastoreUnavailable means the datastore is valid but this build
	// cannot open it.
	ErrDatastoreUnavailable = errors.New("datastore not available in this build")
)

// ParseDatastore returns the backend a datastore setting names: empty or
// "bolt" is BackendBolt; a postgres:// or postgresql:// URL is
// BackendPostgres. Anything else fails with ErrDatastoreURL; the error
// shows the setting with its password redacted.
func ParseDatastore(s string) (string, error) {
	if s == "" || s == BackendBolt {
		return BackendBolt, nil
	}
	scheme, _, ok := strings.Cut(s, "://")
	if !ok || !validScheme(scheme) {
		return "", fmt.Errorf("%w %s: use %q (the default) or a postgres:// URL", ErrDatastoreURL, RedactDatastore(s), BackendBolt)
	}
	switch strings.ToLower(scheme) {
	case "postgres", "postgresql":
		if _, err := url.Parse(s); err != nil {
			return "", fmt.Errorf("%w %s: not a URL", ErrDatastoreURL, RedactDatastore(s))
		}
		return BackendPostgres, nil
	}
	return "", fmt.Errorf("%w %s: unknown scheme %q; use %q (the default) or a postgres:// URL", ErrDatastoreURL, RedactDatastore(s), scheme, BackendBolt)
}

// RedactDatastore returns a datastore setting fit for logs and errors:
// in a URL, the password of its user information and the value of every
// secret-bearing parameter (secretParams: password, sslpassword, the
// client key's passphrase, ...) are replaced by "xxxxx", and so is a
// query parameter that pgx cannot read (a bad escape, a ';'), which may
// hold one, and any fragment. A setting that is not a URL, such as a
// key=value connection string, which may hold a secret anywhere, is not
// shown, and one that does not parse is shown only up to its scheme.
func RedactDatastore(s string) string {
	if s == "" || s == BackendBolt {
		return s
	}
	scheme, _, ok := strings.Cut(s, "://")
	if !ok || !validScheme(scheme) {
		return "(not a URL; not shown)"
	}
	u, err := url.Parse(s)
	if err != nil {
		return scheme + "://(unparsable URL; not shown)"
	}
	if u.RawQuery != "" {
		pairs := strings.Split(u.RawQuery, "&")
		for i, pair := range pairs {
			rawKey, _, hasValue := strings.Cut(pair, "=")
			key, err := url.QueryUnescape(rawKey)
			switch {
			case err != nil || strings.Contains(pair, ";"):
				pairs[i] = redacted
			case hasValue && secretParams[strings.ToLower(strings.TrimSpace(key))]:
				pairs[i] = rawKey + "=" + redacted
			}
		}
		u.RawQuery = strings.Join(pairs, "&")
	}
	if u.Fragment != "" || u.RawFragment != "" {
		u.Fragment, u.RawFragment = redacted, ""
	}
	return u.Redacted()
}

// redacted stands for a secret RedactDatastore does not show.
const redacted = "xxxxx"

// secretParams are the connection parameters of pgx and libpq whose values
// are secrets: the password, the client key's passphrase (sslpassword)
// and libpq's OAuth client secret.
var secretParams = map[string]bool{
	"password":            true,
	"sslpassword":         true,
	"oauth_client_secret": true,
}

// validScheme reports whether s is a URL scheme (RFC 3986).
func validScheme(s string) bool {
	for i, c := range s {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return s != ""
}

// openStore opens the datastore Config.Datastore names.
func (s *Server) openStore(ctx context.Context, dir *datadir.Dir) (datastore.Store, error) {
	backend, err := ParseDatastore(s.cfg.Datastore)
	if err != nil {
		return nil, err
	}
	switch backend {
	case BackendPostgres:
		if s.cfg.OpenPostgres == nil {
			return nil, fmt.Errorf("PostgreSQL %w", ErrDatastoreUnavailable)
		}
		store, err := s.cfg.OpenPostgres(ctx, s.cfg.Datastore, s.cfg.DatastorePassword)
		if err != nil {
			return nil, fmt.Errorf("open datastore %s: %w", RedactDatastore(s.cfg.Datastore), err)
		}
		return store, nil
	default:
		if err := checkState(dir); err != nil {
			return nil, err
		}
		return boltstore.Open(dir.Join(DatastoreFile), boltstore.Options{Logger: s.cfg.Logger})
	}
}
