package server

import (
	"context"
	"log/slog"
	"time"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/internal/logkey"
)

// pruneInterval is how often a server removes expired one-time records.
const pruneInterval = 5 * time.Minute

// prunable is the part of datastore.Store the pruner uses.
type prunable interface {
	PruneJoinTokens(ctx context.Context, now time.Time) (int, error)
	PruneClientAssertions(ctx context.Context, now time.Time) (int, error)
	PruneRevocations(ctx context.Context, now time.Time) (int, error)
}

// pruner removes expired join tokens, used client assertions and
// revocations whose tokens have all expired, at start and then every
// pruneInterval. Every server of a shared datastore prunes; the deletes
// are idempotent.
type pruner struct {
	store prunable
	clock clock.Clock
	log   *slog.Logger
}

func (p *pruner) run(ctx context.Context) error {
	for {
		p.prune(ctx)
		t := p.clock.NewTimer(pruneInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
	}
}

func (p *pruner) prune(ctx context.Context) {
	now := p.clock.Now()
	for _, op := range []struct {
		what string
		fn   func(context.Context, time.Time) (int, error)
	}{
		{"join tokens", p.store.PruneJoinTokens},
		{"client assertions", p.store.PruneClientAssertions},
		{"revocations", p.store.PruneRevocations},
	} {
		n, err := op.fn(ctx, now)
		switch {
		case err != nil && ctx.Err() == nil:
			p.log.Warn("pruning expired records failed; retrying later", "records", op.what, logkey.Error, err.Error())
		case n > 0:
			p.log.Debug("pruned expired records", "records", op.what, "count", n)
		}
	}
}
