package admin

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
	"writ.dev/writ/ca/datastore"
)

// serverService serves adminv1.ServerService.
type serverService struct {
	adminv1.UnimplementedServerServiceServer
	s *Service
}

// ListServers lists the servers' records, in ID order.
func (ss *serverService) ListServers(ctx context.Context, _ *adminv1.ListServersRequest) (*adminv1.ListServersResponse, error) {
	s := ss.s
	if _, err := s.begin(ctx); err != nil {
		return nil, err
	}
	servers, err := s.store.ListServers(ctx)
	if err != nil {
		return nil, s.internal(ctx, "list servers", err)
	}
	resp := &adminv1.ListServersResponse{Servers: make([]*adminv1.Server, len(servers))}
	for i, srv := range servers {
		resp.Servers[i] = serverToWire(srv)
	}
	return resp, nil
}

func serverToWire(s *datastore.Server) *adminv1.Server {
	return &adminv1.Server{
		Id:        s.ID,
		Address:   s.Address,
		Version:   s.Version,
		StartedAt: unixSeconds(s.StartedAt),
		Heartbeat: unixSeconds(s.Heartbeat),
	}
}

// backupChunkSize is the size of the pieces Backup sends.
const backupChunkSize = 256 << 10

// Backup streams the server's backup archive.
func (ss *serverService) Backup(_ *adminv1.BackupRequest, stream adminv1.ServerService_BackupServer) error {
	s := ss.s
	ctx := stream.Context()
	if _, err := s.begin(ctx); err != nil {
		return err
	}
	if s.backup == nil {
		return status.Error(codes.FailedPrecondition, "this server cannot write backups")
	}
	w := &chunkWriter{send: func(b []byte) error { return stream.Send(&adminv1.BackupChunk{Data: b}) }, buf: make([]byte, 0, backupChunkSize)}
	err := s.backup.WriteBackup(ctx, w)
	if err == nil {
		err = w.flush()
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrBackupUnsupported):
		return status.Error(codes.FailedPrecondition, err.Error())
	case status.Code(err) != codes.Unknown || ctx.Err() != nil:
		return err // the stream broke or the caller left
	default:
		return s.internal(ctx, "backup", err)
	}
}

// chunkWriter buffers writes into chunks of its buffer's capacity.
type chunkWriter struct {
	send func([]byte) error
	buf  []byte
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), cap(w.buf)-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		if len(w.buf) == cap(w.buf) {
			if err := w.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (w *chunkWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	err := w.send(w.buf)
	w.buf = w.buf[:0]
	return err
}
