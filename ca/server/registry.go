package server

import (
	"context"
	"log/slog"
	"net"
	"runtime/debug"
	"strconv"
	"time"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"

	"writ.dev/writ/internal/logkey"
)

// HeartbeatInterval is how often a running server rewrites its record in
// the datastore's server registry.
const HeartbeatInterval = 10 * time.Second

// serverRecordWriter is what the registry needs of the datastore.
type serverRecordWriter interface {
	PutServer(ctx context.Context, s *datastore.Server) error
}

// registry keeps this server's record in the datastore's server list.
type registry struct {
	store serverRecordWriter
	clock clock.Clock
	log   *slog.Logger
	rec   datastore.Server // the record; Heartbeat changes, from run only
}

func newRegistry(store serverRecordWriter, clk clock.Clock, log *slog.Logger, id, address string) *registry {
	now := clk.Now()
	return &registry{
		store: store,
		clock: clk,
		log:   log,
		rec:   datastore.Server{ID: id, Address: address, Version: buildVersion(), StartedAt: now, Heartbeat: now},
	}
}

// register writes the record once, at start.
func (r *registry) register(ctx context.Context) error {
	rec := r.rec
	return r.store.PutServer(ctx, &rec)
}

// run rewrites the record every HeartbeatInterval until ctx ends. A
// failed write is logged and tried again at the next beat: a datastore
// that is briefly away must not stop the server.
func (r *registry) run(ctx context.Context) error {
	t := r.clock.NewTimer(HeartbeatInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
		r.rec.Heartbeat = r.clock.Now()
		rec := r.rec
		err := r.store.PutServer(ctx, &rec)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil
		case err != nil:
			r.log.Warn("cannot write the server heartbeat to the datastore; retrying", logkey.Error, err, "retry_in", HeartbeatInterval)
			failing = true
		case failing:
			r.log.Info("server heartbeat written again")
			failing = false
		}
		t.Reset(HeartbeatInterval)
	}
}

// buildVersion is the version of the main module the binary was built
// from: a release tag, a pseudo-version from version control, or
// "(devel)".
func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// advertisedAddress is the node API address to record: the configured
// bind address, with the port the listener got when it was asked for
// port 0.
func advertisedAddress(bind string, lis net.Addr) string {
	host, port, err := net.SplitHostPort(bind)
	if err != nil || port != "0" {
		return bind
	}
	if tcp, ok := lis.(*net.TCPAddr); ok {
		return net.JoinHostPort(host, strconv.Itoa(tcp.Port))
	}
	return lis.String()
}
