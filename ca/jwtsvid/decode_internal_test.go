package jwtsvid

import (
	"bytes"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"reflect"
	"testing"
)

// decodeObjectReference is decodeObject written with encoding/json's
// tokenizer: slower, and obviously right.
func decodeObjectReference(data []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	m := make(map[string]json.RawMessage)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		name := tok.(string)
		if _, dup := m[name]; dup {
			return nil, fmt.Errorf("duplicate member %q", name)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		m[name] = v
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return m, nil
}

// FuzzDecodeObject: decodeObject gives what a decoder written with
// encoding/json's tokenizer gives, members in order; and whatever
// scanObject (its one-pass reader of the narrow form) accepts is valid
// JSON that the general path reads the same way.
func FuzzDecodeObject(f *testing.F) {
	for _, s := range []string{
		`{}`, ` { "a" : 1 , "b":[1,{"c":"}"}], "d":"x\"y", "e":true,"f":null } `,
		`{"a":1,"a":2}`, `{"a":1,"\u0061":2}`, `{"sub":"spiffe://x/y","aud":["a","b"],"exp":1e3}`,
		`[1]`, `"s"`, `{"a":1}{}`, `{"a":{"b":{"c":[]}}}`, `{"a\\b":-1.5e-3}`, `{"a":"\\"}`,
		// The narrow form, and near misses of it.
		`{"alg":"ES256","kid":"k1","typ":"JWT"}`, `{"alg":"ES256","kid":"k1","typ":"JWT","alg":"none"}`,
		`{"sub":"spiffe://example.org/w","aud":"x","exp":1900000000,"iat":1899999700}`,
		`{"aud":[ "a" , "b" ],"n":-0.5E+3,"t":true,"f":false,"z":null,"e":[]}`,
		`{"a":01}`, `{"a":1.}`, `{"a":.5}`, `{"a":-}`, `{"a":1e}`, `{"a":tru}`, `{"a":nul}`, `{"a":"b}`,
		`{"a":["b",]}`, `{"a":["b" "c"]}`, `{"a":[1]}`, `{"a" "b"}`, `{"a":1,}`, `{,"a":1}`, `{"a":1} x`,
		"{\"a\":\"\x01\"}", "{\"\xff\":1}", "{\"a\":\"\xff\"}", `{"a":"b"}}`, ` {} `, `{`, ``,
		`{"1":1,"2":2,"3":3,"4":4,"5":5,"6":6,"7":7,"8":8,"9":9,"10":10,"11":11,"12":12,"13":13,"14":14,"15":15,"16":16}`,
		`{"1":1,"2":2,"3":3,"4":4,"5":5,"6":6,"7":7,"8":8,"9":9,"10":10,"11":11,"12":12,"13":13,"14":14,"15":15,"16":16,"17":17,"1":0}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeObject(data)
		want, werr := decodeObjectReference(data)
		if (err == nil) != (werr == nil) {
			t.Fatalf("decodeObject(%q): error %v, reference %v", data, err, werr)
		}
		if quick, ok := scanObject(data); ok {
			general, err := decodeAnyObject(data)
			if err != nil || !json.Valid(data) {
				t.Fatalf("scanObject accepted %q, the general path refuses it: %v", data, err)
			}
			if !reflect.DeepEqual(quick, general) {
				t.Fatalf("scanObject(%q) = %q, the general path %q", data, quick, general)
			}
		}
		if err != nil {
			return
		}
		m := make(map[string]json.RawMessage, len(got))
		for _, mb := range got {
			m[mb.name] = mb.raw
		}
		if len(m) != len(got) || !maps.EqualFunc(m, want, func(a, b json.RawMessage) bool { return bytes.Equal(a, b) }) {
			t.Fatalf("decodeObject(%q) = %q, reference %q", data, got, want)
		}
	})
}

// FuzzDecodeAny: decodeAny gives what encoding/json gives for an any.
func FuzzDecodeAny(f *testing.F) {
	for _, s := range []string{`"a"`, `"a\"b"`, "\"\xff\"", `1`, `-1.5e3`, `1e999`, `[1,"x"]`, `{"a":null}`, `true`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return
		}
		got, err := decodeAny(data)
		var want any
		werr := json.Unmarshal(data, &want)
		if (err == nil) != (werr == nil) {
			t.Fatalf("decodeAny(%q): error %v, encoding/json %v", data, err, werr)
		}
		if err == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("decodeAny(%q) = %#v, encoding/json %#v", data, got, want)
		}
	})
}

// FuzzECDSADER: ecdsaDER encodes as encoding/asn1 does, for every r and
// s that crypto/ecdsa.Verify would encode, and refuses zeros.
func FuzzECDSADER(f *testing.F) {
	f.Add([]byte{1}, []byte{0x80})
	f.Add([]byte{0, 0, 0x7f}, bytes.Repeat([]byte{0xff}, 66))
	f.Add([]byte{0}, []byte{1})
	f.Add(bytes.Repeat([]byte{0x80}, 32), bytes.Repeat([]byte{0x01}, 32))
	f.Fuzz(func(t *testing.T, r, s []byte) {
		if len(r) > 66 || len(s) > 66 {
			return
		}
		var buf [maxECDSADER]byte
		got, ok := ecdsaDER(buf[:0], r, s)
		ri, si := new(big.Int).SetBytes(r), new(big.Int).SetBytes(s)
		if ri.Sign() == 0 || si.Sign() == 0 {
			if ok {
				t.Fatalf("ecdsaDER(%x, %x) accepted a zero", r, s)
			}
			return
		}
		want, err := asn1.Marshal(struct{ R, S *big.Int }{ri, si})
		if err != nil {
			t.Fatal(err)
		}
		if !ok || !bytes.Equal(got, want) {
			t.Fatalf("ecdsaDER(%x, %x) = %x, %v; encoding/asn1 %x", r, s, got, ok, want)
		}
	})
}
