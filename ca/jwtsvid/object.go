package jwtsvid

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// member is a member of a JSON object: its name, decoded, and its value,
// as it appears in the object.
type member struct {
	name string
	raw  json.RawMessage
}

// object is a JSON object's members in order, their names unique.
type object []member

// get returns the value of member name.
func (o object) get(name string) (json.RawMessage, bool) {
	for i := range o {
		if o[i].name == name {
			return o[i].raw, true
		}
	}
	return nil, false
}

// maxQuickMembers bounds the members scanObject handles; bigger objects
// take decodeObject's general path, which finds duplicates by a map.
const maxQuickMembers = 16

// decodeObject decodes a JSON object into its members, refusing duplicate
// member names and anything after the object. An object in the narrow
// form that JWT headers and claims take is read by scanObject in one
// pass; any other input by the general path, which checks it with
// json.Valid first and gives the same members for every input both read.
func decodeObject(data []byte) (object, error) {
	if o, ok := scanObject(data); ok {
		return o, nil
	}
	return decodeAnyObject(data)
}

// decodeAnyObject is decodeObject's general path.
func decodeAnyObject(data []byte) (object, error) {
	if !json.Valid(data) {
		return nil, errors.New("not valid JSON")
	}
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return nil, errors.New("not a JSON object")
	}
	o := make(object, 0, 8)
	var names map[string]struct{} // for objects too big to search in a loop
	i = skipSpace(data, i+1)
	for i < len(data) && data[i] != '}' {
		if data[i] == ',' {
			i = skipSpace(data, i+1)
		}
		end := skipValue(data, i) // the name, a string
		var name string
		if raw := data[i+1 : end-1]; bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
			name = string(raw)
		} else if err := json.Unmarshal(data[i:end], &name); err != nil {
			return nil, err
		}
		i = skipSpace(data, end)
		i = skipSpace(data, i+1) // the ':'
		end = skipValue(data, i)
		dup := false
		if names != nil {
			_, dup = names[name]
		} else {
			_, dup = o.get(name)
		}
		if dup {
			return nil, fmt.Errorf("duplicate member %q", name)
		}
		o = append(o, member{name: name, raw: json.RawMessage(data[i:end])})
		if names != nil {
			names[name] = struct{}{}
		} else if len(o) == maxQuickMembers {
			names = make(map[string]struct{}, 2*maxQuickMembers)
			for _, m := range o {
				names[m.name] = struct{}{}
			}
		}
		i = skipSpace(data, end)
	}
	return o, nil
}

// scanObject reads a JSON object of the narrow form: at most
// maxQuickMembers members with distinct names, names and string values
// without escapes or control characters, names valid UTF-8, and values
// that are strings, numbers, true, false, null or arrays of strings. It
// checks the whole input against this grammar (whitespace allowed where
// JSON allows it), so that ok means data is valid JSON; it returns
// ok = false for anything else, valid or not, which decodeObject's
// general path then reads.
func scanObject(data []byte) (o object, ok bool) {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return nil, false
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return object{}, skipSpace(data, i+1) == len(data)
	}
	var ms [maxQuickMembers]member
	n := 0
	for {
		if n == maxQuickMembers {
			return nil, false
		}
		end, ok := scanString(data, i)
		if !ok || !utf8.Valid(data[i+1:end-1]) {
			return nil, false
		}
		name := data[i+1 : end-1]
		i = skipSpace(data, end)
		if i >= len(data) || data[i] != ':' {
			return nil, false
		}
		i = skipSpace(data, i+1)
		if end, ok = scanValue(data, i); !ok {
			return nil, false
		}
		for _, m := range ms[:n] {
			if m.name == string(name) {
				return nil, false // the general path says which
			}
		}
		ms[n] = member{name: internName(name), raw: json.RawMessage(data[i:end])}
		n++
		i = skipSpace(data, end)
		if i >= len(data) {
			return nil, false
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			if skipSpace(data, i+1) != len(data) {
				return nil, false
			}
			return append(make(object, 0, n), ms[:n]...), true
		default:
			return nil, false
		}
	}
}

// scanString returns the end of the string without escapes that starts
// at i: a quote, bytes other than quotes, backslashes and control
// characters, a quote.
func scanString(data []byte, i int) (int, bool) {
	if i >= len(data) || data[i] != '"' {
		return 0, false
	}
	for i++; i < len(data); i++ {
		switch c := data[i]; {
		case c == '"':
			return i + 1, true
		case c == '\\' || c < 0x20:
			return 0, false
		}
	}
	return 0, false
}

// scanValue returns the end of the value of the narrow form that starts
// at i: a string without escapes, a number, true, false, null, or an
// array of such strings.
func scanValue(data []byte, i int) (int, bool) {
	if i >= len(data) {
		return 0, false
	}
	switch c := data[i]; {
	case c == '"':
		return scanString(data, i)
	case c == '-' || c >= '0' && c <= '9':
		return scanNumber(data, i)
	case c == 't':
		return scanLiteral(data, i, "true")
	case c == 'f':
		return scanLiteral(data, i, "false")
	case c == 'n':
		return scanLiteral(data, i, "null")
	case c == '[':
		i = skipSpace(data, i+1)
		if i < len(data) && data[i] == ']' {
			return i + 1, true
		}
		for {
			end, ok := scanString(data, i)
			if !ok {
				return 0, false
			}
			i = skipSpace(data, end)
			if i >= len(data) {
				return 0, false
			}
			switch data[i] {
			case ',':
				i = skipSpace(data, i+1)
			case ']':
				return i + 1, true
			default:
				return 0, false
			}
		}
	}
	return 0, false
}

func scanLiteral(data []byte, i int, lit string) (int, bool) {
	if !bytes.HasPrefix(data[i:], []byte(lit)) {
		return 0, false
	}
	return i + len(lit), true
}

// scanNumber returns the end of the JSON number that starts at i:
// -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
func scanNumber(data []byte, i int) (int, bool) {
	digits := func(i int) int {
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
		}
		return i
	}
	if data[i] == '-' {
		i++
	}
	switch {
	case i < len(data) && data[i] == '0':
		i++
	case i < len(data) && data[i] >= '1' && data[i] <= '9':
		i = digits(i)
	default:
		return 0, false
	}
	if i < len(data) && data[i] == '.' {
		j := digits(i + 1)
		if j == i+1 {
			return 0, false
		}
		i = j
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		j := digits(i)
		if j == i {
			return 0, false
		}
		i = j
	}
	return i, true
}

// internName returns name as a string, without allocating for the names
// JWT headers and JWT-SVID claims use.
func internName(name []byte) string {
	switch string(name) {
	case "alg":
		return "alg"
	case "kid":
		return "kid"
	case "typ":
		return "typ"
	case "sub":
		return "sub"
	case "aud":
		return "aud"
	case "exp":
		return "exp"
	case "iat":
		return "iat"
	case "nbf":
		return "nbf"
	case "iss":
		return "iss"
	case "jti":
		return "jti"
	}
	return string(name)
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the end of the JSON value that starts at i in data,
// which json.Valid has accepted.
func skipValue(data []byte, i int) int {
	depth := 0
	for ; i < len(data); i++ {
		switch c := data[i]; c {
		case '"':
			for i++; data[i] != '"'; i++ {
				if data[i] == '\\' {
					i++
				}
			}
			if depth == 0 {
				return i + 1
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 { // the end of the enclosing object or array
				return i
			}
			depth--
			if depth == 0 {
				return i + 1
			}
		case ',', ' ', '\t', '\n', '\r', ':':
			if depth == 0 {
				return i
			}
		}
	}
	return i
}
