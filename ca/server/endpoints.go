package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/nodeapi"
	"writ.dev/writ/ca/oauth"
	"writ.dev/writ/ca/publish"
	"writ.dev/writ/ca/ui"
	"writ.dev/writ/internal/certfile"
	"writ.dev/writ/internal/logkey"
)

// recentAuditEvents is how many audit records the status page keeps.
const recentAuditEvents = 200

// Federation bundle endpoint profiles (SPIFFE Trust Domain and Bundle,
// section 5.2).
const (
	ProfileHTTPSSPIFFE = "https_spiffe"
	ProfileHTTPSWeb    = "https_web"
)

// httpEndpoint is one of the server's HTTP listeners.
type httpEndpoint struct {
	name   string // for errors
	logKey string // the "server ready" log field of its address
	lis    net.Listener
	srv    *http.Server
	tls    bool
	// tasks run beside the listener (a bundle source, the OAuth state).
	tasks []endpointTask
}

type endpointTask struct {
	name string
	run  func(ctx context.Context) error
}

func (ep *httpEndpoint) serve() error {
	var err error
	if ep.tls {
		err = ep.srv.ServeTLS(ep.lis, "", "")
	} else {
		err = ep.srv.Serve(ep.lis)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (ep *httpEndpoint) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = ep.srv.Shutdown(ctx)
}

func newHTTPServer(h http.Handler, tlsConf *tls.Config) *http.Server {
	return &http.Server{
		Handler:           h,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
	}
}

// httpEndpoints makes the listeners of the status page, the federation
// bundle endpoint and OIDC discovery, those that are configured. On
// failure the listeners made so far are closed.
func (s *Server) httpEndpoints(store datastore.Store, nodeSvc *nodeapi.Service, keys oauth.KeySource, audit *ui.AuditLog, serverID string) (eps []*httpEndpoint, err error) {
	defer func() {
		if err != nil {
			for _, ep := range eps {
				ep.lis.Close()
			}
			eps = nil
		}
	}()
	listen := func(name, logKey, addr string, h http.Handler, tlsConf *tls.Config) error {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s: listen on %s: %w", name, addr, err)
		}
		eps = append(eps, &httpEndpoint{name: name, logKey: logKey, lis: lis, srv: newHTTPServer(h, tlsConf), tls: tlsConf != nil})
		return nil
	}
	if s.cfg.UIAddress != "" {
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
			return eps, err
		}
		if err := listen("status page", "ui_address", s.cfg.UIAddress, h, nil); err != nil {
			return eps, err
		}
	}
	if s.cfg.Federation.BindAddress == "" && s.cfg.OIDC.BindAddress == "" && s.cfg.OAuth.BindAddress == "" {
		return eps, nil
	}
	src := publish.NewSource(s.cfg.TrustDomain, store, s.cfg.Logger, s.cfg.Clock)
	if f := s.cfg.Federation; f.BindAddress != "" {
		tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
		switch f.Profile {
		case ProfileHTTPSSPIFFE, "":
			if !f.EndpointID.IsZero() && f.EndpointID != nodeSvc.ServerID() {
				return eps, fmt.Errorf("federation endpoint SPIFFE ID %s: this server authenticates as %s (the only ID https_spiffe serves today)", f.EndpointID, nodeSvc.ServerID())
			}
			tlsConf.GetCertificate = nodeSvc.GetServerCertificate
		case ProfileHTTPSWeb:
			rl, err := certfile.New(f.CertFile, f.KeyFile, s.cfg.Logger)
			if err != nil {
				return eps, fmt.Errorf("federation endpoint certificate: %w", err)
			}
			tlsConf.GetCertificate = rl.GetCertificate
		default:
			return eps, fmt.Errorf("federation endpoint profile %q: want %s or %s", f.Profile, ProfileHTTPSSPIFFE, ProfileHTTPSWeb)
		}
		if err := listen("federation bundle endpoint", "federation_address", f.BindAddress, publish.BundleHandler(src), tlsConf); err != nil {
			return eps, err
		}
	}
	if o := s.cfg.OIDC; o.BindAddress != "" {
		issuer, err := url.Parse(s.cfg.JWTIssuer)
		if err != nil || s.cfg.JWTIssuer == "" {
			return eps, errors.New("OIDC discovery needs the JWT issuer URL (--jwt-issuer)")
		}
		var tlsConf *tls.Config
		if !o.InsecureHTTP {
			rl, err := certfile.New(o.CertFile, o.KeyFile, s.cfg.Logger)
			if err != nil {
				return eps, fmt.Errorf("OIDC discovery certificate: %w", err)
			}
			tlsConf = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: rl.GetCertificate}
		}
		if err := listen("OIDC discovery", "oidc_address", o.BindAddress, publish.OIDCHandler(src, issuer), tlsConf); err != nil {
			return eps, err
		}
	}
	if o := s.cfg.OAuth; o.BindAddress != "" {
		tlsConf := &tls.Config{MinVersion: tls.VersionTLS12, ClientAuth: tls.RequestClientCert}
		if o.CertFile != "" {
			rl, err := certfile.New(o.CertFile, o.KeyFile, s.cfg.Logger)
			if err != nil {
				return eps, fmt.Errorf("OAuth endpoint certificate: %w", err)
			}
			tlsConf.GetCertificate = rl.GetCertificate
		} else {
			tlsConf.GetCertificate = nodeSvc.GetServerCertificate
		}
		lis, err := net.Listen("tcp", o.BindAddress)
		if err != nil {
			return eps, fmt.Errorf("OAuth endpoint: listen on %s: %w", o.BindAddress, err)
		}
		issuer := o.Issuer
		if issuer == "" {
			host, _, _ := net.SplitHostPort(o.BindAddress)
			if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
				lis.Close()
				return eps, fmt.Errorf("OAuth endpoint on %s: give the issuer URL clients reach it at (--oauth-issuer)", o.BindAddress)
			}
			issuer = "https://" + advertisedAddress(o.BindAddress, lis.Addr())
		}
		as, err := oauth.New(oauth.Config{TrustDomain: s.cfg.TrustDomain, Issuer: issuer, Store: store, Keys: keys,
			TokenTTL: o.TokenTTL, Clock: s.cfg.Clock, Logger: s.cfg.Logger.With(logkey.Component, "oauth")})
		if err != nil {
			lis.Close()
			return eps, err
		}
		iss, _ := url.Parse(as.Issuer())
		eps = append(eps, &httpEndpoint{name: "OAuth endpoint", logKey: "oauth_address", lis: lis, tls: true,
			srv: newHTTPServer(as.Handler(publish.OIDCHandler(src, iss)), tlsConf), tasks: []endpointTask{{"OAuth state", as.Run}}})
	}
	// The bundle source runs with the first publishing endpoint.
	eps[len(eps)-1].tasks = append(eps[len(eps)-1].tasks, endpointTask{"bundle source", src.Run})
	return eps, nil
}

// checkPublishing validates the JWT issuer, federation and OIDC settings
// without I/O.
func (c *Config) checkPublishing() error {
	if c.JWTIssuer != "" {
		u, err := url.Parse(c.JWTIssuer)
		if err != nil || !u.IsAbs() || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return fmt.Errorf("JWT issuer %q: want an absolute https URL without query, fragment or user information", c.JWTIssuer)
		}
	}
	f := c.Federation
	switch {
	case f.BindAddress == "" && (f.CertFile != "" || f.KeyFile != "" || f.Profile != "" || !f.EndpointID.IsZero()):
		return errors.New("federation endpoint settings need the federation bind address")
	case f.Profile == ProfileHTTPSWeb && (f.CertFile == "" || f.KeyFile == ""):
		return errors.New("the https_web federation profile needs a certificate file and a key file")
	case f.Profile != ProfileHTTPSWeb && (f.CertFile != "" || f.KeyFile != ""):
		return errors.New("federation certificate and key files are for the https_web profile")
	case !f.EndpointID.IsZero() && f.EndpointID.TrustDomain() != c.TrustDomain:
		return fmt.Errorf("federation endpoint SPIFFE ID %s is not in trust domain %s", f.EndpointID, c.TrustDomain.Name())
	}
	o := c.OIDC
	switch {
	case o.BindAddress == "" && (o.CertFile != "" || o.KeyFile != "" || o.InsecureHTTP):
		return errors.New("OIDC settings need the OIDC bind address")
	case o.BindAddress != "" && c.JWTIssuer == "":
		return errors.New("OIDC discovery needs the JWT issuer URL")
	case o.BindAddress != "" && o.InsecureHTTP && (o.CertFile != "" || o.KeyFile != ""):
		return errors.New("OIDC: give a certificate and key, or insecure HTTP, not both")
	case o.BindAddress != "" && !o.InsecureHTTP && (o.CertFile == "" || o.KeyFile == ""):
		return errors.New("OIDC discovery over HTTPS needs a certificate file and a key file (or insecure HTTP behind a TLS-terminating proxy)")
	}
	a := c.OAuth
	switch {
	case a.BindAddress == "" && (a.CertFile != "" || a.KeyFile != "" || a.Issuer != "" || a.TokenTTL != 0):
		return errors.New("OAuth settings need the OAuth bind address")
	case (a.CertFile == "") != (a.KeyFile == ""):
		return errors.New("the OAuth endpoint needs both a certificate file and a key file, or neither (to serve the server's own SVID)")
	case a.TokenTTL < 0 || (a.TokenTTL > 0 && a.TokenTTL < 10*time.Second) || a.TokenTTL > 24*time.Hour:
		return fmt.Errorf("OAuth token TTL %s: want 10s to 24h", a.TokenTTL)
	}
	return nil
}
