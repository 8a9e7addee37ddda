package boltstore

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
)

// recordVersion is the first byte of every stored record. A change to the
// layout of any record gets a new version, and the decoders of older
// versions stay so that a newer writ can migrate an older file.
const recordVersion byte = 1

// Records are a version byte, fields in a fixed order, and a CRC-32C of
// all that (4 bytes, little endian). Strings and byte slices are a
// uvarint length and the bytes; integers are varints; times are a
// presence byte then Unix seconds (varint) and nanoseconds (uvarint);
// booleans are one byte. Zero SPIFFE IDs are empty strings.
//
// bbolt checksums only its meta pages. The CRC catches damage inside a
// record that would otherwise still decode, such as a flipped bit that
// turns an entry's Admin flag on.

// crcTable is CRC-32C, which most CPUs compute in hardware.
var crcTable = crc32.MakeTable(crc32.Castagnoli)

const crcSize = 4

type encoder struct{ b []byte }

func newEncoder(sizeHint int) *encoder {
	e := &encoder{b: make([]byte, 0, sizeHint)}
	e.b = append(e.b, recordVersion)
	return e
}

// finish appends the CRC and returns the record.
func (e *encoder) finish() []byte {
	return binary.LittleEndian.AppendUint32(e.b, crc32.Checksum(e.b, crcTable))
}

func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) byte(v byte)      { e.b = append(e.b, v) }

func (e *encoder) str(s string) {
	e.uvarint(uint64(len(s)))
	e.b = append(e.b, s...)
}

func (e *encoder) bytes(b []byte) {
	e.uvarint(uint64(len(b)))
	e.b = append(e.b, b...)
}

func (e *encoder) bool(v bool) {
	if v {
		e.byte(1)
	} else {
		e.byte(0)
	}
}

func (e *encoder) id(id spiffeid.ID) {
	if id.IsZero() {
		e.str("")
		return
	}
	e.str(id.String())
}

func (e *encoder) time(t time.Time) {
	if t.IsZero() {
		e.byte(0)
		return
	}
	e.byte(1)
	e.varint(t.Unix())
	e.uvarint(uint64(t.Nanosecond()))
}

// errDecode is wrapped by decoder failures; callers turn it into
// datastore.ErrCorrupt with the record's name.
var errDecode = errors.New("malformed record")

// decoder reads what encoder wrote. The first failure sticks: later reads
// return zero values and err reports the first failure. Every value it
// returns is a copy: nothing aliases the input, which for bbolt is only
// valid inside the transaction.
type decoder struct {
	b   []byte
	err error
}

func newDecoder(b []byte) *decoder {
	d := &decoder{b: b}
	if len(b) < 1+crcSize {
		d.fail("record too short")
		return d
	}
	body := b[:len(b)-crcSize]
	if crc32.Checksum(body, crcTable) != binary.LittleEndian.Uint32(b[len(body):]) {
		d.fail("checksum mismatch")
		return d
	}
	if body[0] != recordVersion {
		d.fail(fmt.Sprintf("unknown record format version %d", body[0]))
		return d
	}
	d.b = body[1:]
	return d
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", errDecode, what)
	}
	d.b = nil
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.fail("truncated")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

// raw returns the next length-prefixed field without copying it.
func (d *decoder) raw() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length beyond end of record")
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string { return string(d.raw()) }

func (d *decoder) bytes() []byte {
	v := d.raw()
	if len(v) == 0 {
		return nil
	}
	return bytes.Clone(v)
}

func (d *decoder) bool() bool {
	switch d.byte() {
	case 0:
		return false
	case 1:
		return true
	default:
		d.fail("bad boolean")
		return false
	}
}

// count reads a number of items, each at least min bytes long, so that
// a corrupt count cannot make the caller allocate more than the record
// could hold.
func (d *decoder) count(min int) int {
	n := d.uvarint()
	if d.err != nil {
		return 0
	}
	if n > uint64(len(d.b)/min) {
		d.fail("count beyond end of record")
		return 0
	}
	return int(n)
}

func (d *decoder) id() spiffeid.ID {
	s := d.raw()
	if d.err != nil || len(s) == 0 {
		return spiffeid.ID{}
	}
	id, err := spiffeid.FromString(string(s))
	if err != nil {
		d.fail(fmt.Sprintf("bad SPIFFE ID: %v", err))
		return spiffeid.ID{}
	}
	return id
}

func (d *decoder) time() time.Time {
	switch d.byte() {
	case 0:
		return time.Time{}
	case 1:
		sec := d.varint()
		nsec := d.uvarint()
		if nsec >= uint64(time.Second) {
			d.fail("bad nanoseconds")
			return time.Time{}
		}
		return time.Unix(sec, int64(nsec)).UTC()
	default:
		d.fail("bad time")
		return time.Time{}
	}
}

// done reports the first failure, or trailing bytes.
func (d *decoder) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	return d.err
}

// corrupt wraps a decoding failure of the named record in
// datastore.ErrCorrupt.
func corrupt(what string, err error) error {
	return fmt.Errorf("%w: %s: %w", datastore.ErrCorrupt, what, err)
}

// Entries.

// entryFlagTemplate says a template string follows the revision; records
// without it are read as they always were. entryFlagFederates says a list
// of trust domain names follows (after the template, if any).
const entryFlagAdmin, entryFlagDownstream, entryFlagTemplate, entryFlagFederates = 1, 2, 4, 8

func encodeEntry(e *entry.Entry) []byte {
	enc := newEncoder(128 + 32*len(e.Selectors))
	enc.entry(e)
	return enc.finish()
}

func (e *encoder) entry(en *entry.Entry) {
	e.str(en.ID)
	e.id(en.SPIFFEID)
	e.id(en.ParentID)
	e.uvarint(uint64(len(en.Selectors)))
	for _, s := range en.Selectors {
		e.str(s.Type)
		e.str(s.Value)
	}
	e.varint(int64(en.X509SVIDTTL))
	e.varint(int64(en.JWTSVIDTTL))
	e.uvarint(uint64(len(en.DNSNames)))
	for _, n := range en.DNSNames {
		e.str(n)
	}
	var flags byte
	if en.Admin {
		flags |= entryFlagAdmin
	}
	if en.Downstream {
		flags |= entryFlagDownstream
	}
	if en.Template != "" {
		flags |= entryFlagTemplate
	}
	if len(en.FederatesWith) > 0 {
		flags |= entryFlagFederates
	}
	e.byte(flags)
	e.time(en.CreatedAt)
	e.uvarint(en.Revision)
	if en.Template != "" {
		e.str(en.Template)
	}
	if len(en.FederatesWith) > 0 {
		e.uvarint(uint64(len(en.FederatesWith)))
		for _, td := range en.FederatesWith {
			e.str(td.Name())
		}
	}
}

func decodeEntry(b []byte) (*entry.Entry, error) {
	d := newDecoder(b)
	e := d.entry()
	if err := d.done(); err != nil {
		return nil, err
	}
	return e, nil
}

func (d *decoder) entry() *entry.Entry {
	e := &entry.Entry{
		ID:       d.str(),
		SPIFFEID: d.id(),
		ParentID: d.id(),
	}
	if n := d.count(2); n > 0 {
		e.Selectors = make([]entry.Selector, n)
		for i := range e.Selectors {
			e.Selectors[i] = entry.Selector{Type: d.str(), Value: d.str()}
		}
	}
	e.X509SVIDTTL = time.Duration(d.varint())
	e.JWTSVIDTTL = time.Duration(d.varint())
	if n := d.count(1); n > 0 {
		e.DNSNames = make([]string, n)
		for i := range e.DNSNames {
			e.DNSNames[i] = d.str()
		}
	}
	flags := d.byte()
	if flags&^(entryFlagAdmin|entryFlagDownstream|entryFlagTemplate|entryFlagFederates) != 0 {
		d.fail("unknown entry flags")
	}
	e.Admin = flags&entryFlagAdmin != 0
	e.Downstream = flags&entryFlagDownstream != 0
	e.CreatedAt = d.time()
	e.Revision = d.uvarint()
	if flags&entryFlagTemplate != 0 {
		if e.Template = d.str(); d.err == nil && e.Template == "" {
			d.fail("template flag without a template")
		}
	}
	if flags&entryFlagFederates != 0 {
		n := d.count(1)
		if d.err == nil && n == 0 {
			d.fail("federates flag without trust domains")
		}
		for range n {
			name := d.str()
			if d.err != nil {
				break
			}
			td, err := spiffeid.TrustDomainFromString(name)
			if err != nil || td.Name() != name {
				d.fail("bad federated trust domain")
				break
			}
			e.FederatesWith = append(e.FederatesWith, td)
		}
	}
	if d.err == nil && (e.ID == "" || e.SPIFFEID.IsZero() || e.ParentID.IsZero()) {
		d.fail("entry without ID, SPIFFE ID or parent ID")
	}
	return e
}

// Events. The revision is the key, not part of the record.

func encodeEvent(kind datastore.EventKind, key string, e *entry.Entry) []byte {
	enc := newEncoder(160)
	enc.byte(byte(kind))
	enc.str(key)
	enc.bool(e != nil)
	if e != nil {
		enc.entry(e)
	}
	return enc.finish()
}

func decodeEvent(rev uint64, b []byte) (datastore.Event, error) {
	d := newDecoder(b)
	ev := datastore.Event{Revision: rev}
	ev.Kind = datastore.EventKind(d.byte())
	ev.Key = d.str()
	if d.bool() {
		ev.Entry = d.entry()
	}
	if err := d.done(); err != nil {
		return datastore.Event{}, err
	}
	switch ev.Kind {
	case datastore.EventEntry:
		if ev.Entry != nil && ev.Entry.ID != ev.Key {
			return datastore.Event{}, fmt.Errorf("%w: entry event key differs from entry ID", errDecode)
		}
	case datastore.EventAgent, datastore.EventBundle, datastore.EventRevocation:
		if ev.Entry != nil {
			return datastore.Event{}, fmt.Errorf("%w: non-entry event carries an entry", errDecode)
		}
	default:
		return datastore.Event{}, fmt.Errorf("%w: unknown event kind %d", errDecode, ev.Kind)
	}
	return ev, nil
}

// Agents.

func encodeAgent(a *datastore.Agent) []byte {
	e := newEncoder(128)
	e.id(a.SPIFFEID)
	e.str(a.AttestationType)
	e.str(a.SerialNumber)
	e.str(a.PrevSerialNumber)
	e.time(a.CertNotAfter)
	e.bool(a.Banned)
	e.time(a.CreatedAt)
	e.time(a.UpdatedAt)
	// Node selectors come last: records written before agents had them
	// end here.
	if len(a.Selectors) > 0 {
		e.uvarint(uint64(len(a.Selectors)))
		for _, x := range a.Selectors {
			e.str(x.Type)
			e.str(x.Value)
		}
	}
	return e.finish()
}

func decodeAgent(b []byte) (*datastore.Agent, error) {
	d := newDecoder(b)
	a := &datastore.Agent{
		SPIFFEID:         d.id(),
		AttestationType:  d.str(),
		SerialNumber:     d.str(),
		PrevSerialNumber: d.str(),
		CertNotAfter:     d.time(),
		Banned:           d.bool(),
		CreatedAt:        d.time(),
		UpdatedAt:        d.time(),
	}
	if d.err == nil && len(d.b) > 0 {
		if n := d.count(2); n > 0 {
			a.Selectors = make([]entry.Selector, n)
			for i := range a.Selectors {
				a.Selectors[i] = entry.Selector{Type: d.str(), Value: d.str()}
			}
		}
	}
	if err := d.done(); err != nil {
		return nil, err
	}
	return a, nil
}

// Join tokens.

func encodeJoinToken(t *datastore.JoinToken) []byte {
	e := newEncoder(128)
	e.str(t.Hash)
	e.id(t.SPIFFEID)
	e.time(t.ExpiresAt)
	e.time(t.CreatedAt)
	return e.finish()
}

func decodeJoinToken(b []byte) (*datastore.JoinToken, error) {
	d := newDecoder(b)
	t := &datastore.JoinToken{
		Hash:      d.str(),
		SPIFFEID:  d.id(),
		ExpiresAt: d.time(),
		CreatedAt: d.time(),
	}
	if err := d.done(); err != nil {
		return nil, err
	}
	return t, nil
}

// CA keys.

func encodeCAKey(k *datastore.CAKey) []byte {
	e := newEncoder(64 + len(k.CertDER) + len(k.PublicKeyDER))
	e.str(k.ID)
	e.str(string(k.Kind))
	e.str(string(k.State))
	e.str(k.KeyType)
	e.bytes(k.CertDER)
	e.bytes(k.PublicKeyDER)
	e.time(k.NotBefore)
	e.time(k.NotAfter)
	e.str(k.ServerID)
	e.time(k.SignedUntil)
	return e.finish()
}

func decodeCAKey(b []byte) (*datastore.CAKey, error) {
	d := newDecoder(b)
	k := &datastore.CAKey{
		ID:           d.str(),
		Kind:         datastore.CAKeyKind(d.str()),
		State:        datastore.CAKeyState(d.str()),
		KeyType:      d.str(),
		CertDER:      d.bytes(),
		PublicKeyDER: d.bytes(),
		NotBefore:    d.time(),
		NotAfter:     d.time(),
	}
	// Records written before keys had owners end here.
	if d.err == nil && len(d.b) > 0 {
		k.ServerID = d.str()
	}
	// Records written before SignedUntil was kept end here.
	if d.err == nil && len(d.b) > 0 {
		k.SignedUntil = d.time()
	}
	if err := d.done(); err != nil {
		return nil, err
	}
	return k, nil
}

// Servers.

func encodeServer(s *datastore.Server) []byte {
	e := newEncoder(64 + len(s.ID) + len(s.Address) + len(s.Version))
	e.str(s.ID)
	e.str(s.Address)
	e.str(s.Version)
	e.time(s.StartedAt)
	e.time(s.Heartbeat)
	return e.finish()
}

func decodeServer(b []byte) (*datastore.Server, error) {
	d := newDecoder(b)
	s := &datastore.Server{
		ID:        d.str(),
		Address:   d.str(),
		Version:   d.str(),
		StartedAt: d.time(),
		Heartbeat: d.time(),
	}
	if err := d.done(); err != nil {
		return nil, err
	}
	return s, nil
}

// Bundles are stored field by field rather than as the JWKS document of
// the SPIFFE bundle format: the JWKS form cannot hold an empty bundle,
// rounds the refresh hint to seconds and orders JWT keys at random. Here
// X.509 authorities keep their order and JWT and WIT authorities are
// sorted by key ID, so equal bundles encode to equal bytes.

func encodeBundle(b *spiffebundle.Bundle) ([]byte, error) {
	e := newEncoder(1024)
	x509s := b.X509Authorities()
	e.uvarint(uint64(len(x509s)))
	for _, c := range x509s {
		e.bytes(c.Raw)
	}
	for _, keys := range []map[string]crypto.PublicKey{b.JWTAuthorities(), b.WITAuthorities()} {
		ids := make([]string, 0, len(keys))
		for id := range keys {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		e.uvarint(uint64(len(ids)))
		for _, id := range ids {
			der, err := x509.MarshalPKIXPublicKey(keys[id])
			if err != nil {
				return nil, fmt.Errorf("marshal key %q of bundle %s: %w", entry.Printable(id), b.TrustDomain().Name(), err)
			}
			e.str(id)
			e.bytes(der)
		}
	}
	hint, ok := b.RefreshHint()
	e.bool(ok)
	if ok {
		e.varint(int64(hint))
	}
	seq, ok := b.SequenceNumber()
	e.bool(ok)
	if ok {
		e.uvarint(seq)
	}
	return e.finish(), nil
}

func decodeBundle(td spiffeid.TrustDomain, b []byte) (*spiffebundle.Bundle, error) {
	d := newDecoder(b)
	bundle := spiffebundle.New(td)
	n := d.count(1)
	for range n {
		c, err := x509.ParseCertificate(d.bytes())
		if d.err != nil {
			break
		}
		if err != nil {
			d.fail(fmt.Sprintf("bad X.509 authority: %v", err))
			break
		}
		bundle.AddX509Authority(c)
	}
	kinds := []string{"JWT", "WIT"}
	for i, add := range []func(string, crypto.PublicKey) error{bundle.AddJWTAuthority, bundle.AddWITAuthority} {
		n := d.count(2)
		for range n {
			id := d.str()
			key, err := x509.ParsePKIXPublicKey(d.bytes())
			if d.err != nil {
				break
			}
			if err == nil {
				err = add(id, key)
			}
			if err != nil {
				d.fail(fmt.Sprintf("bad %s authority: %v", kinds[i], err))
				break
			}
		}
	}
	if d.bool() {
		bundle.SetRefreshHint(time.Duration(d.varint()))
	}
	if d.bool() {
		bundle.SetSequenceNumber(d.uvarint())
	}
	if err := d.done(); err != nil {
		return nil, err
	}
	return bundle, nil
}

// Index keys. Each indexed string is length-prefixed, so a key's prefix
// names exactly one value whatever bytes the value holds: "spiffe://a/b"
// is not a prefix of the key for "spiffe://a/bc", nor "unix:uid:1" of
// "unix:uid:10". The entry's sequence number (8 bytes) follows the
// prefix.

func appendIndexString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func idPrefix(id spiffeid.ID) []byte {
	s := id.String()
	return appendIndexString(make([]byte, 0, len(s)+3+8), s)
}

func selectorPrefix(s entry.Selector) []byte {
	b := make([]byte, 0, len(s.Type)+len(s.Value)+6+8)
	b = appendIndexString(b, s.Type)
	return appendIndexString(b, s.Value)
}

func indexKey(prefix, seq []byte) []byte {
	return append(prefix[:len(prefix):len(prefix)], seq...)
}

// revisionKey is the key of an event, and of an entry created at rev.
func revisionKey(rev uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), rev)
}
