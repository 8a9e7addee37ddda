package ui

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// cookieName is the cookie that carries the token after ?token=.
const cookieName = "writ_ui"

// MinTokenLength is the shortest token the page accepts, so that a token
// file holding a guessable word is refused.
const MinTokenLength = 32

//go:embed assets
var assets embed.FS

var page = template.Must(template.New("page.html").Funcs(template.FuncMap{
	"ts":    formatTime,
	"until": untilText,
}).ParseFS(assets, "assets/page.html"))

// Store is what the page reads.
type Store interface {
	ListAgents(ctx context.Context) ([]*datastore.Agent, error)
	ListEntries(ctx context.Context, f datastore.EntryFilter) ([]*entry.Entry, error)
	ListCAKeys(ctx context.Context) ([]*datastore.CAKey, error)
}

// Config configures the page's handler.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	Store       Store
	// Token is the secret every request must carry; at least
	// MinTokenLength bytes.
	Token string
	// Connected, if set, returns the number of Sync streams each agent
	// has open on this server.
	Connected func() map[spiffeid.ID]int
	// Audit, if set, holds the recent audit records.
	Audit *AuditLog
	// ServerID names this server on the page.
	ServerID string
	Clock    clock.Clock
	Logger   *slog.Logger
}

// ErrToken means Config.Token is too short.
var ErrToken = errors.New("ui: token too short")

// Handler serves the status page.
type Handler struct {
	cfg Config
	mux *http.ServeMux
}

// New returns the page's handler.
func New(cfg Config) (*Handler, error) {
	if len(cfg.Token) < MinTokenLength {
		return nil, ErrToken
	}
	if cfg.Store == nil {
		return nil, errors.New("ui: store is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	h := &Handler{cfg: cfg, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /{$}", h.servePage)
	h.mux.HandleFunc("GET /style.css", serveCSS)
	return h, nil
}

// NewToken returns a random token for a new token file.
func NewToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// ServeHTTP authorizes the request, then serves it.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	hdr.Set("X-Frame-Options", "DENY")
	hdr.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if q := r.URL.Query(); q.Has("token") {
		if !h.valid(q.Get("token")) {
			h.refuse(w, r)
			return
		}
		http.SetCookie(w, &http.Cookie{Name: cookieName, Value: h.cfg.Token, Path: "/", HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
		q.Del("token")
		u := url.URL{Path: r.URL.Path, RawQuery: q.Encode()}
		http.Redirect(w, r, u.String(), http.StatusSeeOther)
		return
	}
	if !h.authorized(r) {
		h.refuse(w, r)
		return
	}
	h.mux.ServeHTTP(w, r)
}

func (h *Handler) authorized(r *http.Request) bool {
	if auth := r.Header.Get("Authorization"); auth != "" {
		scheme, tok, ok := strings.Cut(auth, " ")
		return ok && strings.EqualFold(scheme, "Bearer") && h.valid(strings.TrimSpace(tok))
	}
	c, err := r.Cookie(cookieName)
	return err == nil && h.valid(c.Value)
}

func (h *Handler) valid(tok string) bool {
	return subtle.ConstantTimeCompare([]byte(tok), []byte(h.cfg.Token)) == 1
}

func (h *Handler) refuse(w http.ResponseWriter, r *http.Request) {
	h.cfg.Logger.LogAttrs(r.Context(), slog.LevelWarn, "status page request refused: no valid token", slog.String("remote_addr", r.RemoteAddr))
	w.Header().Set("WWW-Authenticate", `Bearer realm="writ"`)
	http.Error(w, "unauthorized", http.StatusUnauthorized)
}

func serveCSS(w http.ResponseWriter, _ *http.Request) {
	css, _ := assets.ReadFile("assets/style.css")
	w.Header().Set("Content-Type", "text/css; charset=utf-8")
	_, _ = w.Write(css)
}
