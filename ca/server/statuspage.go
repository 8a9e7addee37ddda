package server

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/nodeapi"
	"writ.dev/writ/ca/ui"
)

// recentAuditEvents is how many audit records the status page keeps.
const recentAuditEvents = 200

// statusPage returns the status page's HTTP server and its listener, or
// nils when Config.UIAddress is empty.
func (s *Server) statusPage(store datastore.Store, nodeSvc *nodeapi.Service, audit *ui.AuditLog, serverID string) (*http.Server, net.Listener, error) {
	if s.cfg.UIAddress == "" {
		return nil, nil, nil
	}
	h, err := ui.New(ui.Config{
		TrustDomain: s.cfg.TrustDomain,
		Store:       store,
		Token:       s.cfg.UIToken,
		Connected:   nodeSvc.ConnectedAgents,
		Audit:       audit,
		ServerID:    serverID,
		Clock:       s.cfg.Clock,
		Logger:      s.cfg.Logger,
	})
	if err != nil {
		return nil, nil, err
	}
	lis, err := net.Listen("tcp", s.cfg.UIAddress)
	if err != nil {
		return nil, nil, fmt.Errorf("status page: listen on %s: %w", s.cfg.UIAddress, err)
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
	}, lis, nil
}
