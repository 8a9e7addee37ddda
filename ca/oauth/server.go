package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/ca/keymanager"
	"writ.dev/writ/internal/logkey"
)

// Paths under the issuer.
const (
	MetadataPath   = "/.well-known/oauth-authorization-server"
	TokenPath      = "/token"
	IntrospectPath = "/introspect"
	RevokePath     = "/revoke"
	JWKSPath       = "/keys"
)

// Protocol constants.
const (
	GrantClientCredentials = "client_credentials"
	GrantTokenExchange     = "urn:ietf:params:oauth:grant-type:token-exchange"
	AssertionTypeJWTBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	TokenTypeAccessToken   = "urn:ietf:params:oauth:token-type:access_token"
	TokenTypeJWT           = "urn:ietf:params:oauth:token-type:jwt"
)

// Defaults and limits.
const (
	// DefaultTokenTTL is the lifetime of access tokens when
	// Config.TokenTTL is zero.
	DefaultTokenTTL = 5 * time.Minute
	// MaxBodySize bounds a request body; a larger one is invalid_request.
	MaxBodySize = 64 << 10
	// maxActDepth bounds the delegation chain of an exchanged token.
	maxActDepth = 8
	// MaxTokenTTL caps Config.TokenTTL: the longest SVID lifetime, which
	// revocations are kept for (a client revocation covers the client's
	// JWT-SVIDs as well as its access tokens).
	MaxTokenTTL = entry.MaxTTL
	// refreshInterval is how often the state is reloaded when the store
	// signals nothing.
	refreshInterval = time.Minute
)

// ErrConfig means a Config is incomplete or invalid.
var ErrConfig = errors.New("oauth: invalid configuration")

// Store is the part of datastore.Store the server uses.
type Store interface {
	FetchBundle(ctx context.Context, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error)
	ListOAuthClients(ctx context.Context) ([]*datastore.OAuthClient, error)
	UseClientAssertion(ctx context.Context, hash string, expiresAt time.Time) error
	PutRevocation(ctx context.Context, r *datastore.Revocation) error
	ListRevocations(ctx context.Context, now time.Time) ([]*datastore.Revocation, error)
	ListCAKeys(ctx context.Context) ([]*datastore.CAKey, error)
	Watch() (<-chan struct{}, func())
}

// KeySource gives the keys that sign now (the key manager).
type KeySource interface {
	Active() *keymanager.Active
}

// Config configures a Server.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// Issuer is the iss of access tokens and the base of every endpoint
	// URL: an https origin (no path, query or fragment).
	Issuer string
	Store  Store
	Keys   KeySource
	// TokenTTL is the longest lifetime of an access token, at most
	// MaxTokenTTL; DefaultTokenTTL if zero.
	TokenTTL time.Duration
	Clock    clock.Clock
	Logger   *slog.Logger
}

// Server serves the OAuth endpoints. Create it with New; serve Handler
// over TLS configured by TLSConfig's rules (client certificates
// requested, not required) and run Run beside it.
type Server struct {
	cfg           Config
	issuer        string
	tokenEndpoint string
	metadata      []byte
	log           *slog.Logger
	state         atomic.Pointer[state]
	revokes       revokeLimiter
}

// state is what the server reloads from the store: the trust domain's
// bundle, the OAuth clients, the revocations and the tainted X.509 CAs.
type state struct {
	bundle  *spiffebundle.Bundle
	clients map[spiffeid.ID]*datastore.OAuthClient
	// revokedJTIs maps a revoked jti to when its revocation expires.
	revokedJTIs map[string]time.Time
	// revokedClients maps a client ID to the time up to which its tokens
	// are revoked.
	revokedClients map[string]time.Time
	// taintedX509 holds the subject key IDs, lowercase hex, of the
	// tainted X.509 CAs: the X.509-SVIDs they signed authenticate no
	// client.
	taintedX509 map[string]bool
}

// New checks cfg. It does no I/O.
func New(cfg Config) (*Server, error) {
	u, err := url.Parse(cfg.Issuer)
	switch {
	case cfg.TrustDomain.IsZero():
		return nil, fmt.Errorf("%w: no trust domain", ErrConfig)
	case cfg.Store == nil || cfg.Keys == nil:
		return nil, fmt.Errorf("%w: no store or key source", ErrConfig)
	case err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return nil, fmt.Errorf("%w: issuer %q: want an https origin such as https://oauth.example.org:8443", ErrConfig, cfg.Issuer)
	case cfg.TokenTTL < 0 || cfg.TokenTTL > MaxTokenTTL:
		return nil, fmt.Errorf("%w: token TTL %s: want at most %s", ErrConfig, cfg.TokenTTL, MaxTokenTTL)
	}
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = DefaultTokenTTL
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	issuer := "https://" + u.Host
	s := &Server{cfg: cfg, issuer: issuer, tokenEndpoint: issuer + TokenPath, log: cfg.Logger}
	methods := []string{"tls_client_auth", "private_key_jwt"}
	algs := []string{"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	s.metadata, err = json.Marshal(map[string]any{
		"issuer":                                issuer,
		"token_endpoint":                        s.tokenEndpoint,
		"introspection_endpoint":                issuer + IntrospectPath,
		"revocation_endpoint":                   issuer + RevokePath,
		"jwks_uri":                              issuer + JWKSPath,
		"grant_types_supported":                 []string{GrantClientCredentials, GrantTokenExchange},
		"response_types_supported":              []string{},
		"token_endpoint_auth_methods_supported": methods,
		"token_endpoint_auth_signing_alg_values_supported":         algs,
		"introspection_endpoint_auth_methods_supported":            methods,
		"introspection_endpoint_auth_signing_alg_values_supported": algs,
		"revocation_endpoint_auth_methods_supported":               methods,
		"revocation_endpoint_auth_signing_alg_values_supported":    algs,
		"tls_client_certificate_bound_access_tokens":               true,
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Issuer returns the issuer URL.
func (s *Server) Issuer() string { return s.issuer }

// TokenEndpoint returns the token endpoint URL, which client assertions
// must name as their audience.
func (s *Server) TokenEndpoint() string { return s.tokenEndpoint }

// Run keeps the state current until ctx ends: it loads it, then reloads
// it whenever the store signals a change (every server of a shared
// datastore sees the others' clients and revocations) and every minute.
// A failed reload keeps the last state and is retried on the next
// signal or tick.
func (s *Server) Run(ctx context.Context) error {
	changes, stop := s.cfg.Store.Watch()
	defer stop()
	for {
		if err := s.refresh(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Warn("oauth state not reloaded; keeping the last one", logkey.Error, err.Error())
		}
		t := s.cfg.Clock.NewTimer(refreshInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case _, ok := <-changes:
			if !ok {
				// The store stopped signalling: reload on the timer only.
				changes = nil
			}
		case <-t.C():
		}
		t.Stop()
	}
}

// refresh reloads the state from the store.
func (s *Server) refresh(ctx context.Context) error {
	b, err := s.cfg.Store.FetchBundle(ctx, s.cfg.TrustDomain)
	if err != nil {
		return fmt.Errorf("fetch bundle: %w", err)
	}
	clients, err := s.cfg.Store.ListOAuthClients(ctx)
	if err != nil {
		return fmt.Errorf("list oauth clients: %w", err)
	}
	revs, err := s.cfg.Store.ListRevocations(ctx, s.cfg.Clock.Now())
	if err != nil {
		return fmt.Errorf("list revocations: %w", err)
	}
	keys, err := s.cfg.Store.ListCAKeys(ctx)
	if err != nil {
		return fmt.Errorf("list CA keys: %w", err)
	}
	st := &state{bundle: b, clients: make(map[spiffeid.ID]*datastore.OAuthClient, len(clients)),
		revokedJTIs: make(map[string]time.Time), revokedClients: make(map[string]time.Time), taintedX509: make(map[string]bool)}
	for _, k := range keys {
		if k.Kind != datastore.CAKeyX509 || k.State != datastore.CAKeyTainted {
			continue
		}
		id, err := keymanager.DisplayID(k)
		if err != nil {
			// As the node API does: the other records still count.
			s.log.Warn("CA key record is corrupt; cannot refuse the client certificates of a tainted CA", logkey.KeyID, k.ID, logkey.Error, err.Error())
			continue
		}
		st.taintedX509[id] = true
	}
	for _, c := range clients {
		st.clients[c.SPIFFEID] = c
	}
	for _, r := range revs {
		st.addRevocation(r)
	}
	s.state.Store(st)
	return nil
}

func (st *state) addRevocation(r *datastore.Revocation) {
	if r.JTI != "" {
		st.revokedJTIs[r.JTI] = r.ExpiresAt
	} else if old, ok := st.revokedClients[r.ClientID]; !ok || r.RevokedAt.After(old) {
		st.revokedClients[r.ClientID] = r.RevokedAt
	}
}

// withRevocation returns a copy of st with r added, so that this server
// refuses a token it revoked at once, before the store signals.
func (st *state) withRevocation(r *datastore.Revocation) *state {
	n := &state{bundle: st.bundle, clients: st.clients, taintedX509: st.taintedX509, revokedJTIs: make(map[string]time.Time, len(st.revokedJTIs)+1),
		revokedClients: make(map[string]time.Time, len(st.revokedClients))}
	for k, v := range st.revokedJTIs {
		n.revokedJTIs[k] = v
	}
	for k, v := range st.revokedClients {
		n.revokedClients[k] = v
	}
	n.addRevocation(r)
	return n
}

// Handler returns the HTTP handler of every endpoint. jwks, if not nil,
// serves JWKSPath.
func (s *Server) Handler(jwks http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(MetadataPath, s.serveMetadata)
	mux.HandleFunc(TokenPath, s.serveToken)
	mux.HandleFunc(IntrospectPath, s.serveIntrospect)
	mux.HandleFunc(RevokePath, s.serveRevoke)
	if jwks != nil {
		mux.Handle(JWKSPath, jwks)
	}
	return mux
}

func (s *Server) serveMetadata(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=3600")
	if r.Method == http.MethodGet {
		_, _ = w.Write(s.metadata)
	}
}
