package probe_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"writ.dev/writ/internal/probe"
)

func TestResolveAddress(t *testing.T) {
	tests := []struct {
		name, in, want string
		err            bool
	}{
		{name: "bare port", in: "9090", want: "127.0.0.1:9090"},
		{name: "colon port", in: ":9090", want: "127.0.0.1:9090"},
		{name: "host and port", in: "0.0.0.0:9090", want: "0.0.0.0:9090"},
		{name: "ipv6", in: "[::1]:9090", want: "[::1]:9090"},
		{name: "any port", in: "0", want: "127.0.0.1:0"},
		{name: "not a port", in: "http", err: true},
		{name: "port too large", in: "70000", err: true},
		{name: "empty", in: "", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := probe.ResolveAddress(tt.in)
			if tt.err {
				if !errors.Is(err, probe.ErrAddress) {
					t.Fatalf("ResolveAddress(%q) = %q, %v; want ErrAddress", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ResolveAddress(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

func TestHandler(t *testing.T) {
	var notReady error
	h := probe.Handler(func(context.Context) error { return notReady },
		http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "writ_x 1\n") }))
	if code, _ := get(t, h, "/live"); code != http.StatusOK {
		t.Fatalf("/live = %d", code)
	}
	if code, body := get(t, h, "/ready"); code != http.StatusOK || body != "ready\n" {
		t.Fatalf("/ready = %d %q", code, body)
	}
	notReady = errors.New("datastore unavailable")
	if code, body := get(t, h, "/ready"); code != http.StatusServiceUnavailable || !strings.Contains(body, "datastore unavailable") {
		t.Fatalf("/ready = %d %q, want 503 with the reason", code, body)
	}
	if code, body := get(t, h, "/metrics"); code != http.StatusOK || body != "writ_x 1\n" {
		t.Fatalf("/metrics = %d %q", code, body)
	}
	if code, _ := get(t, h, "/debug/pprof/"); code != http.StatusNotFound {
		t.Fatalf("/debug/pprof/ = %d, want 404", code)
	}
	if code, _ := get(t, probe.Handler(nil, nil), "/ready"); code != http.StatusNotFound {
		t.Fatalf("/ready without a check = %d, want 404", code)
	}
}

func TestListenEndpoints(t *testing.T) {
	ready := func(context.Context) error { return nil }
	metrics := http.NotFoundHandler()
	eps, err := probe.ListenEndpoints("127.0.0.1:0", metrics, "127.0.0.1:0", ready)
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 2 || eps[0].Addr() == eps[1].Addr() {
		t.Fatalf("port 0 twice: %d endpoints, want two on different ports", len(eps))
	}
	for _, e := range eps {
		e.Stop()
	}
	one, err := probe.ListenEndpoints("127.0.0.1:0", metrics, "", ready)
	if err != nil {
		t.Fatal(err)
	}
	addr := one[0].Addr()
	one[0].Stop()
	both, err := probe.ListenEndpoints(addr, metrics, addr, ready)
	if err != nil {
		t.Fatal(err)
	}
	defer both[0].Stop()
	if len(both) != 1 || both[0].Name != "metrics and health endpoint" {
		t.Fatalf("same address: %d endpoints (%v), want one serving both", len(both), both)
	}
}
