package revocation

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/jwtsvid"
)

// Grace is how long a revocation is kept after its ExpiresAt: validators
// accept a token until its exp plus this skew (jwtsvid.Leeway).
const Grace = jwtsvid.Leeway

// MaxJTILen bounds the jti of a revocation (the datastore's bound).
const MaxJTILen = 512

// ErrInvalid: a revocation without exactly one of JTI and ClientID, with
// a malformed one, or without an expiry.
var ErrInvalid = errors.New("revocation: invalid revocation")

// Revocation revokes one access token (JTI) or every token of a client
// (ClientID, a SPIFFE ID) issued at or before RevokedAt. Exactly one of
// JTI and ClientID is set. ExpiresAt is when every token it covers has
// expired.
type Revocation struct {
	JTI       string
	ClientID  string
	RevokedAt time.Time
	ExpiresAt time.Time
}

// Key identifies what r revokes: "jti:"+JTI or "client:"+ClientID.
func (r Revocation) Key() string {
	if r.JTI != "" {
		return "jti:" + r.JTI
	}
	return "client:" + r.ClientID
}

// Check returns an error wrapping ErrInvalid if r is not well formed.
func (r Revocation) Check() error {
	switch {
	case (r.JTI == "") == (r.ClientID == ""):
		return fmt.Errorf("%w: want exactly one of jti and client_id", ErrInvalid)
	case len(r.JTI) > MaxJTILen:
		return fmt.Errorf("%w: jti longer than %d bytes", ErrInvalid, MaxJTILen)
	case r.ExpiresAt.IsZero():
		return fmt.Errorf("%w: no expiry", ErrInvalid)
	}
	if r.ClientID != "" {
		if _, err := spiffeid.FromString(r.ClientID); err != nil {
			return fmt.Errorf("%w: client_id: %w", ErrInvalid, err)
		}
	}
	return nil
}

// FromUnix makes a revocation from its wire form (Unix seconds) and
// checks it.
func FromUnix(jti, clientID string, revokedAt, expiresAt int64) (Revocation, error) {
	r := Revocation{JTI: jti, ClientID: clientID}
	if revokedAt != 0 {
		r.RevokedAt = time.Unix(revokedAt, 0).UTC()
	}
	if expiresAt != 0 {
		r.ExpiresAt = time.Unix(expiresAt, 0).UTC()
	}
	return r, r.Check()
}

// UnixRevokedAt is RevokedAt in Unix seconds, rounded down: a token's iat
// (whole seconds) is at or before it exactly when it is at or before
// RevokedAt.
func (r Revocation) UnixRevokedAt() int64 {
	if r.RevokedAt.IsZero() {
		return 0
	}
	return r.RevokedAt.Unix()
}

// UnixExpiresAt is ExpiresAt in Unix seconds, rounded up, so that the
// revocation never ends early.
func (r Revocation) UnixExpiresAt() int64 {
	s := r.ExpiresAt.Unix()
	if r.ExpiresAt.After(time.Unix(s, 0)) {
		s++
	}
	return s
}

// item is a revocation with the change number that last set it.
type item struct {
	r   Revocation
	seq uint64
}

// state is one version of a List. It is never modified once published.
type state struct {
	// byJTI and byClient hold the revocations by what they revoke.
	byJTI    map[string]item
	byClient map[string]item
	// seq numbers the changes; each item records the one that set it.
	seq uint64
	// epoch counts the changes additions cannot express (a revocation
	// removed before it expired); a follower of another epoch needs the
	// full list.
	epoch uint64
}

func (st *state) mapFor(r Revocation) map[string]item {
	if r.JTI != "" {
		return st.byJTI
	}
	return st.byClient
}

// clone copies st's maps for a writer.
func (st *state) clone() *state {
	return &state{byJTI: maps.Clone(st.byJTI), byClient: maps.Clone(st.byClient), seq: st.seq, epoch: st.epoch}
}

// List is a set of revocations, safe for concurrent use. Readers ask
// Revoked, which takes no lock: every change publishes a new copy.
// Followers Subscribe and read the changes with Changes.
type List struct {
	clock clock.Clock
	cur   atomic.Pointer[state]

	mu sync.Mutex // serializes writers (of cur), guards subs
	// subs are signalled after each change.
	subs map[*Subscription]struct{}

	// kick wakes Run when a revocation was added.
	kick chan struct{}
}

// New returns an empty List that tells the time with clk (the system
// clock if nil).
func New(clk clock.Clock) *List {
	if clk == nil {
		clk = clock.Real()
	}
	l := &List{
		clock: clk,
		subs:  make(map[*Subscription]struct{}),
		kick:  make(chan struct{}, 1),
	}
	l.cur.Store(&state{byJTI: map[string]item{}, byClient: map[string]item{}})
	return l
}

// Revoked reports whether a token is revoked: its jti is, or its subject
// or client_id names a client revoked at or after the token's iat (a
// token without iat is revoked whenever its client is). Empty arguments
// match nothing.
func (l *List) Revoked(jti, subject, clientID string, issuedAt time.Time) bool {
	st := l.cur.Load()
	if jti != "" && len(st.byJTI) > 0 {
		if _, ok := st.byJTI[jti]; ok {
			return true
		}
	}
	if len(st.byClient) == 0 {
		return false
	}
	for _, c := range [2]string{subject, clientID} {
		if c == "" {
			continue
		}
		if it, ok := st.byClient[c]; ok && (issuedAt.IsZero() || !issuedAt.After(it.r.RevokedAt)) {
			return true
		}
	}
	return false
}

func keyOf(r Revocation) string {
	if r.JTI != "" {
		return r.JTI
	}
	return r.ClientID
}

func expired(r Revocation, now time.Time) bool {
	return !now.Before(r.ExpiresAt.Add(Grace))
}

func same(a, b Revocation) bool {
	return a.RevokedAt.Equal(b.RevokedAt) && a.ExpiresAt.Equal(b.ExpiresAt)
}

// Add adds revocations, each replacing one of the same key, and reports
// whether the list changed. Invalid and expired ones are ignored.
func (l *List) Add(rs []Revocation) bool {
	now := l.clock.Now()
	l.mu.Lock()
	old := l.cur.Load()
	var st *state
	for _, r := range rs {
		if r.Check() != nil || expired(r, now) {
			continue
		}
		if it, ok := old.mapFor(r)[keyOf(r)]; ok && same(it.r, r) {
			continue
		}
		if st == nil {
			st = old.clone()
		}
		st.seq++
		st.mapFor(r)[keyOf(r)] = item{r: r, seq: st.seq}
	}
	return l.publishLocked(st)
}

// Replace makes rs the list (invalid and expired ones ignored) and
// reports whether it changed. Revocations it keeps unchanged stay as
// they were for followers; if it drops one that has not expired,
// followers are sent the full list.
func (l *List) Replace(rs []Revocation) bool {
	now := l.clock.Now()
	l.mu.Lock()
	old := l.cur.Load()
	st := &state{byJTI: make(map[string]item, len(rs)), byClient: make(map[string]item), seq: old.seq, epoch: old.epoch}
	changed := false
	for _, r := range rs {
		if r.Check() != nil || expired(r, now) {
			continue
		}
		if it, ok := old.mapFor(r)[keyOf(r)]; ok && same(it.r, r) {
			st.mapFor(r)[keyOf(r)] = it
			continue
		}
		st.seq++
		st.mapFor(r)[keyOf(r)] = item{r: r, seq: st.seq}
		changed = true
	}
	dropped := false
	for _, pair := range [2][2]map[string]item{{old.byJTI, st.byJTI}, {old.byClient, st.byClient}} {
		for k, it := range pair[0] {
			if _, ok := pair[1][k]; !ok && !expired(it.r, now) {
				dropped = true
			}
		}
	}
	if dropped {
		st.epoch++
		changed = true
	}
	if !changed {
		st = nil
	}
	return l.publishLocked(st)
}

// publishLocked publishes st (nil: no change), wakes the subscribers and
// Run, and unlocks l.mu.
func (l *List) publishLocked(st *state) bool {
	if st == nil {
		l.mu.Unlock()
		return false
	}
	l.cur.Store(st)
	for s := range l.subs {
		s.poke()
	}
	l.mu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
	return true
}

// Snapshot returns the unexpired revocations, sorted by Key.
func (l *List) Snapshot() []Revocation {
	rs, _, _ := l.Changes(Cursor{})
	return rs
}

// Len returns the number of revocations held (expired ones included
// until Run drops them).
func (l *List) Len() int {
	st := l.cur.Load()
	return len(st.byJTI) + len(st.byClient)
}

// Cursor is how far a follower has read a List. The zero Cursor has read
// nothing.
type Cursor struct {
	epoch, seq uint64
	started    bool
}

// Changes returns what a follower at cur has not seen, sorted by Key,
// and the cursor after it: the full list (full true) on the first call
// and after a change additions cannot express, otherwise the revocations
// added or changed since (possibly none). Expired revocations are left
// out.
func (l *List) Changes(cur Cursor) (rs []Revocation, next Cursor, full bool) {
	now := l.clock.Now()
	st := l.cur.Load()
	full = !cur.started || cur.epoch != st.epoch
	for _, m := range [2]map[string]item{st.byJTI, st.byClient} {
		for _, it := range m {
			if (full || it.seq > cur.seq) && !expired(it.r, now) {
				rs = append(rs, it.r)
			}
		}
	}
	slices.SortFunc(rs, func(a, b Revocation) int { return strings.Compare(a.Key(), b.Key()) })
	return rs, Cursor{epoch: st.epoch, seq: st.seq, started: true}, full
}

// Subscription signals changes of a List: after each change, C has a
// value (buffered one; changes that come together are signalled once).
type Subscription struct {
	l *List
	c chan struct{}
}

// Subscribe returns a subscription to l's changes; Close it when done.
func (l *List) Subscribe() *Subscription {
	s := &Subscription{l: l, c: make(chan struct{}, 1)}
	l.mu.Lock()
	l.subs[s] = struct{}{}
	l.mu.Unlock()
	return s
}

// C receives a value after each change.
func (s *Subscription) C() <-chan struct{} { return s.c }

// Close ends the subscription. It is idempotent.
func (s *Subscription) Close() {
	s.l.mu.Lock()
	delete(s.l.subs, s)
	s.l.mu.Unlock()
}

func (s *Subscription) poke() {
	select {
	case s.c <- struct{}{}:
	default:
	}
}

// maxWait caps Run's timer, so that a step of the wall clock past a
// revocation's end is noticed within a minute (timers count monotonic
// time, which such a step does not move).
const maxWait = time.Minute

// Run drops each revocation at its ExpiresAt plus Grace until ctx ends.
// It reads the clock at most a minute apart while it holds any.
func (l *List) Run(ctx context.Context) error {
	var t clock.Timer
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for {
		next := l.prune()
		var c <-chan time.Time
		if !next.IsZero() {
			d := min(maxWait, next.Sub(l.clock.Now()))
			if t == nil {
				t = l.clock.NewTimer(d)
			} else {
				t.Reset(d)
			}
			c = t.C()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c:
		case <-l.kick:
		}
	}
}

// prune drops the expired revocations and returns when the next one
// expires (zero if none). Followers are not told: they expire them too.
func (l *List) prune() time.Time {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.cur.Load()
	var next time.Time
	var st *state
	for _, m := range [2]map[string]item{old.byJTI, old.byClient} {
		for k, it := range m {
			end := it.r.ExpiresAt.Add(Grace)
			if now.Before(end) {
				if next.IsZero() || end.Before(next) {
					next = end
				}
				continue
			}
			if st == nil {
				st = old.clone()
			}
			delete(st.mapFor(it.r), k)
		}
	}
	if st != nil {
		l.cur.Store(st)
	}
	return next
}
