package adminv1

import (
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/entry"
)

// EntryFromDomain returns the wire form of e: selectors as "type:value",
// TTLs in whole seconds, times in Unix seconds (0 for a zero time). The
// CLI and the server both convert with it, so the two never disagree.
func EntryFromDomain(e *entry.Entry) *Entry {
	sels := make([]string, len(e.Selectors))
	for i, sel := range e.Selectors {
		sels[i] = sel.String()
	}
	var created int64
	if !e.CreatedAt.IsZero() {
		created = e.CreatedAt.Unix()
	}
	return &Entry{
		Id:          e.ID,
		SpiffeId:    e.SPIFFEID.String(),
		ParentId:    e.ParentID.String(),
		Selectors:   sels,
		X509SvidTtl: int64(e.X509SVIDTTL / time.Second),
		JwtSvidTtl:  int64(e.JWTSVIDTTL / time.Second),
		DnsNames:    append([]string(nil), e.DNSNames...),
		Admin:       e.Admin,
		Downstream:  e.Downstream,
		CreatedAt:   created,
		Revision:    e.Revision,
		Template:    e.Template,

		FederatesWith: trustDomainNames(e.FederatesWith),
	}
}

// trustDomainNames returns the names of tds, nil if there are none.
func trustDomainNames(tds []spiffeid.TrustDomain) []string {
	if len(tds) == 0 {
		return nil
	}
	out := make([]string, len(tds))
	for i, td := range tds {
		out[i] = td.Name()
	}
	return out
}
