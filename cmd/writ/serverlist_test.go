package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

func sampleServers() []*adminv1.Server {
	return []*adminv1.Server{
		{Id: "0a1b2c3d4e5f6071", Address: "10.0.0.1:8081", Version: "v1.4.0", StartedAt: fakeCreatedAt, Heartbeat: fakeCreatedAt + 3600},
		{Id: "f0e1d2c3b4a59687", Address: "ca-2.example.org:8081", Version: "(devel)", StartedAt: fakeCreatedAt + 60, Heartbeat: fakeCreatedAt + 3595},
	}
}

func TestServerList(t *testing.T) {
	for _, output := range []string{"text", "json"} {
		t.Run(output, func(t *testing.T) {
			f := startFake(t)
			f.setServers(sampleServers())
			r := runCLI(t, "", f.args("server", "list", "--output", output)...)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("%+v", r)
			}
			golden(t, "server_list."+output, r.stdout)
			if got, want := f.callNames(), []string{adminv1.ServerService_ListServers_FullMethodName}; !slices.Equal(got, want) {
				t.Errorf("calls %v, want %v", got, want)
			}
		})
	}

	t.Run("json fields", func(t *testing.T) {
		f := startFake(t)
		f.setServers(sampleServers())
		r := runCLI(t, "", f.args("server", "list", "--output", "json")...)
		var got []map[string]string
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
			t.Fatalf("output is not a JSON array of string objects: %v\n%s", err, r.stdout)
		}
		want := map[string]string{
			"id": "0a1b2c3d4e5f6071", "address": "10.0.0.1:8081", "version": "v1.4.0",
			"started_at": "2023-11-14T22:13:20Z", "heartbeat": "2023-11-14T23:13:20Z",
		}
		if len(got) != 2 || len(got[0]) != len(want) {
			t.Fatalf("got %v", got)
		}
		for k, v := range want {
			if got[0][k] != v {
				t.Errorf("%s = %q, want %q", k, got[0][k], v)
			}
		}
	})

	t.Run("none", func(t *testing.T) {
		f := startFake(t)
		r := runCLI(t, "", f.args("server", "list", "--output", "json")...)
		if r.code != 0 || r.stdout != "[]\n" {
			t.Errorf("got %+v, want an empty JSON array", r)
		}
	})

	t.Run("control characters escaped", func(t *testing.T) {
		f := startFake(t)
		f.setServers([]*adminv1.Server{{Id: "a\x1b[31mb", Address: "x\ny", Version: "v", StartedAt: fakeCreatedAt, Heartbeat: fakeCreatedAt}})
		r := runCLI(t, "", f.args("server", "list")...)
		if r.code != 0 {
			t.Fatalf("%+v", r)
		}
		for _, c := range r.stdout {
			if c == 0x1b {
				t.Fatalf("raw escape character in output %q", r.stdout)
			}
		}
		if n := strings.Count(r.stdout, "\n"); n != 2 {
			t.Errorf("output has %d lines, want 2 (header and one server): %q", n, r.stdout)
		}
	})

	t.Run("server down", func(t *testing.T) {
		r := runCLI(t, "", "server", "list", "--admin-socket", "/nonexistent/writ-admin.sock", "--timeout", "2s")
		if r.code != 1 || r.stdout != "" {
			t.Errorf("got %+v, want exit 1 and no output", r)
		}
	})
}
