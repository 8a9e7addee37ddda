package datastore

import (
	"encoding/json"
	"fmt"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/entry"
)

// Bundle endpoint profiles of a Federation.
const (
	ProfileHTTPSSPIFFE = "https_spiffe"
	ProfileHTTPSWeb    = "https_web"
)

// CheckFederation validates r as every backend stores it.
func CheckFederation(r *Federation) error {
	switch {
	case r == nil || r.TrustDomain.IsZero():
		return invalidf("federation: no trust domain")
	case r.Profile != ProfileHTTPSSPIFFE && r.Profile != ProfileHTTPSWeb:
		return invalidf("federation with %s: profile %q is neither %s nor %s", r.TrustDomain.Name(), r.Profile, ProfileHTTPSSPIFFE, ProfileHTTPSWeb)
	case r.Profile == ProfileHTTPSSPIFFE && r.EndpointSPIFFEID.IsZero():
		return invalidf("federation with %s: the https_spiffe profile needs the endpoint's SPIFFE ID", r.TrustDomain.Name())
	case r.Profile == ProfileHTTPSWeb && !r.EndpointSPIFFEID.IsZero():
		return invalidf("federation with %s: an endpoint SPIFFE ID is only for the https_spiffe profile", r.TrustDomain.Name())
	}
	u, err := url.Parse(r.BundleEndpointURL)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.Fragment != "" || len(r.BundleEndpointURL) > 2048 {
		return invalidf("federation with %s: bundle endpoint URL must be an https URL without user information or fragment", r.TrustDomain.Name())
	}
	return nil
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", entry.ErrInvalid, fmt.Sprintf(format, args...))
}

// federationRecord is a Federation as the backends store it.
type federationRecord struct {
	TrustDomain       string    `json:"trust_domain"`
	BundleEndpointURL string    `json:"bundle_endpoint_url"`
	Profile           string    `json:"profile"`
	EndpointSPIFFEID  string    `json:"endpoint_spiffe_id,omitempty"`
	CreatedAt         time.Time `json:"created_at"`
	UpdatedAt         time.Time `json:"updated_at"`
}

// EncodeFederation encodes r for storage.
func EncodeFederation(r *Federation) []byte {
	rec := federationRecord{TrustDomain: r.TrustDomain.Name(), BundleEndpointURL: r.BundleEndpointURL, Profile: r.Profile, CreatedAt: r.CreatedAt.UTC(), UpdatedAt: r.UpdatedAt.UTC()}
	if !r.EndpointSPIFFEID.IsZero() {
		rec.EndpointSPIFFEID = r.EndpointSPIFFEID.String()
	}
	b, _ := json.Marshal(rec) // cannot fail: strings and times
	return b
}

// DecodeFederation decodes a stored relationship.
func DecodeFederation(b []byte) (*Federation, error) {
	var rec federationRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(rec.TrustDomain)
	if err != nil {
		return nil, err
	}
	r := &Federation{TrustDomain: td, BundleEndpointURL: rec.BundleEndpointURL, Profile: rec.Profile, CreatedAt: rec.CreatedAt, UpdatedAt: rec.UpdatedAt}
	if rec.EndpointSPIFFEID != "" {
		if r.EndpointSPIFFEID, err = spiffeid.FromString(rec.EndpointSPIFFEID); err != nil {
			return nil, err
		}
	}
	return r, CheckFederation(r)
}
