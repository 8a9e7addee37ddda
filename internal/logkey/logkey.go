package logkey

// Identities a record concerns.
const (
	// SPIFFEID is the SPIFFE ID of the workload or agent a record is
	// about; on the server's node API, the calling agent's.
	SPIFFEID = "spiffe_id"
	// SPIFFEIDs lists several SPIFFE IDs.
	SPIFFEIDs = "spiffe_ids"
	// EntryID is the ID of a registration entry.
	EntryID = "entry_id"
	// EntryIDs lists several entry IDs.
	EntryIDs = "entry_ids"
	// Serial is a certificate's serial number.
	Serial = "serial"
	// NotAfter is a certificate's or key's expiry.
	NotAfter = "not_after"
	// KeyKind and KeyID describe a CA key.
	KeyKind = "key_kind"
	KeyID   = "key_id"
)

// Callers and requests.
const (
	// Method is the full gRPC method name of a call.
	Method = "method"
	// Code is the gRPC status code answered.
	Code = "code"
	// UID, GID and PID are a local caller's credentials.
	UID = "uid"
	GID = "gid"
	PID = "pid"
	// Peer is the network address of a remote caller.
	Peer = "peer_addr"
	// CallerID is the verified SPIFFE ID of a remote caller (the admin
	// API over mTLS); SPIFFEID stays the ID the call acted on.
	CallerID = "caller_spiffe_id"
	// Audit marks audit records (true).
	Audit = "audit"
	// Forced says whether a CA key mutation was forced.
	Forced = "forced"
	// JTI is the jti of an OAuth access token (an identifier, not a
	// secret).
	JTI = "jti"
)

// Outcomes and context.
const (
	// Error holds an error's message. It is the only key for errors: not
	// "err".
	Error = "error"
	// Reason says why something was refused or redone.
	Reason = "reason"
	// Revision is a datastore revision.
	Revision = "revision"
	// Component names the part of the process that wrote the record.
	Component = "component"
	// Task names a task of a process's task group (a listener, a loop).
	Task = "task"
	// Address is the address a listener is bound to.
	Address = "address"
	// ServerAddress is the address of a CA server an agent talks to.
	ServerAddress = "server_address"
	// AttestationType names a node attestation method (join_token,
	// x509pop, sshpop).
	AttestationType = "attestation_type"
	// TrustDomain is a trust domain name.
	TrustDomain = "trust_domain"
	// Path is a file or socket path.
	Path = "path"
	// Host and Database describe a database connection (never its
	// password).
	Host     = "host"
	Database = "database"
	// Size is a size in bytes.
	Size = "size"
)
