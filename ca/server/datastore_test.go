package server_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/datastore/boltstore"
	"writ.dev/writ/ca/server"
)

func TestParseDatastore(t *testing.T) {
	for _, tc := range []struct {
		in      string
		backend string
	}{
		{"", server.BackendBolt},
		{"bolt", server.BackendBolt},
		{"postgres://writ@db.example.org:5432/writ?sslmode=verify-full", server.BackendPostgres},
		{"postgresql://writ:pw@db/writ", server.BackendPostgres},
		{"POSTGRES://db/writ", server.BackendPostgres},
		{"mysql://writ:pw@db/writ", ""},
		{"bolt://x", ""},
		{"/var/lib/writ/datastore.db", ""},
		{"host=db user=writ password=pw", ""},
		{"Bolt", ""},
		{"writ:pw@db://x", ""},
	} {
		got, err := server.ParseDatastore(tc.in)
		if tc.backend == "" {
			if !errors.Is(err, server.ErrDatastoreURL) {
				t.Errorf("ParseDatastore(%q) = %q, %v; want ErrDatastoreURL", tc.in, got, err)
			}
			if err != nil && strings.Contains(err.Error(), "pw") {
				t.Errorf("ParseDatastore(%q): error shows the password: %v", tc.in, err)
			}
			continue
		}
		if err != nil || got != tc.backend {
			t.Errorf("ParseDatastore(%q) = %q, %v; want %q", tc.in, got, err, tc.backend)
		}
	}
}

func TestRedactDatastore(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"bolt", "bolt"},
		{"postgres://writ:s3cret@db:5432/writ?sslmode=require", "postgres://writ:xxxxx@db:5432/writ?sslmode=require"},
		{"postgres://writ@db/writ?password=s3cret&sslmode=require", "postgres://writ@db/writ?password=xxxxx&sslmode=require"},
		{"postgres://db/writ", "postgres://db/writ"},
		{"postgres://writ:s3cret@db/%zz", "postgres://(unparsable URL; not shown)"},
		{"host=db password=s3cret", "(not a URL; not shown)"},
		{"host=db sslkey=/k.pem sslpassword=s3cret", "(not a URL; not shown)"},
		{"postgres://writ@db/writ?sslmode=verify-full&sslkey=/etc/writ/k.pem&sslpassword=s3cret", "postgres://writ@db/writ?sslmode=verify-full&sslkey=/etc/writ/k.pem&sslpassword=xxxxx"},
		{"postgres://writ:s3cret@db/writ?SSLPassword=s3cret&password=s3cret", "postgres://writ:xxxxx@db/writ?SSLPassword=xxxxx&password=xxxxx"},
		{"postgres://writ@db/writ?ssl%70assword=s3cret", "postgres://writ@db/writ?ssl%70assword=xxxxx"},
		{"postgres://writ@db/writ?oauth_client_secret=s3cret&application_name=writ", "postgres://writ@db/writ?oauth_client_secret=xxxxx&application_name=writ"},
		{"postgres://writ@db/writ?sslmode=require;sslpassword=s3cret", "postgres://writ@db/writ?xxxxx"},
		{"postgres://writ@db/writ?ss%zzlpassword=s3cret&sslmode=require", "postgres://writ@db/writ?xxxxx&sslmode=require"},
		{"postgres://writ@db/writ?sslpassword=s3cret#s3cret", "postgres://writ@db/writ?sslpassword=xxxxx#xxxxx"},
		{"writ:s3cret@db://x", "(not a URL; not shown)"},
	} {
		got := server.RedactDatastore(tc.in)
		if got != tc.want {
			t.Errorf("RedactDatastore(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if strings.Contains(got, "s3cret") {
			t.Errorf("RedactDatastore(%q) shows the password", tc.in)
		}
	}
}

// shortDir returns a private temporary directory with a short path, for
// Unix sockets.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ws")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// runServer runs a server with cfg until the test ends and returns the
// channel Run's result arrives on.
func runServer(t *testing.T, cfg server.Config) (context.CancelFunc, <-chan error) {
	t.Helper()
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		done <- srv.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-finished
	})
	return cancel, done
}

// listServers calls the admin API's ListServers until it answers.
func listServers(t *testing.T, socket string, done <-chan error) []*adminv1.Server {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for {
		resp, err := adminv1.NewServerServiceClient(conn).ListServers(ctx, &adminv1.ListServersRequest{}, grpc.WaitForReady(true))
		if err == nil {
			return resp.GetServers()
		}
		select {
		case err := <-done:
			t.Fatalf("server stopped: %v", err)
		default:
		}
		if ctx.Err() != nil {
			t.Fatalf("ListServers: %v", err)
		}
	}
}

func TestRunRegistersServer(t *testing.T) {
	dir := shortDir(t)
	data := filepath.Join(dir, "d")
	before := time.Now().Add(-time.Second)
	_, done := runServer(t, server.Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		DataDir:     data,
		BindAddress: "127.0.0.1:0",
		Datastore:   "bolt",
	})
	servers := listServers(t, filepath.Join(data, server.AdminSocket), done)
	id, err := server.LoadOrCreateServerID(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(servers) != 1 {
		t.Fatalf("servers = %v, want this one", servers)
	}
	s := servers[0]
	if s.GetId() != id {
		t.Errorf("ID %q, want the data directory's %q", s.GetId(), id)
	}
	if !strings.HasPrefix(s.GetAddress(), "127.0.0.1:") || strings.HasSuffix(s.GetAddress(), ":0") {
		t.Errorf("address %q, want the node API's bound address", s.GetAddress())
	}
	if s.GetVersion() == "" {
		t.Error("no version")
	}
	if s.GetStartedAt() < before.Unix() || s.GetHeartbeat() < s.GetStartedAt() {
		t.Errorf("started_at %d, heartbeat %d; want at or after %d", s.GetStartedAt(), s.GetHeartbeat(), before.Unix())
	}
}

func TestRunPostgresWithoutBackend(t *testing.T) {
	dir := shortDir(t)
	srv, err := server.New(server.Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		DataDir:     filepath.Join(dir, "d"),
		BindAddress: "127.0.0.1:0",
		Datastore:   "postgres://writ:s3cret@127.0.0.1:1/writ",
	})
	if err != nil {
		t.Fatal(err)
	}
	err = srv.Run(t.Context())
	if !errors.Is(err, server.ErrDatastoreUnavailable) {
		t.Fatalf("Run: %v, want ErrDatastoreUnavailable", err)
	}
	if !strings.Contains(err.Error(), "PostgreSQL datastore not available in this build") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %q", err)
	}
}

func TestNewRefusesUnknownDatastore(t *testing.T) {
	_, err := server.New(server.Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		DataDir:     t.TempDir(),
		Datastore:   "mysql://writ:s3cret@db/writ",
	})
	if !errors.Is(err, server.ErrDatastoreURL) || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("New: %v, want ErrDatastoreURL without the password", err)
	}
}

// TestRunOpensPostgresThroughOpener checks that a postgres:// datastore is
// opened by Config.OpenPostgres, with the URL and password, and that the
// server then keeps its state there and not in the data directory. The
// opener returns a bbolt store elsewhere, standing for the database.
func TestRunOpensPostgresThroughOpener(t *testing.T) {
	dir := shortDir(t)
	data := filepath.Join(dir, "d")
	shared := filepath.Join(t.TempDir(), "shared.db")
	const url = "postgres://writ@db.example.org/writ?sslmode=verify-full"
	var gotURL, gotPassword string
	cancel, done := runServer(t, server.Config{
		TrustDomain:       spiffeid.RequireTrustDomainFromString("example.org"),
		DataDir:           data,
		BindAddress:       "127.0.0.1:0",
		Datastore:         url,
		DatastorePassword: "pw",
		OpenPostgres: func(_ context.Context, connString, password string) (datastore.Store, error) {
			gotURL, gotPassword = connString, password
			return boltstore.Open(shared, boltstore.Options{})
		},
	})
	servers := listServers(t, filepath.Join(data, server.AdminSocket), done)
	if len(servers) != 1 {
		t.Fatalf("servers = %v", servers)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if gotURL != url || gotPassword != "pw" {
		t.Errorf("opener called with %q, %q", gotURL, gotPassword)
	}
	if _, err := os.Stat(filepath.Join(data, server.DatastoreFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a bbolt file was made in the data directory: %v", err)
	}
	store, err := boltstore.Open(shared, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	list, err := store.ListServers(t.Context())
	if err != nil || len(list) != 1 || list[0].ID != servers[0].GetId() {
		t.Errorf("shared store lists %+v, %v; want the server", list, err)
	}
}
