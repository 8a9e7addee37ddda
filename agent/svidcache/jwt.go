package svidcache

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/jwtsvid"
)

type jwtKey struct {
	id  spiffeid.ID
	aud string
}

// jwtCall is a JWT-SVID being signed; callers asking for the same key
// meanwhile wait for it instead of asking the server again.
type jwtCall struct {
	done chan struct{}
	svid *JWTSVID // set before done is closed
	err  error
}

// FetchJWTSVID returns a JWT-SVID for entry entryID and audience. A
// cached token for the entry's SPIFFE ID and the same audience set is
// reused until half its lifetime has passed; otherwise the JWTSigner signs
// one, whose claims are checked against the cache's bundle
// (jwtsvid.Inspect: the key named is in the bundle, sub = the entry's
// SPIFFE ID, aud = audience, exp) before it is cached and returned. Concurrent requests for one token share a single signing
// call.
//
// Errors: ErrInvalidAudience, ErrUnknownEntry (the entry is not in the
// cache, or was removed while signing), ErrUnavailable (no signer, or
// wrapped by the signer when the server cannot be reached), ErrInvalidJWT,
// or the signer's error wrapped.
func (c *Cache) FetchJWTSVID(ctx context.Context, entryID string, audience []string) (*JWTSVID, error) {
	aud := slices.Clone(audience)
	slices.Sort(aud)
	aud = slices.Compact(aud)
	if len(aud) == 0 || aud[0] == "" {
		return nil, ErrInvalidAudience
	}
	ak := audienceKey(aud)

	now := c.clk.Now()
	c.mu.Lock()
	it := c.items[entryID]
	if it == nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", ErrUnknownEntry, entryID)
	}
	id := it.entry.SPIFFEID
	if j := c.jwts[id][ak]; j != nil && j.Fresh(now) {
		c.mu.Unlock()
		return j, nil
	}
	key := jwtKey{id: id, aud: ak}
	if call := c.jwtCalls[key]; call != nil {
		c.mu.Unlock()
		select {
		case <-call.done:
			return call.svid, call.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if c.signer == nil {
		c.mu.Unlock()
		return nil, ErrUnavailable
	}
	call := &jwtCall{done: make(chan struct{})}
	c.jwtCalls[key] = call
	c.mu.Unlock()

	call.svid, call.err = c.signJWT(ctx, entryID, id, aud, ak)
	c.mu.Lock()
	delete(c.jwtCalls, key)
	c.mu.Unlock()
	close(call.done)
	return call.svid, call.err
}

func (c *Cache) signJWT(ctx context.Context, entryID string, id spiffeid.ID, aud []string, ak string) (*JWTSVID, error) {
	token, err := c.signer.SignJWTSVID(ctx, entryID, aud)
	if err != nil {
		return nil, fmt.Errorf("sign JWT-SVID for entry %s: %w", entryID, err)
	}
	now := c.clk.Now()
	c.mu.Lock()
	bundle := c.bundle
	c.mu.Unlock()
	if bundle == nil {
		return nil, fmt.Errorf("%w: no bundle to check it with", ErrInvalidJWT)
	}
	// The token comes from the server, authenticated by mTLS, which holds
	// the signing key: its claims are checked, and that its key is in
	// the bundle, but its signature is not verified again here (it
	// would cost twice the signing).
	claims, err := jwtsvid.Inspect(token, bundle, aud, now)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidJWT, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	got := slices.Clone(claims.Audience)
	slices.Sort(got)
	got = slices.Compact(got)
	switch {
	case claims.ID != id:
		return nil, fmt.Errorf("%w: subject %s, want %s", ErrInvalidJWT, claims.ID, id)
	case !slices.Equal(got, aud):
		return nil, fmt.Errorf("%w: audience differs from the one asked for", ErrInvalidJWT)
	case !now.Before(claims.Expiry):
		return nil, fmt.Errorf("%w: JWT-SVID", ErrExpired)
	}
	issued := claims.IssuedAt
	if issued.IsZero() || issued.After(now) {
		issued = now
	}
	j := &JWTSVID{Token: token, ID: id, Audience: aud, KeyID: claims.KeyID, IssuedAt: issued, ExpiresAt: claims.Expiry}
	// Cache only if the entry still exists with the same SPIFFE ID.
	if it := c.items[entryID]; it == nil || it.entry.SPIFFEID != id {
		return nil, fmt.Errorf("%w: %s (removed or changed while signing)", ErrUnknownEntry, entryID)
	}
	if _, tainted := c.taintedJWT[j.KeyID]; !tainted {
		c.storeJWTLocked(j, ak, now)
	}
	return j, nil
}

func (c *Cache) storeJWTLocked(j *JWTSVID, ak string, now time.Time) {
	if _, ok := c.jwts[j.ID][ak]; !ok {
		if c.njwt >= c.maxJWT {
			c.evictJWTsLocked(now)
		}
		c.njwt++
	}
	byAud := c.jwts[j.ID]
	if byAud == nil {
		byAud = make(map[string]*JWTSVID)
		c.jwts[j.ID] = byAud
	}
	byAud[ak] = j
}

// evictJWTsLocked makes room: it drops tokens no longer fresh, and if
// that is not enough, arbitrary ones until a tenth of the bound is free.
func (c *Cache) evictJWTsLocked(now time.Time) {
	for id, byAud := range c.jwts {
		for k, j := range byAud {
			if !j.Fresh(now) {
				delete(byAud, k)
				c.njwt--
			}
		}
		if len(byAud) == 0 {
			delete(c.jwts, id)
		}
	}
	target := c.maxJWT - max(c.maxJWT/10, 1)
	for id, byAud := range c.jwts {
		if c.njwt <= target {
			break
		}
		for k := range byAud {
			if c.njwt <= target {
				break
			}
			delete(byAud, k)
			c.njwt--
		}
		if len(byAud) == 0 {
			delete(c.jwts, id)
		}
	}
}

func (c *Cache) dropJWTsLocked(id spiffeid.ID) {
	if byAud, ok := c.jwts[id]; ok {
		c.njwt -= len(byAud)
		delete(c.jwts, id)
	}
}

// audienceKey encodes a sorted audience set unambiguously.
func audienceKey(aud []string) string {
	var b []byte
	for _, a := range aud {
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, ':')
		b = append(b, a...)
	}
	return string(b)
}
