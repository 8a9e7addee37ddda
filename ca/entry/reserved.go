package entry

import (
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Reserved SPIFFE ID paths. Every path under ReservedPath belongs to Writ
// itself: agents live under AgentPathPrefix and the CA server is
// ServerPath. No registration entry may name an ID under ReservedPath, so
// that no workload can ever hold an agent's or the server's identity.
const (
	// ReservedPath is the path segment Writ keeps for itself.
	ReservedPath = "/writ"
	// AgentPathPrefix starts the path of every agent's SPIFFE ID.
	AgentPathPrefix = ReservedPath + "/agent/"
	// JoinTokenAgentPathPrefix starts the agent IDs the server chooses
	// for join tokens made without an ID.
	JoinTokenAgentPathPrefix = AgentPathPrefix + "join_token/"
	// ServerPath is the path of the CA server's own SPIFFE ID.
	ServerPath = ReservedPath + "/server"
)

// IsReserved reports whether id's path is ReservedPath or under it.
func IsReserved(id spiffeid.ID) bool {
	p := id.Path()
	return p == ReservedPath || strings.HasPrefix(p, ReservedPath+"/")
}

// IsAgentID reports whether id's path is under AgentPathPrefix (with at
// least one segment after it).
func IsAgentID(id spiffeid.ID) bool {
	return len(id.Path()) > len(AgentPathPrefix) && strings.HasPrefix(id.Path(), AgentPathPrefix)
}

// ServerID returns the CA server's SPIFFE ID in trust domain td,
// spiffe://<td>/writ/server, or the zero ID if td is zero.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	id, err := spiffeid.FromPath(td, ServerPath)
	if err != nil {
		return spiffeid.ID{}
	}
	return id
}

// CheckWorkloadID reports whether id may be an entry's SPIFFE ID: not
// under the reserved path.
func CheckWorkloadID(id spiffeid.ID) error {
	if IsReserved(id) {
		return invalid("SPIFFE ID %q is under %s/, which is reserved for Writ's agents and server; choose another path", brief(id.String()), ReservedPath)
	}
	return nil
}

// CheckAgentID reports whether id may be an agent's SPIFFE ID: under
// AgentPathPrefix.
func CheckAgentID(id spiffeid.ID) error {
	if !IsAgentID(id) {
		return invalid("SPIFFE ID %q is not an agent ID: agent IDs are under %s (such as spiffe://%s%snode1)", brief(id.String()), AgentPathPrefix, id.TrustDomain().Name(), AgentPathPrefix)
	}
	return nil
}

// ParseWorkloadID parses the SPIFFE ID of an entry: in td, with a path,
// not reserved (see CheckWorkloadID).
func ParseWorkloadID(td spiffeid.TrustDomain, s string) (spiffeid.ID, error) {
	id, err := ParseIDInDomain(td, s)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if err := CheckWorkloadID(id); err != nil {
		return spiffeid.ID{}, err
	}
	return id, nil
}

// ParseAgentID parses an agent's SPIFFE ID: in td, under AgentPathPrefix.
func ParseAgentID(td spiffeid.TrustDomain, s string) (spiffeid.ID, error) {
	id, err := ParseIDInDomain(td, s)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if err := CheckAgentID(id); err != nil {
		return spiffeid.ID{}, err
	}
	return id, nil
}
