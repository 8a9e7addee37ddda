package nodeclient_test

import (
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"writ.dev/writ/agent/nodeclient"
)

// TestBatchSignJWTFallsBack: a server without BatchSignJWTSVID (as the
// fake node API is) is asked with SignJWTSVID, one call per request,
// each with its own result.
func TestBatchSignJWTFallsBack(t *testing.T) {
	srv, c, e := attestedClient(t)
	for round := range 2 {
		before := srv.Stats().JWTCalls
		out, err := c.BatchSignJWT(t.Context(), []nodeclient.JWTRequest{
			{EntryID: e.Id, Audience: []string{"a"}},
			{EntryID: "missing", Audience: []string{"a"}},
			{EntryID: e.Id, Audience: []string{"b"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 3 || out[0].Err != nil || out[0].Token == "" || out[2].Err != nil || out[2].Token == "" || out[0].Token == out[2].Token {
			t.Fatalf("round %d: results %+v", round, out)
		}
		if status.Code(out[1].Err) != codes.NotFound {
			t.Fatalf("round %d: result 1: %v", round, out[1].Err)
		}
		if n := srv.Stats().JWTCalls - before; n != 3 {
			t.Errorf("round %d: %d SignJWTSVID calls, want 3", round, n)
		}
	}

	if _, err := c.BatchSignJWT(t.Context(), make([]nodeclient.JWTRequest, nodeclient.MaxJWTBatch+1)); err == nil {
		t.Error("a batch over the limit was sent")
	}
	srv.Stop()
	// The call fails as a whole, or (asked one by one) each request.
	out, err := c.BatchSignJWT(t.Context(), []nodeclient.JWTRequest{{EntryID: e.Id, Audience: []string{"a"}}})
	if err == nil {
		err = out[0].Err
	}
	if !errors.Is(err, nodeclient.ErrUnavailable) {
		t.Fatalf("server down: %v", err)
	}
}
