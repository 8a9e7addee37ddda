package pgstore

import (
	"net/url"
	"strings"
	"testing"

	"writ.dev/writ/internal/pgtest"
)

// TestJITOff checks that the store's connections run with JIT off unless
// the connection string turns it on.
func TestJITOff(t *testing.T) {
	dsn := pgtest.Shared(t).NewDatabase(t)
	for _, tc := range []struct {
		name, dsn, want string
	}{
		{name: "default", dsn: dsn, want: "off"},
		{name: "connection string", dsn: withParam(dsn, "jit", "on"), want: "on"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(t.Context(), Config{ConnString: tc.dsn})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var got string
			if err := s.pool.QueryRow(t.Context(), "SHOW jit").Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("jit = %q, want %q", got, tc.want)
			}
		})
	}
}

// withParam adds a run-time parameter to a URL or keyword/value
// connection string.
func withParam(dsn, key, value string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		if u, err := url.Parse(dsn); err == nil {
			q := u.Query()
			q.Set(key, value)
			u.RawQuery = q.Encode()
			return u.String()
		}
	}
	return dsn + " " + key + "=" + value
}
