package nodeapi

import (
	"crypto/tls"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// GetServerCertificate returns the server's current X.509-SVID (the one
// the node API serves), for other TLS endpoints of the server that
// authenticate as it, such as the SPIFFE bundle endpoint.
func (s *Service) GetServerCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.getCertificate(hello)
}

// ServerID is the SPIFFE ID of the server's X.509-SVID.
func (s *Service) ServerID() spiffeid.ID { return s.serverID }
