package workloadapi

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// FuzzSecurityHeader: the header check accepts exactly one value "true",
// whatever else the metadata holds. Values are NUL-separated.
func FuzzSecurityHeader(f *testing.F) {
	for _, s := range []string{"", "true", "false", "TRUE", "true\x00true", "true,true", " true", "true\x00", "\x00true"} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, values string, present bool) {
		md := metadata.MD{"other": {"true"}}
		var vals []string
		if present {
			vals = strings.Split(values, "\x00")
			md[SecurityHeader] = vals
		}
		err := checkSecurityHeader(md)
		want := len(vals) == 1 && vals[0] == "true"
		if (err == nil) != want {
			t.Fatalf("values %q present %v: err %v", vals, present, err)
		}
		if err != nil && status.Code(err) != codes.InvalidArgument {
			t.Fatalf("code %v", status.Code(err))
		}
	})
}

// FuzzJWTSVIDRequest: a FetchJWTSVID request from the wire is accepted
// only with 1 to maxAudiences non-empty audiences of bounded length and
// an empty or canonical SPIFFE ID, which it keeps exactly.
func FuzzJWTSVIDRequest(f *testing.F) {
	for _, r := range []*workload.JWTSVIDRequest{
		{},
		{Audience: []string{"db"}},
		{Audience: []string{"db", "cache"}, SpiffeId: "spiffe://example.org/a"},
		{Audience: []string{""}},
		{Audience: []string{"db"}, SpiffeId: "spiffe://Example.org/a"},
		{Audience: []string{"db"}, SpiffeId: "spiffe://example.org/a/"},
		{Audience: []string{"db"}, SpiffeId: "spiffe://example.org"},
		{Audience: []string{"db"}, SpiffeId: "https://example.org/a"},
	} {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req workload.JWTSVIDRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		aud, id, err := parseJWTSVIDRequest(&req)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("code %v", status.Code(err))
			}
			return
		}
		if len(aud) == 0 || len(aud) > maxAudiences {
			t.Fatalf("%d audiences accepted", len(aud))
		}
		for _, a := range aud {
			if a == "" || len(a) > maxAudienceLen {
				t.Fatalf("audience %q accepted", a)
			}
		}
		if req.SpiffeId == "" {
			if !id.IsZero() {
				t.Fatalf("ID %s from nothing", id)
			}
		} else if id.String() != req.SpiffeId {
			t.Fatalf("ID %q parsed as %q", req.SpiffeId, id)
		}
	})
}

// FuzzValidateRequest: both fields of ValidateJWTSVID are required.
func FuzzValidateRequest(f *testing.F) {
	for _, r := range []*workload.ValidateJWTSVIDRequest{{}, {Audience: "a"}, {Svid: "x"}, {Audience: "a", Svid: "x.y.z"}} {
		b, _ := proto.Marshal(r)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req workload.ValidateJWTSVIDRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		err := checkValidateRequest(&req)
		if want := req.Audience != "" && req.Svid != ""; (err == nil) != want {
			t.Fatalf("%v: %v", &req, err)
		}
	})
}

// FuzzEndpointAddr: ParseEndpointAddr(EndpointAddr(p)) == p, and an
// accepted address names an absolute socket path that formats back to an
// address naming the same path.
func FuzzEndpointAddr(f *testing.F) {
	for _, s := range []string{
		"unix:///run/writ/workload.sock", "unix:///tmp/a%20b/s", "unix:/run/s", "unix:run/s",
		"unix://host/s", "unix:///s?x", "unix:///s#f", "tcp://127.0.0.1:1", "/run/s", "//s", "/a b/%/?/#/s",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if p, err := ParseEndpointAddr(s); err == nil {
			if !strings.HasPrefix(p, "/") || CheckSocketPath(p) != nil {
				t.Fatalf("%q gave path %q", s, p)
			}
			a, err := EndpointAddr(p)
			if err != nil {
				t.Fatalf("EndpointAddr(%q): %v", p, err)
			}
			if back, err := ParseEndpointAddr(a); err != nil || back != p {
				t.Fatalf("%q -> %q -> %q, %v", p, a, back, err)
			}
		}
		if a, err := EndpointAddr(s); err == nil {
			if back, err := ParseEndpointAddr(a); err != nil || back != s {
				t.Fatalf("%q -> %q -> %q, %v", s, a, back, err)
			}
		}
	})
}
