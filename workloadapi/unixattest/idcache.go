package unixattest

import (
	"slices"
	"sync"
	"time"

	"writ.dev/writ/ca/entry"
)

// maxIdentities bounds an identityCache.
const maxIdentities = 4096

// procIdentity identifies one process over its life, as pinned: its PID
// with its start time (a reused PID has another start time), the
// effective uid and gid, and the executable inode it runs.
type procIdentity struct {
	pid            int32
	start          uint64
	uid, gid       uint32
	exeDev, exeIno uint64
}

// identityCache remembers the selectors computed for a pinned process, so
// that the same process's further connections (a client that dials per
// call) skip their computation. An entry holds for nameTTL (names can
// change), and only while the executable's content key is the one it was
// computed with; selectors are cached only for executables whose change
// time has settled, as hashes are.
type identityCache struct {
	mu sync.Mutex // guards m
	m  map[procIdentity]cachedIdentity
}

type cachedIdentity struct {
	sel     []entry.Selector
	exe     fileKey
	expires time.Time
}

func (c *identityCache) get(id procIdentity, exe fileKey, now time.Time) ([]entry.Selector, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	if !ok || e.exe != exe || !now.Before(e.expires) {
		if ok {
			delete(c.m, id)
		}
		return nil, false
	}
	return slices.Clone(e.sel), true
}

func (c *identityCache) put(id procIdentity, exe fileKey, sel []entry.Selector, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[procIdentity]cachedIdentity)
	}
	if _, ok := c.m[id]; !ok && len(c.m) >= maxIdentities {
		for k, e := range c.m {
			if !now.Before(e.expires) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= maxIdentities {
			clear(c.m)
		}
	}
	c.m[id] = cachedIdentity{sel: slices.Clone(sel), exe: exe, expires: now.Add(nameTTL)}
}

func (c *identityCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
