package unixattest

import (
	"container/list"
	"context"
	"crypto/sha256"
	"errors"
	"sync"
)

// fileKey identifies the content of a file without reading it: the same
// inode, unchanged in size and in modification and change times. ctime
// cannot be set by the file's owner and moves on every write or chmod; see
// ctimeSettle for why a recent ctime is not trusted.
type fileKey struct {
	dev, ino uint64
	size     int64
	mtime    int64 // Unix nanoseconds
	ctime    int64 // Unix nanoseconds
}

// hashCache remembers executable hashes by fileKey, least recently used
// first out, and makes concurrent callers that need the same hash wait for
// one computation.
type hashCache struct {
	max int
	mu  sync.Mutex // guards lru, items, flights
	lru *list.List // of *cached, most recently used at the front
	// items indexes lru.
	items map[fileKey]*list.Element
	// flights are computations under way.
	flights map[fileKey]*flight
}

type cached struct {
	key fileKey
	sum [sha256.Size]byte
}

// flight is one computation of a hash; done is closed when sum and err are
// set.
type flight struct {
	done chan struct{}
	sum  [sha256.Size]byte
	err  error
}

func newHashCache(max int) *hashCache {
	return &hashCache{
		max:     max,
		lru:     list.New(),
		items:   make(map[fileKey]*list.Element),
		flights: make(map[fileKey]*flight),
	}
}

// get returns the hash of the file identified by key: from the cache, from
// a computation another caller has under way, or from compute. A
// computation abandoned because its caller's context ended is not shared:
// the waiters try again.
func (c *hashCache) get(ctx context.Context, key fileKey, compute func() ([sha256.Size]byte, error)) ([sha256.Size]byte, error) {
	for {
		c.mu.Lock()
		if e, ok := c.items[key]; ok {
			c.lru.MoveToFront(e)
			sum := e.Value.(*cached).sum
			c.mu.Unlock()
			return sum, nil
		}
		if f, ok := c.flights[key]; ok {
			c.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				return [sha256.Size]byte{}, ctx.Err()
			}
			if isContextErr(f.err) {
				continue
			}
			return f.sum, f.err
		}
		f := &flight{done: make(chan struct{})}
		c.flights[key] = f
		c.mu.Unlock()

		f.sum, f.err = compute()

		c.mu.Lock()
		delete(c.flights, key)
		if f.err == nil {
			c.add(key, f.sum)
		}
		c.mu.Unlock()
		close(f.done)
		return f.sum, f.err
	}
}

// add caches sum for key. c.mu must be held.
func (c *hashCache) add(key fileKey, sum [sha256.Size]byte) {
	if c.max <= 0 {
		return
	}
	if e, ok := c.items[key]; ok {
		c.lru.MoveToFront(e)
		return
	}
	c.items[key] = c.lru.PushFront(&cached{key: key, sum: sum})
	for c.lru.Len() > c.max {
		last := c.lru.Back()
		c.lru.Remove(last)
		delete(c.items, last.Value.(*cached).key)
	}
}

// len returns the number of cached hashes.
func (c *hashCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
