package boltstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"reflect"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/testca"
)

var (
	testTD = spiffeid.RequireTrustDomainFromString("example.org")
	testT0 = time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
)

func testEntries() []*entry.Entry {
	return []*entry.Entry{
		{
			ID:          entry.NewID(),
			SPIFFEID:    spiffeid.RequireFromPath(testTD, "/w/a"),
			ParentID:    spiffeid.RequireFromPath(testTD, "/agent/1"),
			Selectors:   []entry.Selector{{Type: "k8s", Value: "ns:a"}, {Type: "unix", Value: "uid:0"}},
			X509SVIDTTL: time.Hour,
			JWTSVIDTTL:  5 * time.Minute,
			DNSNames:    []string{"a.example.org", "b.example.org"},
			Admin:       true,
			Downstream:  true,
			CreatedAt:   testT0,
			Revision:    1 << 40,
		},
		{
			ID:       "x",
			SPIFFEID: spiffeid.RequireFromPath(testTD, "/w/b"),
			ParentID: spiffeid.RequireFromPath(testTD, "/agent/2"),
		},
	}
}

func TestCodecRoundTrip(t *testing.T) {
	for _, e := range testEntries() {
		got, err := decodeEntry(encodeEntry(e))
		if err != nil || !reflect.DeepEqual(got, e) {
			t.Errorf("entry: got %+v, %v; want %+v", got, err, e)
		}
		for _, ev := range []datastore.Event{
			{Revision: 9, Kind: datastore.EventEntry, Key: e.ID, Entry: e},
			{Revision: 9, Kind: datastore.EventEntry, Key: e.ID},
		} {
			got, err := decodeEvent(9, encodeEvent(ev.Kind, ev.Key, ev.Entry))
			if err != nil || !reflect.DeepEqual(got, ev) {
				t.Errorf("event: got %+v, %v; want %+v", got, err, ev)
			}
		}
	}
	agent := &datastore.Agent{
		SPIFFEID: spiffeid.RequireFromPath(testTD, "/agent/1"), AttestationType: "join_token",
		SerialNumber: "1", PrevSerialNumber: "2", CertNotAfter: testT0, Banned: true,
		CreatedAt: testT0.Add(-time.Hour), UpdatedAt: testT0.Add(time.Hour),
	}
	if got, err := decodeAgent(encodeAgent(agent)); err != nil || !reflect.DeepEqual(got, agent) {
		t.Errorf("agent: got %+v, %v; want %+v", got, err, agent)
	}
	tok := &datastore.JoinToken{Hash: "h", SPIFFEID: agent.SPIFFEID, ExpiresAt: testT0, CreatedAt: testT0}
	if got, err := decodeJoinToken(encodeJoinToken(tok)); err != nil || !reflect.DeepEqual(got, tok) {
		t.Errorf("join token: got %+v, %v; want %+v", got, err, tok)
	}
	key := &datastore.CAKey{
		ID: "k", Kind: datastore.CAKeyX509, State: datastore.CAKeyRetired, KeyType: "ec-p256",
		CertDER: []byte{1, 2, 3}, PublicKeyDER: []byte{4}, NotBefore: testT0, NotAfter: testT0.Add(time.Hour),
		ServerID: "server-1",
	}
	if got, err := decodeCAKey(encodeCAKey(key)); err != nil || !reflect.DeepEqual(got, key) {
		t.Errorf("CA key: got %+v, %v; want %+v", got, err, key)
	}
	// A record written before keys had owners decodes with no owner.
	old := newEncoder(64)
	old.str(key.ID)
	old.str(string(key.Kind))
	old.str(string(key.State))
	old.str(key.KeyType)
	old.bytes(key.CertDER)
	old.bytes(key.PublicKeyDER)
	old.time(key.NotBefore)
	old.time(key.NotAfter)
	ownerless := *key
	ownerless.ServerID = ""
	if got, err := decodeCAKey(old.finish()); err != nil || !reflect.DeepEqual(got, &ownerless) {
		t.Errorf("CA key without owner: got %+v, %v; want %+v", got, err, &ownerless)
	}
	for _, b := range testBundles(t) {
		enc, err := encodeBundle(b)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeBundle(testTD, enc)
		if err != nil || !got.Equal(b) {
			t.Errorf("bundle: got %v, %v", got, err)
		}
		// Equal bundles encode to equal bytes, whatever the order of
		// their JWT authorities' map.
		for range 5 {
			again, _ := encodeBundle(b.Clone())
			if !bytes.Equal(again, enc) {
				t.Fatal("bundle encoding is not deterministic")
			}
		}
	}
}

func testBundles(t testing.TB) []*spiffebundle.Bundle {
	ca := testca.New(t, testTD, testT0, time.Hour)
	cert, key := ca.Cert, ca.Key
	full := spiffebundle.New(testTD)
	full.AddX509Authority(cert)
	for _, kid := range []string{"c", "a", "b"} {
		if err := full.AddJWTAuthority(kid, key.Public()); err != nil {
			t.Fatal(err)
		}
	}
	if err := full.AddWITAuthority("w", key.Public()); err != nil {
		t.Fatal(err)
	}
	full.SetRefreshHint(1500 * time.Millisecond)
	full.SetSequenceNumber(42)
	return []*spiffebundle.Bundle{spiffebundle.New(testTD), full}
}

// TestDecodeDamaged checks that every decoder refuses a record with any
// byte changed, or cut short, with an error rather than a wrong value.
func TestDecodeDamaged(t *testing.T) {
	bundle, err := encodeBundle(testBundles(t)[1])
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range decoders {
		rec := c.sample
		if rec == nil {
			rec = bundle
		}
		for i := range rec {
			damaged := bytes.Clone(rec)
			damaged[i] ^= 0x10
			if err := c.decode(damaged); !errors.Is(err, errDecode) {
				t.Errorf("%s with byte %d changed: %v", c.name, i, err)
			}
		}
		for n := range len(rec) {
			if err := c.decode(rec[:n]); !errors.Is(err, errDecode) {
				t.Errorf("%s cut to %d bytes: %v", c.name, n, err)
			}
		}
	}
}

var decoders = []struct {
	name   string
	sample []byte
	decode func([]byte) error
}{
	{"entry", encodeEntry(testEntries()[0]), func(b []byte) error { _, err := decodeEntry(b); return err }},
	{"event", encodeEvent(datastore.EventEntry, testEntries()[0].ID, testEntries()[0]), func(b []byte) error {
		_, err := decodeEvent(1, b)
		return err
	}},
	{"agent", encodeAgent(&datastore.Agent{SPIFFEID: spiffeid.RequireFromPath(testTD, "/a")}), func(b []byte) error {
		_, err := decodeAgent(b)
		return err
	}},
	{"join token", encodeJoinToken(&datastore.JoinToken{Hash: "h"}), func(b []byte) error { _, err := decodeJoinToken(b); return err }},
	{"CA key", encodeCAKey(&datastore.CAKey{ID: "k", CertDER: []byte{1}}), func(b []byte) error { _, err := decodeCAKey(b); return err }},
	{"bundle", nil, func(b []byte) error { _, err := decodeBundle(testTD, b); return err }},
}

// FuzzDecode feeds record bodies, with a valid version byte and checksum
// added, to each decoder: none may panic, and what one accepts must
// survive encoding and decoding again unchanged.
func FuzzDecode(f *testing.F) {
	bundles := testBundles(f)
	for _, e := range testEntries() {
		f.Add(byte(0), body(encodeEntry(e)))
		f.Add(byte(1), body(encodeEvent(datastore.EventEntry, e.ID, e)))
	}
	f.Add(byte(2), body(encodeAgent(&datastore.Agent{SPIFFEID: spiffeid.RequireFromPath(testTD, "/a"), CreatedAt: testT0})))
	f.Add(byte(3), body(encodeJoinToken(&datastore.JoinToken{Hash: "h", ExpiresAt: testT0})))
	f.Add(byte(4), body(encodeCAKey(&datastore.CAKey{ID: "k", CertDER: []byte{1}})))
	for _, b := range bundles {
		enc, _ := encodeBundle(b)
		f.Add(byte(5), body(enc))
	}
	f.Fuzz(func(t *testing.T, kind byte, fields []byte) {
		rec := append([]byte{recordVersion}, fields...)
		rec = binary.LittleEndian.AppendUint32(rec, crc32.Checksum(rec, crcTable))
		switch kind % 6 {
		case 0:
			if e, err := decodeEntry(rec); err == nil {
				again, err := decodeEntry(encodeEntry(e))
				if err != nil || !reflect.DeepEqual(again, e) {
					t.Fatalf("entry round trip: %+v, %v; want %+v", again, err, e)
				}
			}
		case 1:
			if ev, err := decodeEvent(7, rec); err == nil {
				again, err := decodeEvent(7, encodeEvent(ev.Kind, ev.Key, ev.Entry))
				if err != nil || !reflect.DeepEqual(again, ev) {
					t.Fatalf("event round trip: %+v, %v; want %+v", again, err, ev)
				}
			}
		case 2:
			if a, err := decodeAgent(rec); err == nil {
				again, err := decodeAgent(encodeAgent(a))
				if err != nil || !reflect.DeepEqual(again, a) {
					t.Fatalf("agent round trip: %+v, %v; want %+v", again, err, a)
				}
			}
		case 3:
			if tok, err := decodeJoinToken(rec); err == nil {
				again, err := decodeJoinToken(encodeJoinToken(tok))
				if err != nil || !reflect.DeepEqual(again, tok) {
					t.Fatalf("join token round trip: %+v, %v; want %+v", again, err, tok)
				}
			}
		case 4:
			if k, err := decodeCAKey(rec); err == nil {
				again, err := decodeCAKey(encodeCAKey(k))
				if err != nil || !reflect.DeepEqual(again, k) {
					t.Fatalf("CA key round trip: %+v, %v; want %+v", again, err, k)
				}
			}
		case 5:
			if b, err := decodeBundle(testTD, rec); err == nil {
				enc, err := encodeBundle(b)
				if err != nil {
					t.Fatalf("encode decoded bundle: %v", err)
				}
				again, err := decodeBundle(testTD, enc)
				if err != nil || !again.Equal(b) {
					t.Fatalf("bundle round trip: %v", err)
				}
			}
		}
	})
}

// body strips the version byte and checksum from a record.
func body(rec []byte) []byte { return rec[1 : len(rec)-crcSize] }
