package admin_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/datastore"
)

func TestListServers(t *testing.T) {
	e := newEnv(t, envOptions{})
	resp, err := e.servers.ListServers(ctxT(t), &adminv1.ListServersRequest{})
	if err != nil {
		t.Fatalf("ListServers with none: %v", err)
	}
	if len(resp.GetServers()) != 0 {
		t.Fatalf("ListServers with none = %v", resp.GetServers())
	}

	started := startTime.Add(-time.Hour)
	for _, s := range []*datastore.Server{
		{ID: "ffff000000000002", Address: "10.0.0.2:8081", Version: "v1.0.0", StartedAt: started, Heartbeat: startTime},
		{ID: "0000ffff00000001", Address: "10.0.0.1:8081", Version: "(devel)", StartedAt: started.Add(time.Minute), Heartbeat: startTime.Add(-10 * time.Second)},
	} {
		if err := e.store.PutServer(ctxT(t), s); err != nil {
			t.Fatal(err)
		}
	}
	resp, err = e.servers.ListServers(ctxT(t), &adminv1.ListServersRequest{})
	if err != nil {
		t.Fatalf("ListServers: %v", err)
	}
	want := []*adminv1.Server{
		{Id: "0000ffff00000001", Address: "10.0.0.1:8081", Version: "(devel)", StartedAt: started.Add(time.Minute).Unix(), Heartbeat: startTime.Add(-10 * time.Second).Unix()},
		{Id: "ffff000000000002", Address: "10.0.0.2:8081", Version: "v1.0.0", StartedAt: started.Unix(), Heartbeat: startTime.Unix()},
	}
	got := resp.GetServers()
	if len(got) != len(want) {
		t.Fatalf("ListServers = %v, want %v", got, want)
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("server %d = %v, want %v", i, got[i], want[i])
		}
	}
	// A read: nothing is audit-logged.
	if recs := e.logs.audit(adminv1.ServerService_ListServers_FullMethodName); len(recs) != 0 {
		t.Errorf("ListServers audit-logged: %v", recs)
	}
}
