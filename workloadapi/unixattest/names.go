package unixattest

import (
	"errors"
	"fmt"
	"log/slog"
	"os/user"
	"strconv"
	"sync"
	"time"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/entry"
)

// nameCache looks up user and group names and remembers them, and their
// absence, for nameTTL. Lookups can be slow (NSS may ask a directory
// server), so they run without the lock; two callers may look up the same
// id at once.
type nameCache struct {
	clock  clock.Clock
	log    *slog.Logger
	mu     sync.Mutex // guards users, groups
	users  map[uint32]cachedName
	groups map[uint32]cachedName
}

// cachedName is a name ("" for none) and when it stops being trusted.
type cachedName struct {
	name    string
	expires time.Time
}

func newNameCache(c clock.Clock, log *slog.Logger) *nameCache {
	return &nameCache{
		clock:  c,
		log:    log,
		users:  make(map[uint32]cachedName),
		groups: make(map[uint32]cachedName),
	}
}

// user returns the name of uid, or "" if it has none that a unix:user
// selector can carry.
func (c *nameCache) user(uid uint32) (string, error) {
	return c.lookup(c.users, uid, "user", func(id string) (string, error) {
		u, err := user.LookupId(id)
		if err != nil {
			if errors.As(err, new(user.UnknownUserIdError)) {
				return "", nil
			}
			return "", err
		}
		return u.Username, nil
	})
}

// group returns the name of gid, or "" if it has none that a unix:group
// selector can carry.
func (c *nameCache) group(gid uint32) (string, error) {
	return c.lookup(c.groups, gid, "group", func(id string) (string, error) {
		g, err := user.LookupGroupId(id)
		if err != nil {
			if errors.As(err, new(user.UnknownGroupIdError)) {
				return "", nil
			}
			return "", err
		}
		return g.Name, nil
	})
}

func (c *nameCache) lookup(m map[uint32]cachedName, id uint32, key string, find func(string) (string, error)) (string, error) {
	now := c.clock.Now()
	c.mu.Lock()
	n, ok := m[id]
	c.mu.Unlock()
	if ok && now.Before(n.expires) {
		return n.name, nil
	}
	name, err := find(strconv.FormatUint(uint64(id), 10))
	if err != nil {
		// Not cached: the next attestation asks again.
		return "", fmt.Errorf("unixattest: look up %s %d: %w", key, id, err)
	}
	if name != "" {
		if _, err := entry.ParseSelector("unix:" + key + ":" + name); err != nil {
			// Such a name cannot appear in any entry either.
			c.log.Debug("name is not a valid selector value; no "+key+" selector", "id", id)
			name = ""
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(m) >= maxNames {
		for k, v := range m {
			if !now.Before(v.expires) {
				delete(m, k)
			}
		}
		if len(m) >= maxNames {
			clear(m)
		}
	}
	m[id] = cachedName{name: name, expires: now.Add(nameTTL)}
	return name, nil
}
