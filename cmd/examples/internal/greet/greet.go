// Package greet holds what the greeter example server and client share:
// their default SPIFFE IDs, an ID list flag, and how they reach the
// Workload API.
package greet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// DefaultAudience is the JWT-SVID audience the greeter server accepts
// and the client asks for.
const DefaultAudience = "greeter"

// Path is the path of the greeting on both endpoints.
const Path = "/hello"

// StartTimeout bounds the wait for the first SVID from the Workload API.
const StartTimeout = 15 * time.Second

// DevUserID is the SPIFFE ID `writ dev` registers for this process's
// user in trust domain td: spiffe://<td>/dev/<login name>, or
// /dev/uid-<uid> when the login name is not a valid path segment (or is
// "agent"). It follows the rule of cmd/writ/dev.go.
func DevUserID(td spiffeid.TrustDomain) spiffeid.ID {
	uid := os.Geteuid()
	name := ""
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if name == "" || name == "agent" || spiffeid.ValidatePathSegment(name) != nil {
		name = "uid-" + strconv.Itoa(uid)
	}
	return spiffeid.RequireFromPath(td, "/dev/"+name)
}

// IDList is a repeatable flag of SPIFFE IDs.
type IDList []spiffeid.ID

// String implements flag.Value.
func (l *IDList) String() string {
	s := make([]string, len(*l))
	for i, id := range *l {
		s[i] = id.String()
	}
	return strings.Join(s, ",")
}

// Set implements flag.Value: one SPIFFE ID, which must be canonical.
func (l *IDList) Set(v string) error {
	id, err := spiffeid.FromString(v)
	if err != nil {
		return fmt.Errorf("%q is not a SPIFFE ID: %w", v, err)
	}
	if id.String() != v || id.Path() == "" {
		return fmt.Errorf("%q is not a canonical workload SPIFFE ID (spiffe://trust-domain/path)", v)
	}
	*l = append(*l, id)
	return nil
}

// NoID asks NewX509Source for the Workload API's default SVID.
var NoID spiffeid.ID

// NewX509Source connects to the Workload API named by
// SPIFFE_ENDPOINT_SOCKET and waits for this process's X.509-SVIDs. If id
// is not zero, the source presents the SVID of id (which must be one of
// this process's); otherwise the Workload API's default (the first).
func NewX509Source(ctx context.Context, id spiffeid.ID) (*workloadapi.X509Source, error) {
	if os.Getenv(workloadapi.SocketEnv) == "" {
		return nil, fmt.Errorf("%s is not set: start `writ dev` and run the line it prints, export %s=unix:///...", workloadapi.SocketEnv, workloadapi.SocketEnv)
	}
	ctx, cancel := context.WithTimeout(ctx, StartTimeout)
	defer cancel()
	var opts []workloadapi.X509SourceOption
	if !id.IsZero() {
		opts = append(opts, workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			for _, s := range svids {
				if s.ID == id {
					return s
				}
			}
			return nil
		}))
	}
	src, err := workloadapi.NewX509Source(ctx, opts...)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("no X.509-SVID from the Workload API at %s within %s: is `writ dev` running, and is there an entry for uid %d?", os.Getenv(workloadapi.SocketEnv), StartTimeout, os.Geteuid())
		}
		return nil, fmt.Errorf("Workload API at %s: %w", os.Getenv(workloadapi.SocketEnv), err)
	}
	svid, err := src.GetX509SVID()
	if err != nil || svid == nil {
		src.Close()
		if !id.IsZero() {
			return nil, fmt.Errorf("this process has no SVID for %s", id)
		}
		return nil, fmt.Errorf("no X.509-SVID: %v", err)
	}
	return src, nil
}
