package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// fakeAdmin is an in-memory admin API: just enough state for the CLI's
// tests, and a record of every call.
type fakeAdmin struct {
	adminv1.UnimplementedEntryServiceServer
	adminv1.UnimplementedAgentServiceServer
	adminv1.UnimplementedJoinTokenServiceServer
	adminv1.UnimplementedBundleServiceServer
	adminv1.UnimplementedServerServiceServer
	adminv1.UnimplementedCAServiceServer

	socket string

	mu sync.Mutex // guards the fields below
	// calls are the full method names of the calls received.
	calls      []string
	entries    []*adminv1.Entry
	nextID     int
	batchSizes []int
	lastList   *adminv1.ListEntriesRequest
	lastUpdate *adminv1.UpdateEntryRequest
	lastToken  *adminv1.GenerateJoinTokenRequest
	agents     []*adminv1.Agent
	bundle     *adminv1.GetBundleResponse
	servers    []*adminv1.Server
	// authorities are what ListAuthorities returns; lastCA is the last
	// CAService request.
	authorities []*adminv1.Authority
	lastCA      proto.Message
	// fail, when set, is returned by every call.
	fail error
	// forget makes BatchCreateEntry answer as if it created every entry
	// without keeping any, for imports too large to keep.
	forget bool
}

const fakeCreatedAt = 1700000000

// startFake serves a fakeAdmin on a Unix socket in a short temporary
// directory (sun_path is about 104 bytes).
func startFake(t *testing.T) *fakeAdmin {
	t.Helper()
	dir, err := os.MkdirTemp("", "w")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return startFakeAt(t, filepath.Join(dir, "a.sock"))
}

// startFakeAt serves a fakeAdmin on a Unix socket at path.
func startFakeAt(t *testing.T, path string) *fakeAdmin {
	t.Helper()
	f := &fakeAdmin{socket: path}
	lis, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(
		grpc.MaxRecvMsgSize(maxAdminMessageSize),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := f.record(info.FullMethod); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := f.record(info.FullMethod); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	)
	adminv1.RegisterEntryServiceServer(s, f)
	adminv1.RegisterAgentServiceServer(s, f)
	adminv1.RegisterJoinTokenServiceServer(s, f)
	adminv1.RegisterBundleServiceServer(s, f)
	adminv1.RegisterServerServiceServer(s, f)
	adminv1.RegisterCAServiceServer(s, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(lis)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return f
}

func (f *fakeAdmin) record(method string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, method)
	return f.fail
}

func (f *fakeAdmin) callNames() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeAdmin) setAgents(agents []*adminv1.Agent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.agents = agents
}

func (f *fakeAdmin) setServers(servers []*adminv1.Server) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.servers = servers
}

func (f *fakeAdmin) ListServers(context.Context, *adminv1.ListServersRequest) (*adminv1.ListServersResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*adminv1.Server, len(f.servers))
	for i, s := range f.servers {
		out[i] = proto.Clone(s).(*adminv1.Server)
	}
	return &adminv1.ListServersResponse{Servers: out}, nil
}

func (f *fakeAdmin) setBundle(b *adminv1.GetBundleResponse) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bundle = b
}

func (f *fakeAdmin) setFail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

// seed stores entries as they are, bypassing all checks.
func (f *fakeAdmin) seed(es ...*adminv1.Entry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range es {
		f.entries = append(f.entries, proto.Clone(e).(*adminv1.Entry))
	}
}

func entryKey(e *adminv1.Entry) string {
	return e.GetSpiffeId() + "\x00" + e.GetParentId() + "\x00" + strings.Join(e.GetSelectors(), "\x00")
}

func fakeEntryID(n int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", n) }

func (f *fakeAdmin) BatchCreateEntry(_ context.Context, req *adminv1.BatchCreateEntryRequest) (*adminv1.BatchCreateEntryResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.batchSizes = append(f.batchSizes, len(req.GetEntries()))
	if f.forget {
		resp := &adminv1.BatchCreateEntryResponse{}
		for _, e := range req.GetEntries() {
			f.nextID++
			c := proto.Clone(e).(*adminv1.Entry)
			c.Id = fakeEntryID(f.nextID)
			resp.Results = append(resp.Results, &adminv1.EntryResult{Status: &adminv1.Status{}, Entry: c})
		}
		return resp, nil
	}
	keys := make(map[string]bool, len(f.entries))
	for _, e := range f.entries {
		keys[entryKey(e)] = true
	}
	resp := &adminv1.BatchCreateEntryResponse{}
	for _, e := range req.GetEntries() {
		if keys[entryKey(e)] {
			resp.Results = append(resp.Results, &adminv1.EntryResult{
				Status: &adminv1.Status{Code: int32(codes.AlreadyExists), Message: "similar entry already exists"},
			})
			continue
		}
		keys[entryKey(e)] = true
		f.nextID++
		c := proto.Clone(e).(*adminv1.Entry)
		c.Id = fakeEntryID(f.nextID)
		c.CreatedAt = fakeCreatedAt
		c.Revision = 1
		f.entries = append(f.entries, c)
		resp.Results = append(resp.Results, &adminv1.EntryResult{Status: &adminv1.Status{}, Entry: proto.Clone(c).(*adminv1.Entry)})
	}
	return resp, nil
}

func (f *fakeAdmin) find(id string) (int, error) {
	for i, e := range f.entries {
		if e.GetId() == id {
			return i, nil
		}
	}
	return 0, status.Error(codes.NotFound, "entry not found")
}

func (f *fakeAdmin) GetEntry(_ context.Context, req *adminv1.GetEntryRequest) (*adminv1.Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.find(req.GetId())
	if err != nil {
		return nil, err
	}
	return f.entries[i], nil
}

func (f *fakeAdmin) ListEntries(req *adminv1.ListEntriesRequest, stream grpc.ServerStreamingServer[adminv1.ListEntriesResponse]) error {
	f.mu.Lock()
	f.lastList = proto.Clone(req).(*adminv1.ListEntriesRequest)
	var match []*adminv1.Entry
	for _, e := range f.entries {
		if req.GetSpiffeId() != "" && e.GetSpiffeId() != req.GetSpiffeId() ||
			req.GetParentId() != "" && e.GetParentId() != req.GetParentId() {
			continue
		}
		all := true
		for _, s := range req.GetSelectors() {
			all = all && slices.Contains(e.GetSelectors(), s)
		}
		if all {
			match = append(match, e)
		}
	}
	f.mu.Unlock()
	// Pages of two, so that the client must read them all.
	for page := range slices.Chunk(match, 2) {
		if err := stream.Send(&adminv1.ListEntriesResponse{Entries: page}); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeAdmin) UpdateEntry(_ context.Context, req *adminv1.UpdateEntryRequest) (*adminv1.Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastUpdate = proto.Clone(req).(*adminv1.UpdateEntryRequest)
	i, err := f.find(req.GetEntry().GetId())
	if err != nil {
		return nil, err
	}
	e, in := f.entries[i], req.GetEntry()
	for _, field := range req.GetUpdateMask() {
		switch field {
		case fieldSPIFFEID:
			e.SpiffeId = in.GetSpiffeId()
		case fieldParentID:
			e.ParentId = in.GetParentId()
		case fieldSelectors:
			e.Selectors = in.GetSelectors()
		case fieldX509SVIDTTL:
			e.X509SvidTtl = in.GetX509SvidTtl()
		case fieldJWTSVIDTTL:
			e.JwtSvidTtl = in.GetJwtSvidTtl()
		case fieldDNSNames:
			e.DnsNames = in.GetDnsNames()
		case fieldAdmin:
			e.Admin = in.GetAdmin()
		case fieldDownstream:
			e.Downstream = in.GetDownstream()
		case fieldFederatesWith:
			e.FederatesWith = in.GetFederatesWith()
		default:
			return nil, status.Errorf(codes.InvalidArgument, "unknown field %q in update mask", field)
		}
	}
	e.Revision++
	return e, nil
}

func (f *fakeAdmin) DeleteEntry(_ context.Context, req *adminv1.DeleteEntryRequest) (*adminv1.Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.find(req.GetId())
	if err != nil {
		return nil, err
	}
	e := f.entries[i]
	f.entries = slices.Delete(f.entries, i, i+1)
	return e, nil
}

func (f *fakeAdmin) ListAgents(context.Context, *adminv1.ListAgentsRequest) (*adminv1.ListAgentsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &adminv1.ListAgentsResponse{Agents: f.agents}, nil
}

func (f *fakeAdmin) agent(id string, change func(*adminv1.Agent)) (*adminv1.Agent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range f.agents {
		if a.GetSpiffeId() == id {
			change(a)
			return proto.Clone(a).(*adminv1.Agent), nil
		}
	}
	return nil, status.Error(codes.NotFound, "agent not found")
}

func (f *fakeAdmin) GetAgent(_ context.Context, req *adminv1.GetAgentRequest) (*adminv1.Agent, error) {
	return f.agent(req.GetSpiffeId(), func(*adminv1.Agent) {})
}

func (f *fakeAdmin) EvictAgent(_ context.Context, req *adminv1.EvictAgentRequest) (*adminv1.Agent, error) {
	a, err := f.agent(req.GetSpiffeId(), func(*adminv1.Agent) {})
	if err == nil {
		f.mu.Lock()
		f.agents = slices.DeleteFunc(f.agents, func(x *adminv1.Agent) bool { return x.GetSpiffeId() == req.GetSpiffeId() })
		f.mu.Unlock()
	}
	return a, err
}

func (f *fakeAdmin) BanAgent(_ context.Context, req *adminv1.BanAgentRequest) (*adminv1.Agent, error) {
	return f.agent(req.GetSpiffeId(), func(a *adminv1.Agent) { a.Banned = true })
}

func (f *fakeAdmin) UnbanAgent(_ context.Context, req *adminv1.UnbanAgentRequest) (*adminv1.Agent, error) {
	return f.agent(req.GetSpiffeId(), func(a *adminv1.Agent) { a.Banned = false })
}

func (f *fakeAdmin) GenerateJoinToken(_ context.Context, req *adminv1.GenerateJoinTokenRequest) (*adminv1.GenerateJoinTokenResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastToken = proto.Clone(req).(*adminv1.GenerateJoinTokenRequest)
	return &adminv1.GenerateJoinTokenResponse{
		Token:     "2b6f0cc904d137be2e1730235f5664094b831186",
		SpiffeId:  req.GetSpiffeId(),
		ExpiresAt: fakeCreatedAt + 600,
	}, nil
}

func (f *fakeAdmin) GetBundle(context.Context, *adminv1.GetBundleRequest) (*adminv1.GetBundleResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.bundle == nil {
		return nil, status.Error(codes.NotFound, "no bundle")
	}
	return f.bundle, nil
}

// cliResult is what one run of the CLI produced.
type cliResult struct {
	stdout, stderr string
	code           int
}

// runCLI runs writ in-process with args and stdin.
func runCLI(t *testing.T, stdin string, args ...string) cliResult {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), append([]string{"writ"}, args...), strings.NewReader(stdin), &stdout, &stderr)
	return cliResult{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

// terminalBuffer is a stderr that says it is a terminal.
type terminalBuffer struct{ bytes.Buffer }

func (*terminalBuffer) IsTerminal() bool { return true }

// args returns args followed by --admin-socket with the fake's socket.
func (f *fakeAdmin) args(args ...string) []string {
	return append(args, "--admin-socket", f.socket)
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/writ -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (run with -update to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}
