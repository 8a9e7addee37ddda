package workloadapi_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc/codes"

	"writ.dev/writ/ca/nodeapi"
)

// TestFetchJWTSVIDAudienceWithinServerLimits: an audience the server
// refuses to sign for (more values than nodeapi.MaxAudiences, or one
// longer than nodeapi.MaxAudienceLength) is InvalidArgument at once,
// without asking the server: passed on, the server's refusal reached the
// workload as Internal, logged as an agent error. Audiences at the limits
// are signed.
func TestFetchJWTSVIDAudienceWithinServerLimits(t *testing.T) {
	e := newEnv(t)
	e.add("/a")
	c, _ := e.raw()
	ctx := withHeader(ctxTimeout(t, 30*time.Second))

	values := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = "aud-" + strconv.Itoa(i)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		aud  []string
		code codes.Code
	}{
		{"most values", values(nodeapi.MaxAudiences), codes.OK},
		{"longest value", []string{strings.Repeat("a", nodeapi.MaxAudienceLength)}, codes.OK},
		{"one value too many", values(nodeapi.MaxAudiences + 1), codes.InvalidArgument},
		{"value one byte too long", []string{strings.Repeat("b", nodeapi.MaxAudienceLength+1)}, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.signer.calls.Load()
			_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: tc.aud})
			wantCode(t, err, tc.code)
			if n := e.signer.calls.Load() - before; tc.code != codes.OK && n != 0 {
				t.Errorf("the server was asked %d times for an audience it refuses", n)
			}
		})
	}
}
