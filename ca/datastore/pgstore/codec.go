package pgstore

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// Records are stored as JSON. Strings must be valid UTF-8, which the
// store checks before writing (JSON would replace invalid bytes).

// stamp is a time stored as [Unix seconds, nanoseconds]: exact to the
// nanosecond for any year, unlike RFC 3339. It is read back in UTC.
type stamp struct{ time.Time }

func (s stamp) MarshalJSON() ([]byte, error) {
	return []byte("[" + strconv.FormatInt(s.Unix(), 10) + "," + strconv.Itoa(s.Nanosecond()) + "]"), nil
}

func (s *stamp) UnmarshalJSON(b []byte) error {
	var v [2]int64
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	s.Time = time.Unix(v[0], v[1]).UTC()
	return nil
}

// errDecode is wrapped by decoding failures, which callers report as
// datastore.ErrCorrupt.
var errDecode = errors.New("malformed record")

func corrupt(what string, err error) error {
	return fmt.Errorf("%w: %s: %w", datastore.ErrCorrupt, what, err)
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", entry.ErrInvalid, fmt.Sprintf(format, args...))
}

type selectorRecord struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

type entryRecord struct {
	ID          string           `json:"id"`
	SPIFFEID    string           `json:"spiffe_id"`
	ParentID    string           `json:"parent_id"`
	Selectors   []selectorRecord `json:"selectors,omitempty"`
	X509SVIDTTL int64            `json:"x509_svid_ttl,omitempty"`
	JWTSVIDTTL  int64            `json:"jwt_svid_ttl,omitempty"`
	DNSNames    []string         `json:"dns_names,omitempty"`
	Admin       bool             `json:"admin,omitempty"`
	Downstream  bool             `json:"downstream,omitempty"`
	CreatedAt   stamp            `json:"created_at"`
	Revision    uint64           `json:"revision"`
	Template    string           `json:"template,omitempty"`
	// FederatesWith are trust domain names.
	FederatesWith []string `json:"federates_with,omitempty"`
}

func encodeEntry(e *entry.Entry) []byte {
	r := entryRecord{
		ID:          e.ID,
		SPIFFEID:    e.SPIFFEID.String(),
		ParentID:    e.ParentID.String(),
		X509SVIDTTL: int64(e.X509SVIDTTL),
		JWTSVIDTTL:  int64(e.JWTSVIDTTL),
		DNSNames:    e.DNSNames,
		Admin:       e.Admin,
		Downstream:  e.Downstream,
		CreatedAt:   stamp{e.CreatedAt},
		Revision:    e.Revision,
		Template:    e.Template,
	}
	for _, s := range e.Selectors {
		r.Selectors = append(r.Selectors, selectorRecord{s.Type, s.Value})
	}
	for _, td := range e.FederatesWith {
		r.FederatesWith = append(r.FederatesWith, td.Name())
	}
	return mustJSON(r)
}

func decodeEntry(b []byte) (*entry.Entry, error) {
	var r entryRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %w", errDecode, err)
	}
	e := &entry.Entry{
		ID:          r.ID,
		X509SVIDTTL: time.Duration(r.X509SVIDTTL),
		JWTSVIDTTL:  time.Duration(r.JWTSVIDTTL),
		DNSNames:    r.DNSNames,
		Admin:       r.Admin,
		Downstream:  r.Downstream,
		CreatedAt:   r.CreatedAt.Time,
		Revision:    r.Revision,
		Template:    r.Template,
	}
	var err error
	if e.SPIFFEID, err = spiffeid.FromString(r.SPIFFEID); err != nil {
		return nil, fmt.Errorf("%w: SPIFFE ID: %w", errDecode, err)
	}
	if e.ParentID, err = spiffeid.FromString(r.ParentID); err != nil {
		return nil, fmt.Errorf("%w: parent ID: %w", errDecode, err)
	}
	for _, s := range r.Selectors {
		e.Selectors = append(e.Selectors, entry.Selector{Type: s.Type, Value: s.Value})
	}
	for _, name := range r.FederatesWith {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil || td.Name() != name {
			return nil, fmt.Errorf("%w: federated trust domain %q", errDecode, name)
		}
		e.FederatesWith = append(e.FederatesWith, td)
	}
	return e, nil
}

// selectorKey is how a selector is stored in writ_entries.selectors:
// the type's length first, so that no two selectors share a key.
func selectorKey(s entry.Selector) []byte {
	return []byte(strconv.Itoa(len(s.Type)) + ":" + s.Type + s.Value)
}

func selectorKeys(sels []entry.Selector) [][]byte {
	out := make([][]byte, len(sels))
	for i, s := range sels {
		out[i] = selectorKey(s)
	}
	return out
}

// validUTF8 reports whether every string of e is valid UTF-8.
func validUTF8(e *entry.Entry) bool {
	if !utf8.ValidString(e.ID) || !utf8.ValidString(e.Template) {
		return false
	}
	for _, s := range e.Selectors {
		if !utf8.ValidString(s.Type) || !utf8.ValidString(s.Value) {
			return false
		}
	}
	for _, n := range e.DNSNames {
		if !utf8.ValidString(n) {
			return false
		}
	}
	return true
}

type agentRecord struct {
	SPIFFEID         string `json:"spiffe_id"`
	AttestationType  string `json:"attestation_type"`
	SerialNumber     string `json:"serial_number"`
	PrevSerialNumber string `json:"prev_serial_number,omitempty"`
	CertNotAfter     stamp  `json:"cert_not_after"`
	Banned           bool   `json:"banned,omitempty"`
	CreatedAt        stamp  `json:"created_at"`
	UpdatedAt        stamp  `json:"updated_at"`
	// Selectors are the node selectors, type:value (schema version 2).
	Selectors []string `json:"selectors,omitempty"`
}

func checkAgentStrings(a *datastore.Agent) error {
	for _, x := range a.Selectors {
		if !utf8.ValidString(x.Type) || !utf8.ValidString(x.Value) || strings.Contains(x.Type, ":") {
			return invalid("agent has a node selector that is not valid UTF-8 or whose type holds ':'")
		}
	}
	if !utf8.ValidString(a.AttestationType) || !utf8.ValidString(a.SerialNumber) || !utf8.ValidString(a.PrevSerialNumber) {
		return invalid("agent has a field that is not valid UTF-8")
	}
	return nil
}

func encodeAgent(a *datastore.Agent) []byte {
	return mustJSON(agentRecord{
		SPIFFEID:         a.SPIFFEID.String(),
		AttestationType:  a.AttestationType,
		SerialNumber:     a.SerialNumber,
		PrevSerialNumber: a.PrevSerialNumber,
		CertNotAfter:     stamp{a.CertNotAfter},
		Banned:           a.Banned,
		CreatedAt:        stamp{a.CreatedAt},
		UpdatedAt:        stamp{a.UpdatedAt},
		Selectors:        selectorStrings(a.Selectors),
	})
}

func selectorStrings(sel []entry.Selector) []string {
	if len(sel) == 0 {
		return nil
	}
	out := make([]string, len(sel))
	for i, x := range sel {
		out[i] = x.String()
	}
	return out
}

func decodeAgent(b []byte) (*datastore.Agent, error) {
	var r agentRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %w", errDecode, err)
	}
	id, err := spiffeid.FromString(r.SPIFFEID)
	if err != nil {
		return nil, fmt.Errorf("%w: SPIFFE ID: %w", errDecode, err)
	}
	var sel []entry.Selector
	for _, x := range r.Selectors {
		typ, val, ok := strings.Cut(x, ":")
		if !ok {
			return nil, fmt.Errorf("%w: node selector is not type:value", errDecode)
		}
		sel = append(sel, entry.Selector{Type: typ, Value: val})
	}
	return &datastore.Agent{
		SPIFFEID:         id,
		Selectors:        sel,
		AttestationType:  r.AttestationType,
		SerialNumber:     r.SerialNumber,
		PrevSerialNumber: r.PrevSerialNumber,
		CertNotAfter:     r.CertNotAfter.Time,
		Banned:           r.Banned,
		CreatedAt:        r.CreatedAt.Time,
		UpdatedAt:        r.UpdatedAt.Time,
	}, nil
}

type joinTokenRecord struct {
	SPIFFEID  string `json:"spiffe_id"`
	ExpiresAt stamp  `json:"expires_at"`
	CreatedAt stamp  `json:"created_at"`
}

func encodeJoinToken(t *datastore.JoinToken) []byte {
	return mustJSON(joinTokenRecord{SPIFFEID: t.SPIFFEID.String(), ExpiresAt: stamp{t.ExpiresAt}, CreatedAt: stamp{t.CreatedAt}})
}

func decodeJoinToken(hash []byte, b []byte) (*datastore.JoinToken, error) {
	var r joinTokenRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %w", errDecode, err)
	}
	t := &datastore.JoinToken{Hash: string(hash), ExpiresAt: r.ExpiresAt.Time, CreatedAt: r.CreatedAt.Time}
	if r.SPIFFEID != "" {
		id, err := spiffeid.FromString(r.SPIFFEID)
		if err != nil {
			return nil, fmt.Errorf("%w: SPIFFE ID: %w", errDecode, err)
		}
		t.SPIFFEID = id
	}
	return t, nil
}

// unixNanos is t in Unix nanoseconds, clamped to the int64 range, so that
// comparisons keep their order for any time.
func unixNanos(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}

type caKeyRecord struct {
	ID           string `json:"id"`
	Kind         string `json:"kind"`
	State        string `json:"state"`
	ServerID     string `json:"server_id,omitempty"`
	KeyType      string `json:"key_type,omitempty"`
	CertDER      []byte `json:"cert_der,omitempty"`
	PublicKeyDER []byte `json:"public_key_der,omitempty"`
	NotBefore    stamp  `json:"not_before"`
	NotAfter     stamp  `json:"not_after"`
	SignedUntil  stamp  `json:"signed_until"`
}

func checkCAKeyStrings(k *datastore.CAKey) error {
	for _, s := range []string{k.ID, string(k.Kind), string(k.State), k.ServerID, k.KeyType} {
		if !utf8.ValidString(s) {
			return invalid("CA key has a field that is not valid UTF-8")
		}
	}
	return nil
}

func encodeCAKey(k *datastore.CAKey) []byte {
	return mustJSON(caKeyRecord{
		ID: k.ID, Kind: string(k.Kind), State: string(k.State), ServerID: k.ServerID, KeyType: k.KeyType,
		CertDER: k.CertDER, PublicKeyDER: k.PublicKeyDER, NotBefore: stamp{k.NotBefore}, NotAfter: stamp{k.NotAfter},
		SignedUntil: stamp{k.SignedUntil},
	})
}

func decodeCAKey(b []byte) (*datastore.CAKey, error) {
	var r caKeyRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %w", errDecode, err)
	}
	return &datastore.CAKey{
		ID: r.ID, Kind: datastore.CAKeyKind(r.Kind), State: datastore.CAKeyState(r.State), ServerID: r.ServerID,
		KeyType: r.KeyType, CertDER: r.CertDER, PublicKeyDER: r.PublicKeyDER, NotBefore: r.NotBefore.Time, NotAfter: r.NotAfter.Time,
		SignedUntil: r.SignedUntil.Time,
	}, nil
}

type serverRecord struct {
	ID        string `json:"id"`
	Address   string `json:"address,omitempty"`
	Version   string `json:"version,omitempty"`
	StartedAt stamp  `json:"started_at"`
	Heartbeat stamp  `json:"heartbeat"`
}

func encodeServer(s *datastore.Server) []byte {
	return mustJSON(serverRecord{ID: s.ID, Address: s.Address, Version: s.Version, StartedAt: stamp{s.StartedAt}, Heartbeat: stamp{s.Heartbeat}})
}

func decodeServer(b []byte) (*datastore.Server, error) {
	var r serverRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %w", errDecode, err)
	}
	return &datastore.Server{ID: r.ID, Address: r.Address, Version: r.Version, StartedAt: r.StartedAt.Time, Heartbeat: r.Heartbeat.Time}, nil
}

// bundleRecord keeps what the SPIFFE bundle format cannot: an empty
// bundle, the exact refresh hint, the order of X.509 authorities. JSON
// objects are written with sorted keys, so equal bundles encode to equal
// bytes, which UpdateBundle relies on.
type bundleRecord struct {
	X509        [][]byte          `json:"x509,omitempty"`
	JWT         map[string][]byte `json:"jwt,omitempty"`
	WIT         map[string][]byte `json:"wit,omitempty"`
	RefreshHint *int64            `json:"refresh_hint,omitempty"`
	Sequence    *uint64           `json:"sequence,omitempty"`
}

func encodeBundle(b *spiffebundle.Bundle) ([]byte, error) {
	var r bundleRecord
	for _, c := range b.X509Authorities() {
		r.X509 = append(r.X509, c.Raw)
	}
	var err error
	if r.JWT, err = marshalKeys(b.JWTAuthorities()); err != nil {
		return nil, fmt.Errorf("bundle %s: JWT authority: %w", b.TrustDomain().Name(), err)
	}
	if r.WIT, err = marshalKeys(b.WITAuthorities()); err != nil {
		return nil, fmt.Errorf("bundle %s: WIT authority: %w", b.TrustDomain().Name(), err)
	}
	for id := range r.JWT {
		if !utf8.ValidString(id) {
			return nil, invalid("bundle %s has a key ID that is not valid UTF-8", b.TrustDomain().Name())
		}
	}
	for id := range r.WIT {
		if !utf8.ValidString(id) {
			return nil, invalid("bundle %s has a key ID that is not valid UTF-8", b.TrustDomain().Name())
		}
	}
	if hint, ok := b.RefreshHint(); ok {
		h := int64(hint)
		r.RefreshHint = &h
	}
	if seq, ok := b.SequenceNumber(); ok {
		r.Sequence = &seq
	}
	return mustJSON(r), nil
}

func marshalKeys(keys map[string]crypto.PublicKey) (map[string][]byte, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	out := make(map[string][]byte, len(keys))
	for id, k := range keys {
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", entry.Printable(id), err)
		}
		out[id] = der
	}
	return out, nil
}

func decodeBundle(td spiffeid.TrustDomain, b []byte) (*spiffebundle.Bundle, error) {
	var r bundleRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %w", errDecode, err)
	}
	bundle := spiffebundle.New(td)
	for _, der := range r.X509 {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: X.509 authority: %w", errDecode, err)
		}
		bundle.AddX509Authority(c)
	}
	for _, set := range []struct {
		keys map[string][]byte
		add  func(string, crypto.PublicKey) error
	}{{r.JWT, bundle.AddJWTAuthority}, {r.WIT, bundle.AddWITAuthority}} {
		for id, der := range set.keys {
			k, err := x509.ParsePKIXPublicKey(der)
			if err == nil {
				err = set.add(id, k)
			}
			if err != nil {
				return nil, fmt.Errorf("%w: authority %q: %w", errDecode, entry.Printable(id), err)
			}
		}
	}
	if r.RefreshHint != nil {
		bundle.SetRefreshHint(time.Duration(*r.RefreshHint))
	}
	if r.Sequence != nil {
		bundle.SetSequenceNumber(*r.Sequence)
	}
	return bundle, nil
}

// mustJSON marshals records made only of strings, numbers, times and
// byte slices, which cannot fail.
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("pgstore: encoding a record: " + err.Error())
	}
	return b
}

func validString(s string) bool { return utf8.ValidString(s) }
