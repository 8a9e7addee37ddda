package oauth

import (
	"sync"
	"time"
)

// Bounds on what one client adds to the revocation list through /revoke,
// on each server. Every stored revocation makes every server and agent
// reload it, and it stays listed until the token expires: without bounds
// any client could grow the list and keep the fleet reloading.
const (
	// RevokeRate is how many revocations per second a client may store
	// on one server, after a burst of RevokeBurst.
	RevokeRate  = 1
	RevokeBurst = 10
	// MaxRevocationsPerClient is how many of a client's revocations
	// made on one server may be listed at once. Beyond it, /revoke
	// answers 503 temporarily_unavailable with Retry-After (RFC 7009
	// §2.2.1: the client must assume the token is still valid and may
	// retry), rather than revoke the whole client, which would also end
	// the tokens others hold on its behalf.
	MaxRevocationsPerClient = 100
)

// revokeLimiter enforces RevokeRate, RevokeBurst and
// MaxRevocationsPerClient. The bounds are per server: a client spreading
// its requests over n servers of a shared datastore gets n times as
// much.
type revokeLimiter struct {
	mu sync.Mutex
	// quotas, guarded by mu, holds the clients that made a revocation
	// still listed or whose bucket is not full.
	quotas map[string]*revokeQuota
	// pruned, guarded by mu, is when quotas was last pruned.
	pruned time.Time
}

type revokeQuota struct {
	// tokens is the bucket's level at last.
	tokens float64
	last   time.Time
	// listed are the ExpiresAt of the client's revocations still listed.
	listed []time.Time
}

// take records that client stores a revocation kept until expiresAt, or
// returns how long it should wait if that would exceed its quota.
func (l *revokeLimiter) take(client string, now, expiresAt time.Time) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.quotas == nil {
		l.quotas = make(map[string]*revokeQuota)
	}
	if now.Sub(l.pruned) >= time.Minute || now.Before(l.pruned) {
		l.prune(now)
		l.pruned = now
	}
	q, ok := l.quotas[client]
	if !ok {
		q = &revokeQuota{tokens: RevokeBurst, last: now}
		l.quotas[client] = q
	}
	q.refill(now)
	q.listed = deleteExpired(q.listed, now)
	if len(q.listed) >= MaxRevocationsPerClient {
		first := q.listed[0]
		for _, t := range q.listed {
			if t.Before(first) {
				first = t
			}
		}
		return first.Sub(now), false
	}
	if q.tokens < 1 {
		return time.Duration((1 - q.tokens) / RevokeRate * float64(time.Second)), false
	}
	q.tokens--
	q.listed = append(q.listed, expiresAt)
	return 0, true
}

func (q *revokeQuota) refill(now time.Time) {
	if d := now.Sub(q.last); d > 0 {
		q.tokens = min(RevokeBurst, q.tokens+d.Seconds()*RevokeRate)
	}
	q.last = now
}

// prune drops expired revocations, and the clients left with nothing
// listed and a full bucket, so that the map holds only active clients.
func (l *revokeLimiter) prune(now time.Time) {
	for id, q := range l.quotas {
		q.listed = deleteExpired(q.listed, now)
		q.refill(now)
		if len(q.listed) == 0 && q.tokens >= RevokeBurst {
			delete(l.quotas, id)
		}
	}
}

func deleteExpired(ts []time.Time, now time.Time) []time.Time {
	out := ts[:0]
	for _, t := range ts {
		if t.After(now) {
			out = append(out, t)
		}
	}
	return out
}
