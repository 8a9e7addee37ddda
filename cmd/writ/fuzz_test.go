package main

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"unicode/utf8"
)

// FuzzDecodeEntries checks that the import decoder never panics and that
// what it accepts survives a round trip through the output shape.
func FuzzDecodeEntries(f *testing.F) {
	for _, s := range []string{
		importFile,
		`[]`,
		`[{}]`,
		`[null]`,
		`[{"spiffe_id": "spiffe://example.org/a", "ttl": 5}]`,
		`[{"x509_svid_ttl": 1.5}]`,
		`[1]`,
		`[{"selectors": ["a:b", 1]}]`,
		`[] []`,
		`{"spiffe_id": "x"}`,
		"[\n{}\n{}]",
		`[{"dns_names": ["\u0000"]}]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := decodeEntries(data)
		if err != nil {
			if entries != nil {
				t.Fatal("entries returned with an error")
			}
			if !utf8.ValidString(err.Error()) {
				t.Fatalf("error is not valid UTF-8: %q", err.Error())
			}
			return
		}
		if !utf8.Valid(data) {
			// encoding/json replaces invalid UTF-8; no round trip.
			return
		}
		out, err := json.Marshal(entries)
		if err != nil {
			t.Fatal(err)
		}
		again, err := decodeEntries(out)
		if err != nil {
			t.Fatalf("re-decoding %s: %v", out, err)
		}
		if len(entries) != len(again) {
			t.Fatalf("%d entries, then %d", len(entries), len(again))
		}
		for i := range entries {
			a, b := *entries[i], *again[i]
			// nil and empty lists print alike.
			a.Selectors, a.DNSNames = nonNil(a.Selectors), nonNil(a.DNSNames)
			b.Selectors, b.DNSNames = nonNil(b.Selectors), nonNil(b.DNSNames)
			if !reflect.DeepEqual(a, b) {
				t.Fatalf("entry %d: %+v, then %+v", i, a, b)
			}
		}
	})
}

// FuzzEscapeJSONControls checks that escaping keeps valid JSON valid, with
// the same meaning, and leaves no DEL or C1 control.
func FuzzEscapeJSONControls(f *testing.F) {
	for _, s := range []string{`{"a": "b"}`, "\"a\x7fb\"", "\"\u009b31m\"", "\"a\xffb\"", `["é", 1, null]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) || !utf8.Valid(data) {
			return
		}
		out := escapeJSONControls(data)
		a, err := decodeAny(data)
		if err != nil {
			t.Fatal(err)
		}
		b, err := decodeAny(out)
		if err != nil {
			t.Fatalf("escaped JSON %q does not parse: %v", out, err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("meaning changed: %v, then %v", a, b)
		}
		for _, r := range string(out) {
			if r == 0x7f || r >= 0x80 && r < 0xa0 {
				t.Fatalf("control %U left in %q", r, out)
			}
		}
	})
}

func decodeAny(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}
