// Command writ runs the Writ CA server and agent and administers the
// server through its admin API on a local Unix socket.
//
// # Admin commands
//
//	writ entry create --spiffe-id ID --parent-id ID --selector TYPE:VALUE [--selector ...]
//	                  [--x509-ttl TTL] [--jwt-ttl TTL] [--dns-name NAME ...] [--admin] [--downstream]
//	writ entry create --file FILE|-
//	writ entry list   [--spiffe-id ID] [--parent-id ID] [--selector TYPE:VALUE ...]
//	writ entry show   --id ID
//	writ entry update --id ID [any entry flag of create] [--clear-dns-names]
//	writ entry delete --id ID
//	writ agent list
//	writ agent show|evict|ban|unban --spiffe-id ID
//	writ token generate --spiffe-id ID [--ttl TTL]
//	writ bundle show [--format pem|spiffe]
//
// Every admin command also takes --admin-socket PATH (or WRIT_ADMIN_SOCKET;
// default $WRIT_DATA_DIR/admin.sock, else writ-data/admin.sock), --output
// text|json (default text) and --timeout DURATION (default 10s, for each
// call). Repeated flags take each value whole: they are not split on
// commas or trimmed.
//
// Every ID, selector, DNS name and TTL is checked with the parsers of
// package entry, the ones the server uses, before anything is sent, so
// bad input is refused with the server's message without a connection.
// Entries are also checked as a whole (entry.Validate, in the trust
// domain of their SPIFFE ID; the server also checks it is its own).
// `entry update` checks the fields it changes the same way. TTLs are Go
// durations ("90s", "1h") or whole seconds ("3600").
//
// # Output
//
// Text output is for people; every value from the server or the user is
// printed with control characters escaped (entry.Printable). JSON output
// uses the admin API's field names; DEL and C1 controls are escaped too.
// An entry:
//
//	{"id": "…", "spiffe_id": "…", "parent_id": "…", "selectors": ["type:value"],
//	 "x509_svid_ttl": 3600, "jwt_svid_ttl": 0, "dns_names": [], "admin": false,
//	 "downstream": false, "created_at": 1700000000, "revision": 1}
//
// TTLs are whole seconds (0: the server's default) and times Unix seconds.
// An agent:
//
//	{"spiffe_id", "attestation_type", "serial_number", "cert_not_after",
//	 "banned", "created_at", "updated_at"}
//
// with times in Unix seconds. A join token: {"token", "spiffe_id",
// "expires_at"}, expires_at in RFC 3339 (UTC). In text, `token generate`
// prints the token alone; `entry create` prints the new entry's ID alone.
// `bundle show --output json` is `bundle show --format spiffe`: the SPIFFE
// bundle, indented.
//
// # Importing entries
//
// `entry create --file` reads a JSON array of entries in the shape above
// (so `entry list --output json` can be imported as is). "id",
// "created_at" and "revision" are ignored: the server assigns them.
// Unknown fields are errors. The whole file is read and checked first; if
// any entry is invalid, each is reported and none is sent. Entries are
// sent in batches of at most 1,000 (and 3 MiB); when stderr is a terminal,
// progress is shown there. The result of each entry follows: in text, a
// line "entry N (spiffe_id ID): message" for each that failed and
// "created X of Y entries"; in JSON, an array of
//
//	{"index": N, "status": "ok" or a gRPC code name such as "AlreadyExists",
//	 "message": "…", "entry": {…}}
//
// where N counts from 0 in the input array and entry is the entry as
// created, or as sent if it failed (so the failures can be imported
// again). If a whole batch fails, the import stops and says where.
//
// # Errors and exit codes
//
// Errors go to stderr as "writ: message", with the server's message for
// errors from the server. Exit codes:
//
//	0  success
//	1  the request failed or was refused: invalid values (checked locally
//	   or by the server), server errors, an unreachable socket, or any
//	   entry of an import that failed
//	2  a malformed command line: unknown command or flag, a missing
//	   required flag, conflicting flags, an unexpected argument, or an
//	   unknown --output or --format
package main
