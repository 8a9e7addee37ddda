package nodeapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/x509ca"

	"writ.dev/writ/internal/logkey"
)

const (
	// certRetry is how soon a failed server certificate renewal is retried.
	certRetry = 10 * time.Second
	// activeCheck is how often the renewer looks whether the key manager
	// activated another CA, besides the checks that store changes and TLS
	// handshakes trigger.
	activeCheck = time.Minute
)

// errNoBundle: the store has no local bundle, so nothing verifies.
var errNoBundle = errors.New("nodeapi: no local trust bundle")

// serverCert is a signed TLS certificate of the server and when to renew
// it. It is never modified once published.
type serverCert struct {
	cert *tls.Certificate
	// issuer is the CA certificate that signed it, to tell when the key
	// manager activates another.
	issuer  *x509.Certificate
	renewAt time.Time
}

// TLSConfig returns the TLS configuration the node API must be served
// with: TLS 1.3, the server's X.509-SVID from GetCertificate, client
// certificates requested but optional (Attest needs none), and a
// VerifyConnection that refuses, also on resumed sessions, a client
// certificate that is not an X.509-SVID of the trust domain valid now
// under the current bundle. Each call returns a new *tls.Config.
func (s *Service) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		GetCertificate:   s.getCertificate,
		ClientAuth:       tls.RequestClientCert,
		VerifyConnection: s.verifyConnection,
		Time:             s.clock.Now,
		NextProtos:       []string{"h2"},
	}
}

func (s *Service) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	cur := s.cert.Load()
	if cur == nil {
		return nil, errors.New("nodeapi: the server has no certificate yet")
	}
	if a := s.km.Active(); a == nil || a.X509 == nil || a.X509.Cert != cur.issuer || !s.clock.Now().Before(cur.renewAt) {
		s.kickRenewer()
	}
	return cur.cert, nil
}

// verifyConnection checks the client certificate, if there is one. It
// runs on full handshakes and on resumed sessions.
func (s *Service) verifyConnection(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	if _, err := s.verifyPeer(cs.PeerCertificates); err != nil {
		s.log.Debug("TLS client certificate refused", logkey.Reason, err.Error())
		return err
	}
	return nil
}

// verifyPeer verifies a client certificate chain against the current
// local bundle at the current time and returns its SPIFFE ID.
func (s *Service) verifyPeer(chain []*x509.Certificate) (spiffeid.ID, error) {
	b := s.idx.bundle.Load()
	if b == nil || len(b.roots) == 0 {
		return spiffeid.ID{}, errNoBundle
	}
	now := s.clock.Now()
	if id, ok := b.peers.lookup(chain, now); ok {
		return id, nil
	}
	id, err := x509ca.VerifyX509SVID(chain, b.roots, now)
	if err != nil {
		return spiffeid.ID{}, err
	}
	b.peers.add(chain, b.roots, id)
	return id, nil
}

// maxVerifiedPeers bounds a peerCache; when full it starts afresh.
const maxVerifiedPeers = 4096

// peerCache remembers the client certificate chains that verified against
// one bundleState's roots, by their leaf. A TLS connection presents the
// same parsed chain (the same *x509.Certificate values) on every call, so
// its calls after the first skip the chain's signature checks. A hit needs
// the very same certificates in the same order and a time inside the
// validity of every certificate of the chain and of every root, so the
// answer is the one x509ca.VerifyX509SVID would give; a new bundle is a
// new bundleState with an empty cache. Agent status (ban, eviction,
// renewal) is checked on every call apart from this.
type peerCache struct {
	mu sync.Mutex // guards m
	m  map[*x509.Certificate]*verifiedPeer
}

type verifiedPeer struct {
	chain               []*x509.Certificate
	id                  spiffeid.ID
	notBefore, notAfter time.Time
}

func (c *peerCache) lookup(chain []*x509.Certificate, now time.Time) (spiffeid.ID, bool) {
	c.mu.Lock()
	v := c.m[chain[0]]
	c.mu.Unlock()
	if v == nil || !slices.Equal(v.chain, chain) || now.Before(v.notBefore) || now.After(v.notAfter) {
		return spiffeid.ID{}, false
	}
	return v.id, true
}

func (c *peerCache) add(chain, roots []*x509.Certificate, id spiffeid.ID) {
	v := &verifiedPeer{chain: slices.Clone(chain), id: id}
	for i, cert := range slices.Concat(chain, roots) {
		if i == 0 || cert.NotBefore.After(v.notBefore) {
			v.notBefore = cert.NotBefore
		}
		if i == 0 || cert.NotAfter.Before(v.notAfter) {
			v.notAfter = cert.NotAfter
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxVerifiedPeers {
		c.m = make(map[*x509.Certificate]*verifiedPeer)
	}
	c.m[chain[0]] = v
}

func (s *Service) kickRenewer() {
	select {
	case s.renewKick <- struct{}{}:
	default:
	}
}

// renewLoop keeps the server's certificate signed: at first, at half its
// lifetime, and when the key manager activates another CA. A failed
// renewal keeps the current certificate and is retried.
func (s *Service) renewLoop(ctx context.Context) {
	t := s.clock.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		case <-s.renewKick:
		}
		next := s.checkServerCert()
		t.Stop()
		t.Reset(next.Sub(s.clock.Now()))
	}
}

// checkServerCert renews the server certificate if it is due or its CA is
// no longer the active one, and returns when to check next.
func (s *Service) checkServerCert() time.Time {
	now := s.clock.Now()
	cur := s.cert.Load()
	a := s.km.Active()
	due := cur == nil || !now.Before(cur.renewAt) || (a != nil && a.X509 != nil && a.X509.Cert != cur.issuer)
	if due {
		next, err := s.issueServerCert(now)
		if err == nil {
			cur = next
		} else {
			s.log.Error("cannot sign the server's TLS certificate; keeping the current one", logkey.Error, err.Error(), "retry_in", certRetry.String())
			return now.Add(certRetry)
		}
	}
	return minTime(cur.renewAt, now.Add(activeCheck))
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// issueServerCert signs a new certificate for a new key and publishes it.
func (s *Service) issueServerCert(now time.Time) (*serverCert, error) {
	a := s.km.Active()
	if a == nil || a.X509 == nil {
		return nil, errors.New("no active X.509 CA")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate server key: %w", err)
	}
	der, err := x509ca.SignX509SVID(now, a.X509, x509ca.SVIDParams{
		ID:        s.serverID,
		TTL:       s.x509TTL,
		PublicKey: key.Public(),
	})
	if err != nil {
		return nil, fmt.Errorf("sign server certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse server certificate: %w", err)
	}
	sc := &serverCert{
		cert: &tls.Certificate{
			Certificate: a.X509.SVIDChain(der),
			PrivateKey:  key,
			Leaf:        leaf,
		},
		issuer:  a.X509.Cert,
		renewAt: now.Add(leaf.NotAfter.Sub(now) / 2),
	}
	s.cert.Store(sc)
	s.log.Info("server TLS certificate signed", logkey.SPIFFEID, s.serverID.String(), logkey.Serial, leaf.SerialNumber.String(), logkey.NotAfter, leaf.NotAfter)
	s.certIssued.Store(true)
	s.checkReady()
	return sc, nil
}
