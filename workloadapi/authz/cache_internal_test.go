package authz

import (
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestTokenCacheBound: the cache never holds more than its size, drops
// expired verdicts first, and keeps what was just put.
func TestTokenCacheBound(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	c := newTokenCache(16)
	id := spiffeid.RequireFromString("spiffe://example.org/web")
	sum := func(i int) [sha256.Size]byte { return sha256.Sum256(fmt.Append(nil, i)) }
	for i := range 100 {
		exp := now.Add(time.Hour)
		if i%2 == 0 {
			exp = now.Add(-time.Hour) // expired
		}
		c.put(sum(i), &verdict{id: id, exp: exp}, now)
		if n := c.len(); n > 16 {
			t.Fatalf("%d verdicts after %d puts, bound 16", n, i+1)
		}
		if c.get(sum(i)) == nil {
			t.Fatalf("put %d lost at once", i)
		}
	}
	// Putting a verdict already there never evicts.
	n := c.len()
	c.put(sum(99), &verdict{id: id, exp: now.Add(time.Hour)}, now)
	if c.len() != n {
		t.Fatalf("re-put changed the size from %d to %d", n, c.len())
	}
	c.remove(sum(99))
	if c.get(sum(99)) != nil {
		t.Fatal("remove kept the verdict")
	}
}
