package jwtsvid

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
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

func FuzzDecodeObject(f *testing.F) {
	for _, s := range []string{
		`{}`, ` { "a" : 1 , "b":[1,{"c":"}"}], "d":"x\"y", "e":true,"f":null } `,
		`{"a":1,"a":2}`, `{"a":1,"\u0061":2}`, `{"sub":"spiffe://x/y","aud":["a","b"],"exp":1e3}`,
		`[1]`, `"s"`, `{"a":1}{}`, `{"a":{"b":{"c":[]}}}`, `{"a\\b":-1.5e-3}`, `{"a":"\\"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeObject(data)
		want, werr := decodeObjectReference(data)
		if (err == nil) != (werr == nil) {
			t.Fatalf("decodeObject(%q): error %v, reference %v", data, err, werr)
		}
		if err != nil {
			return
		}
		if !maps.EqualFunc(got, want, func(a, b json.RawMessage) bool { return bytes.Equal(a, b) }) {
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
