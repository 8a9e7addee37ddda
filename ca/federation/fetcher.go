package federation

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/datastore"
)

const (
	// MaxBundleSize bounds a fetched bundle document.
	MaxBundleSize = 1 << 20
	// MaxResponseHead bounds the status line and headers of a bundle
	// endpoint's response.
	MaxResponseHead = 64 << 10
	// MaxErrorText bounds the text of a fetch's error, which may quote
	// what the endpoint sent: it goes to the relationship's status, the
	// log and the operator.
	MaxErrorText = 1 << 10
	// FetchTimeout bounds one fetch, connection to last byte.
	FetchTimeout = 10 * time.Second
	// MinRefresh and MaxRefresh bound the refresh interval taken from a
	// bundle's refresh hint; DefaultRefresh is used without one.
	MinRefresh     = 10 * time.Second
	MaxRefresh     = time.Hour
	DefaultRefresh = 5 * time.Minute
	// retryAfter is how soon a failed fetch is tried again (at most the
	// refresh interval).
	retryAfter = 30 * time.Second
	// relistEvery is how often the relationships are read again, besides
	// datastore changes and Kick.
	relistEvery = 10 * time.Second
)

// Store is what the Fetcher reads and writes.
type Store interface {
	ListFederations(ctx context.Context) ([]*datastore.Federation, error)
	FetchBundle(ctx context.Context, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error)
	UpdateBundle(ctx context.Context, td spiffeid.TrustDomain, fn func(*spiffebundle.Bundle) (*spiffebundle.Bundle, error)) (*spiffebundle.Bundle, error)
	Watch() (<-chan struct{}, func())
}

// Config configures a Fetcher.
type Config struct {
	Store  Store
	Clock  clock.Clock
	Logger *slog.Logger
	// Timeout bounds each fetch; zero means FetchTimeout.
	Timeout time.Duration
	// RootCAs, if set, replaces the system roots for https_web endpoints.
	RootCAs *x509.CertPool
}

// Status is what a Fetcher knows of one relationship.
type Status struct {
	LastAttempt time.Time
	LastSuccess time.Time
	// LastError is the last fetch's error, empty after a success.
	LastError string
	// Sequence is the sequence number of the stored bundle after the last
	// success.
	Sequence  uint64
	NextFetch time.Time
}

// Fetcher fetches the bundles of the federation relationships.
type Fetcher struct {
	cfg  Config
	kick chan struct{}

	mu     sync.Mutex
	status map[spiffeid.TrustDomain]*Status
}

// New returns a Fetcher.
func New(cfg Config) *Fetcher {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = FetchTimeout
	}
	return &Fetcher{cfg: cfg, kick: make(chan struct{}, 1), status: map[spiffeid.TrustDomain]*Status{}}
}

// Status returns the status of the relationship with td on this server.
func (f *Fetcher) Status(td spiffeid.TrustDomain) (Status, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.status[td]
	if !ok {
		return Status{}, false
	}
	return *st, true
}

// Kick makes Run read the relationships again at once (after a local
// change).
func (f *Fetcher) Kick() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// Run fetches each relationship's bundle when due, until ctx ends.
func (f *Fetcher) Run(ctx context.Context) error {
	changes, stop := f.cfg.Store.Watch()
	defer stop()
	for {
		next := f.pass(ctx)
		wait := min(next.Sub(f.cfg.Clock.Now()), relistEvery)
		if wait < 0 {
			wait = 0
		}
		t := f.cfg.Clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-changes:
		case <-f.kick:
		case <-t.C():
		}
		t.Stop()
	}
}

// pass fetches every relationship that is due and returns when the next
// one is.
func (f *Fetcher) pass(ctx context.Context) time.Time {
	now := f.cfg.Clock.Now()
	next := now.Add(relistEvery)
	rels, err := f.cfg.Store.ListFederations(ctx)
	if err != nil {
		if ctx.Err() == nil {
			f.cfg.Logger.Warn("federation relationships not read", "error", err.Error())
		}
		return next
	}
	seen := map[spiffeid.TrustDomain]bool{}
	for _, r := range rels {
		seen[r.TrustDomain] = true
		f.mu.Lock()
		st := f.status[r.TrustDomain]
		due := st == nil || !now.Before(st.NextFetch)
		f.mu.Unlock()
		if due {
			_ = f.Refresh(ctx, r)
		}
		f.mu.Lock()
		if st := f.status[r.TrustDomain]; st != nil && st.NextFetch.Before(next) {
			next = st.NextFetch
		}
		f.mu.Unlock()
	}
	f.mu.Lock()
	for td := range f.status {
		if !seen[td] {
			delete(f.status, td)
		}
	}
	f.mu.Unlock()
	return next
}

// Refresh fetches r's bundle now and stores it if it is acceptable. The
// error says why it was not; the stored bundle is then unchanged.
func (f *Fetcher) Refresh(ctx context.Context, r *datastore.Federation) error {
	now := f.cfg.Clock.Now()
	seq, hint, err := f.fetchAndStore(ctx, r)
	if err != nil {
		err = bounded(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.status[r.TrustDomain]
	if st == nil {
		st = &Status{}
		f.status[r.TrustDomain] = st
	}
	st.LastAttempt = now
	interval := refreshInterval(hint)
	if err != nil {
		st.LastError = err.Error()
		st.NextFetch = now.Add(min(retryAfter, interval))
		f.cfg.Logger.Warn("federated bundle refused; keeping the last good one", "trust_domain", r.TrustDomain.Name(), "error", err.Error())
		return err
	}
	st.LastError, st.LastSuccess, st.Sequence = "", now, seq
	st.NextFetch = now.Add(interval)
	return nil
}

// refreshInterval is the refresh hint bounded to [MinRefresh, MaxRefresh].
func refreshInterval(hint time.Duration) time.Duration {
	if hint <= 0 {
		return DefaultRefresh
	}
	return min(max(hint, MinRefresh), MaxRefresh)
}

// ErrBundleTooLarge means a fetched bundle document is larger than
// MaxBundleSize; it comes wrapped with ErrBundle.
var ErrBundleTooLarge = errors.New("federation: bundle too large")

// ErrSequence means a fetched bundle's sequence number does not follow
// the stored bundle's: it is lower, or missing, or the same with other
// content. The SPIFFE bundle's spiffe_sequence is optional, but a
// publisher that sets it changes it whenever the content changes; once
// a trust domain's bundle carried one, a change without a higher number
// is refused.
var ErrSequence = errors.New("federation: bundle sequence number does not follow the stored one")

func (f *Fetcher) fetchAndStore(ctx context.Context, r *datastore.Federation) (uint64, time.Duration, error) {
	var current *spiffebundle.Bundle
	if b, err := f.cfg.Store.FetchBundle(ctx, r.TrustDomain); err == nil {
		current = b
	} else if !errors.Is(err, datastore.ErrNotFound) {
		return 0, 0, err
	}
	fetched, err := f.fetch(ctx, r, current)
	if err != nil {
		return 0, 0, err
	}
	hint, _ := fetched.RefreshHint()
	stored, err := f.cfg.Store.UpdateBundle(ctx, r.TrustDomain, func(old *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
		if old == nil {
			return fetched, nil
		}
		if old.Equal(fetched) {
			return old, nil
		}
		if err := checkSequence(old, fetched); err != nil {
			return nil, err
		}
		return fetched, nil
	})
	if err != nil {
		return 0, hint, err
	}
	seq, _ := stored.SequenceNumber()
	return seq, hint, nil
}

// checkSequence refuses fetched, whose content differs from old's, when
// old carried a sequence number and fetched does not carry a higher one.
func checkSequence(old, fetched *spiffebundle.Bundle) error {
	oldSeq, oldHas := old.SequenceNumber()
	if !oldHas {
		return nil
	}
	newSeq, newHas := fetched.SequenceNumber()
	switch {
	case !newHas:
		return fmt.Errorf("%w: a bundle without a sequence number after sequence %d", ErrSequence, oldSeq)
	case newSeq < oldSeq:
		return fmt.Errorf("%w: %d after %d", ErrSequence, newSeq, oldSeq)
	case newSeq == oldSeq:
		return fmt.Errorf("%w: other content under the same sequence %d", ErrSequence, oldSeq)
	}
	return nil
}

// fetch GETs the bundle from r's endpoint, authenticating the endpoint as
// its profile says (https_spiffe: an X.509-SVID with r's endpoint ID
// under current, the trust domain's bundle as stored).
func (f *Fetcher) fetch(ctx context.Context, r *datastore.Federation, current *spiffebundle.Bundle) (*spiffebundle.Bundle, error) {
	var tlsConf *tls.Config
	switch r.Profile {
	case datastore.ProfileHTTPSSPIFFE:
		if current == nil || len(current.X509Authorities()) == 0 {
			return nil, fmt.Errorf("federation: no bundle of %s to authenticate its endpoint with (create the relationship with its trust bundle)", r.TrustDomain.Name())
		}
		tlsConf = tlsconfig.TLSClientConfig(current, tlsconfig.AuthorizeID(r.EndpointSPIFFEID))
	case datastore.ProfileHTTPSWeb:
		tlsConf = &tls.Config{MinVersion: tls.VersionTLS12}
		tlsConf.RootCAs = f.cfg.RootCAs // nil: the system roots
	default:
		return nil, fmt.Errorf("federation: unknown profile %q", r.Profile)
	}
	transport := &http.Transport{Proxy: http.ProxyFromEnvironment, TLSClientConfig: tlsConf, ForceAttemptHTTP2: true,
		TLSHandshakeTimeout: f.cfg.Timeout, ResponseHeaderTimeout: f.cfg.Timeout, MaxResponseHeaderBytes: MaxResponseHead}
	client := &http.Client{
		Transport: transport,
		Timeout:   f.cfg.Timeout,
		// A bundle endpoint answers itself; redirects are not followed
		// (they would leave the authenticated endpoint).
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.BundleEndpointURL, http.NoBody)
	if err != nil {
		return nil, fmt.Errorf("federation: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("federation: GET %s: %w", r.BundleEndpointURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// The status code only: the reason phrase is the endpoint's text.
		return nil, fmt.Errorf("federation: GET %s: status %d", r.BundleEndpointURL, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBundleSize+1))
	if err != nil {
		return nil, fmt.Errorf("federation: GET %s: %w", r.BundleEndpointURL, err)
	}
	if len(body) > MaxBundleSize {
		return nil, fmt.Errorf("%w: %w: the bundle from %s is larger than %d bytes", ErrBundle, ErrBundleTooLarge, r.BundleEndpointURL, MaxBundleSize)
	}
	b, err := spiffebundle.Read(r.TrustDomain, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBundle, err)
	}
	if err := CheckBundle(r.TrustDomain, b); err != nil {
		return nil, err
	}
	return b, nil
}

// boundedError is an error whose text is cut to MaxErrorText bytes; it
// still unwraps to the error it cuts.
type boundedError struct {
	err  error
	text string
}

func (e *boundedError) Error() string { return e.text }
func (e *boundedError) Unwrap() error { return e.err }

// bounded returns err, or err with its text cut to MaxErrorText bytes
// (at a UTF-8 boundary) if it is longer: the errors of a fetch may quote
// what the endpoint sent, a malformed status line or bundle member of up
// to MaxResponseHead or MaxBundleSize bytes.
func bounded(err error) error {
	text := err.Error()
	if len(text) <= MaxErrorText {
		return err
	}
	const more = "... (cut)"
	cut := MaxErrorText - len(more)
	for cut > 0 && !utf8.RuneStart(text[cut]) {
		cut--
	}
	return &boundedError{err: err, text: text[:cut] + more}
}
