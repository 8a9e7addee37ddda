package admin_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/datastore"
)

// adminCall is one call of each admin method, with valid arguments.
type adminCall struct {
	method string
	call   func(ctx context.Context, conn *grpc.ClientConn) error
}

func adminCalls() []adminCall {
	const id = "0a1b2c3d-0000-4000-8000-000000000000"
	return []adminCall{
		{adminv1.EntryService_BatchCreateEntry_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewEntryServiceClient(c).BatchCreateEntry(ctx, &adminv1.BatchCreateEntryRequest{Entries: []*adminv1.Entry{validEntry(0)}})
			return err
		}},
		{adminv1.EntryService_GetEntry_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewEntryServiceClient(c).GetEntry(ctx, &adminv1.GetEntryRequest{Id: id})
			return err
		}},
		{adminv1.EntryService_ListEntries_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			stream, err := adminv1.NewEntryServiceClient(c).ListEntries(ctx, &adminv1.ListEntriesRequest{})
			if err != nil {
				return err
			}
			for {
				if _, err := stream.Recv(); err != nil {
					if errors.Is(err, io.EOF) {
						return nil
					}
					return err
				}
			}
		}},
		{adminv1.EntryService_UpdateEntry_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewEntryServiceClient(c).UpdateEntry(ctx, &adminv1.UpdateEntryRequest{Entry: &adminv1.Entry{Id: id}, UpdateMask: []string{"admin"}})
			return err
		}},
		{adminv1.EntryService_DeleteEntry_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewEntryServiceClient(c).DeleteEntry(ctx, &adminv1.DeleteEntryRequest{Id: id})
			return err
		}},
		{adminv1.AgentService_ListAgents_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewAgentServiceClient(c).ListAgents(ctx, &adminv1.ListAgentsRequest{})
			return err
		}},
		{adminv1.AgentService_GetAgent_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewAgentServiceClient(c).GetAgent(ctx, &adminv1.GetAgentRequest{SpiffeId: agentID})
			return err
		}},
		{adminv1.AgentService_EvictAgent_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewAgentServiceClient(c).EvictAgent(ctx, &adminv1.EvictAgentRequest{SpiffeId: agentID})
			return err
		}},
		{adminv1.AgentService_BanAgent_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewAgentServiceClient(c).BanAgent(ctx, &adminv1.BanAgentRequest{SpiffeId: agentID})
			return err
		}},
		{adminv1.AgentService_UnbanAgent_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewAgentServiceClient(c).UnbanAgent(ctx, &adminv1.UnbanAgentRequest{SpiffeId: agentID})
			return err
		}},
		{adminv1.JoinTokenService_GenerateJoinToken_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewJoinTokenServiceClient(c).GenerateJoinToken(ctx, &adminv1.GenerateJoinTokenRequest{SpiffeId: agentID})
			return err
		}},
		{adminv1.BundleService_GetBundle_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewBundleServiceClient(c).GetBundle(ctx, &adminv1.GetBundleRequest{})
			return err
		}},
		{adminv1.ServerService_ListServers_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewServerServiceClient(c).ListServers(ctx, &adminv1.ListServersRequest{})
			return err
		}},
		{adminv1.CAService_ListAuthorities_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewCAServiceClient(c).ListAuthorities(ctx, &adminv1.ListAuthoritiesRequest{})
			return err
		}},
		{adminv1.CAService_PrepareAuthority_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewCAServiceClient(c).PrepareAuthority(ctx, &adminv1.PrepareAuthorityRequest{Kind: "x509"})
			return err
		}},
		{adminv1.CAService_ActivateAuthority_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewCAServiceClient(c).ActivateAuthority(ctx, &adminv1.ActivateAuthorityRequest{Kind: "x509", Id: "ab"})
			return err
		}},
		{adminv1.CAService_TaintAuthority_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewCAServiceClient(c).TaintAuthority(ctx, &adminv1.TaintAuthorityRequest{Kind: "x509", Id: "ab"})
			return err
		}},
		{adminv1.CAService_RevokeAuthority_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewCAServiceClient(c).RevokeAuthority(ctx, &adminv1.RevokeAuthorityRequest{Kind: "x509", Id: "ab"})
			return err
		}},
		{adminv1.CAService_Rotate_FullMethodName, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := adminv1.NewCAServiceClient(c).Rotate(ctx, &adminv1.RotateRequest{})
			return err
		}},
	}
}

// checkHealthPublic fails t unless both health methods answer.
func (e *env) checkHealthPublic(t *testing.T) {
	t.Helper()
	ctx := ctxT(t)
	if _, err := e.health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("Health/Check: %v", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := e.health.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	if err != nil {
		t.Errorf("Health/Watch: %v", err)
	}
}

func TestAuthorizedCallerAllowed(t *testing.T) {
	// Only this process's uid is allowed, not root as such.
	e := newEnv(t, envOptions{allowed: []uint32{uint32(os.Getuid())}})
	e.seedAgents(t)
	for _, c := range adminCalls() {
		if err := c.call(ctxT(t), e.conn); status.Code(err) == codes.PermissionDenied {
			t.Errorf("%s: %v", c.method, err)
		}
	}
	e.checkHealthPublic(t)
}

func TestUnlistedMethodDenied(t *testing.T) {
	e := newEnv(t, envOptions{})
	err := e.conn.Invoke(ctxT(t), unlistedMethod, &emptypb.Empty{}, &emptypb.Empty{})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("unlisted method: %v, want PermissionDenied", err)
	}
	if e.unlistedCalled.Load() {
		t.Error("unlisted method's handler ran")
	}
	var denied bool
	for _, r := range e.logs.all() {
		denied = denied || r.attrs["method"].String() == unlistedMethod && r.attrs["code"].String() == "PermissionDenied"
	}
	if !denied {
		t.Error("denial of the unlisted method was not logged")
	}
}

func TestUnknownUIDDenied(t *testing.T) {
	// An allowed set without this process's uid, as if another user had
	// called; root is left out too, in case the tests run as root.
	own := uint32(os.Getuid())
	e := newEnv(t, envOptions{allowed: []uint32{own + 1}})
	e.seedAgents(t)
	for _, c := range adminCalls() {
		t.Run(strings.TrimPrefix(c.method, "/writ.admin.v1."), func(t *testing.T) {
			e.logs.reset()
			if err := c.call(ctxT(t), e.conn); status.Code(err) != codes.PermissionDenied {
				t.Fatalf("%v, want PermissionDenied", err)
			}
			recs := e.logs.all()
			if len(recs) != 1 || recs[0].attrs["uid"].Uint64() != uint64(own) || recs[0].attrs["code"].String() != "PermissionDenied" {
				t.Errorf("want one denial record with the caller's uid, got %v", recs)
			}
		})
	}
	e.checkHealthPublic(t)
	if entries, err := e.store.ListEntries(ctxT(t), datastore.EntryFilter{}); err != nil || len(entries) != 0 {
		t.Errorf("denied calls created entries: %v, %v", entries, err)
	}
	if a, err := e.store.FetchAgent(ctxT(t), spiffeid.RequireFromString(agentID)); err != nil || a.Banned {
		t.Errorf("denied calls changed the agent: %+v, %v", a, err)
	}
}

func TestNoPeerCredentialsDenied(t *testing.T) {
	e := newEnv(t, envOptions{creds: insecure.NewCredentials()})
	for _, c := range adminCalls() {
		if err := c.call(ctxT(t), e.conn); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s: %v, want PermissionDenied", c.method, err)
		}
	}
	e.checkHealthPublic(t)
}

func TestWithoutInterceptorsDenied(t *testing.T) {
	e := newEnv(t, envOptions{noInterceptors: true})
	for _, c := range adminCalls() {
		if err := c.call(ctxT(t), e.conn); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s: %v, want PermissionDenied", c.method, err)
		}
	}
}

const helperSocketEnv = "WRIT_ADMIN_TEST_HELPER_SOCKET"

// TestOtherUserDenied connects as another user (nobody) through a socket
// whose mode lets everyone connect: the uid check alone must refuse it.
func TestOtherUserDenied(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another user; TestUnknownUIDDenied covers the check")
	}
	const nobody = 65534
	e := newEnv(t, envOptions{})
	if err := os.Chmod(filepath.Dir(e.socket), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(e.socket, 0o777); err != nil {
		t.Fatal(err)
	}

	// Copy the test binary where nobody can run it.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	binDir, err := os.MkdirTemp("", "w")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(binDir) })
	if err := os.Chmod(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(binDir, "admin.test")
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}

	cmd := exec.CommandContext(ctxT(t), bin, "-test.run=^TestHelperAdminClient$", "-test.count=1")
	cmd.Dir = binDir
	cmd.Env = append(os.Environ(), helperSocketEnv+"="+e.socket)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v\n%s\n%s", err, out, stderr.Bytes())
	}
	got := make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			got[k] = v
		}
	}
	want := map[string]string{"health": "OK", "GetBundle": "PermissionDenied", "GenerateJoinToken": "PermissionDenied"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("as nobody, %s: %q, want %q\n%s", k, got[k], v, out)
		}
	}
	recs := e.logs.audit(adminv1.JoinTokenService_GenerateJoinToken_FullMethodName)
	if len(recs) != 1 || recs[0].attrs["uid"].Uint64() != nobody || recs[0].attrs["code"].String() != "PermissionDenied" {
		t.Errorf("audit of nobody's GenerateJoinToken: %v", recs)
	}
}

// TestHelperAdminClient is the client TestOtherUserDenied runs as another
// user. It does nothing in a normal run.
func TestHelperAdminClient(t *testing.T) {
	socket := os.Getenv(helperSocketEnv)
	if socket == "" {
		t.Skip("helper for TestOtherUserDenied")
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := ctxT(t)
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	fmt.Printf("health=%s\n", status.Code(err))
	_, err = adminv1.NewBundleServiceClient(conn).GetBundle(ctx, &adminv1.GetBundleRequest{})
	fmt.Printf("GetBundle=%s\n", status.Code(err))
	_, err = adminv1.NewJoinTokenServiceClient(conn).GenerateJoinToken(ctx, &adminv1.GenerateJoinTokenRequest{SpiffeId: agentID})
	fmt.Printf("GenerateJoinToken=%s\n", status.Code(err))
}
