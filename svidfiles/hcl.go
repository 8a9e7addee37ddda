package svidfiles

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrSyntax: a configuration file is not in the HCL subset understood.
var ErrSyntax = errors.New("svidfiles: configuration syntax error")

// maxConfigSize bounds a configuration file.
const maxConfigSize = 1 << 20

// maxDepth bounds the nesting of lists and objects.
const maxDepth = 8

// parseHCL parses the flat subset of HCL that spiffe-helper's
// configuration files use: one "key = value" per line at the top level,
// where a value is a string ("..." with \", \\, \n, \t escapes), an
// integer (octal with a leading 0, as file modes are written), true or
// false, a list [v, ...] or an object {key = value, ...}. Comments run
// from # or // to the end of the line, or between /* and */. A key set
// twice, blocks (key { ... }) and other HCL features are errors. Strings
// come back as string, integers as int64, booleans as bool, lists as
// []any and objects as map[string]any.
func parseHCL(src []byte) (map[string]any, error) {
	if len(src) > maxConfigSize {
		return nil, fmt.Errorf("%w: file larger than %d bytes", ErrSyntax, maxConfigSize)
	}
	if !utf8.Valid(src) {
		return nil, fmt.Errorf("%w: not UTF-8", ErrSyntax)
	}
	p := &hclParser{src: string(src), line: 1}
	out := make(map[string]any)
	for {
		p.skipSpace(true)
		if p.eof() {
			return out, nil
		}
		key, err := p.ident()
		if err != nil {
			return nil, err
		}
		p.skipSpace(false)
		if p.peek() == '{' {
			return nil, p.errorf("block %q is not supported (only key = value)", key)
		}
		if err := p.expect('='); err != nil {
			return nil, err
		}
		v, err := p.value(0)
		if err != nil {
			return nil, err
		}
		if _, dup := out[key]; dup {
			return nil, p.errorf("%q is set twice", key)
		}
		out[key] = v
		p.skipSpace(false)
		if !p.eof() && p.peek() != '\n' {
			return nil, p.errorf("unexpected %q after the value of %q", p.peek(), key)
		}
	}
}

type hclParser struct {
	src  string
	pos  int
	line int
}

func (p *hclParser) eof() bool { return p.pos >= len(p.src) }

func (p *hclParser) peek() byte {
	if p.eof() {
		return 0
	}
	return p.src[p.pos]
}

func (p *hclParser) errorf(format string, args ...any) error {
	return fmt.Errorf("%w: line %d: %s", ErrSyntax, p.line, fmt.Sprintf(format, args...))
}

// skipSpace skips blanks and comments, and newlines too if newlines is
// set. A line comment stops before its newline.
func (p *hclParser) skipSpace(newlines bool) {
	for !p.eof() {
		c := p.src[p.pos]
		switch {
		case c == '\n':
			if !newlines {
				return
			}
			p.line++
			p.pos++
		case c == ' ' || c == '\t' || c == '\r':
			p.pos++
		case c == '#' || strings.HasPrefix(p.src[p.pos:], "//"):
			for !p.eof() && p.src[p.pos] != '\n' {
				p.pos++
			}
		case strings.HasPrefix(p.src[p.pos:], "/*"):
			end := strings.Index(p.src[p.pos+2:], "*/")
			if end < 0 {
				p.pos = len(p.src)
				return
			}
			p.line += strings.Count(p.src[p.pos:p.pos+2+end], "\n")
			p.pos += end + 4
		default:
			return
		}
	}
}

func (p *hclParser) expect(c byte) error {
	if p.peek() != c {
		if p.eof() {
			return p.errorf("want %q, got the end of the file", c)
		}
		return p.errorf("want %q, got %q", c, p.peek())
	}
	p.pos++
	return nil
}

func isIdentByte(c byte, first bool) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || !first && (c == '-' || c >= '0' && c <= '9')
}

func (p *hclParser) ident() (string, error) {
	start := p.pos
	for !p.eof() && isIdentByte(p.src[p.pos], p.pos == start) {
		p.pos++
	}
	if p.pos == start {
		if p.peek() == '"' {
			return p.str()
		}
		return "", p.errorf("want a key, got %q", p.peek())
	}
	return p.src[start:p.pos], nil
}

func (p *hclParser) value(depth int) (any, error) {
	if depth > maxDepth {
		return nil, p.errorf("nested more than %d deep", maxDepth)
	}
	p.skipSpace(false)
	switch c := p.peek(); {
	case c == '"':
		return p.str()
	case c == '[':
		return p.list(depth)
	case c == '{':
		return p.object(depth)
	case c == '-' || c >= '0' && c <= '9':
		return p.number()
	case isIdentByte(c, true):
		w, _ := p.ident()
		switch w {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
		return nil, p.errorf("unexpected %q (strings are quoted)", w)
	case p.eof():
		return nil, p.errorf("missing value")
	default:
		return nil, p.errorf("unexpected %q", c)
	}
}

func (p *hclParser) str() (string, error) {
	p.pos++ // the opening quote
	var b strings.Builder
	for {
		if p.eof() || p.src[p.pos] == '\n' {
			return "", p.errorf("unterminated string")
		}
		c := p.src[p.pos]
		p.pos++
		switch c {
		case '"':
			return b.String(), nil
		case '\\':
			if p.eof() {
				return "", p.errorf("unterminated string")
			}
			e := p.src[p.pos]
			p.pos++
			switch e {
			case '"', '\\':
				b.WriteByte(e)
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			default:
				return "", p.errorf("unsupported escape \\%c", e)
			}
		default:
			b.WriteByte(c)
		}
	}
}

func (p *hclParser) number() (int64, error) {
	start := p.pos
	if p.peek() == '-' {
		p.pos++
	}
	for !p.eof() && (p.src[p.pos] >= '0' && p.src[p.pos] <= '9') {
		p.pos++
	}
	if c := p.peek(); c == '.' || isIdentByte(c, true) {
		return 0, p.errorf("only integers are supported")
	}
	lit := p.src[start:p.pos]
	base := 10
	if digits := strings.TrimPrefix(lit, "-"); len(digits) > 1 && digits[0] == '0' {
		base = 8 // 0644, as HCL reads file modes
	}
	n, err := strconv.ParseInt(lit, base, 64)
	if err != nil {
		return 0, p.errorf("bad number %q", lit)
	}
	return n, nil
}

func (p *hclParser) list(depth int) ([]any, error) {
	p.pos++ // [
	out := []any{}
	for {
		p.skipSpace(true)
		if p.peek() == ']' {
			p.pos++
			return out, nil
		}
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
		p.skipSpace(true)
		switch p.peek() {
		case ',':
			p.pos++
		case ']':
		default:
			if p.eof() {
				return nil, p.errorf("unterminated list")
			}
			return nil, p.errorf("want ',' or ']' in a list, got %q", p.peek())
		}
	}
}

func (p *hclParser) object(depth int) (map[string]any, error) {
	p.pos++ // {
	out := make(map[string]any)
	for {
		p.skipSpace(true)
		if p.peek() == '}' {
			p.pos++
			return out, nil
		}
		if p.eof() {
			return nil, p.errorf("unterminated object")
		}
		key, err := p.ident()
		if err != nil {
			return nil, err
		}
		p.skipSpace(false)
		if err := p.expect('='); err != nil {
			return nil, err
		}
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		if _, dup := out[key]; dup {
			return nil, p.errorf("%q is set twice", key)
		}
		out[key] = v
		p.skipSpace(false)
		if p.peek() == ',' {
			p.pos++
		}
		if c := p.peek(); c != '\n' && c != '}' && !unicode.IsSpace(rune(c)) && c != '#' && c != '/' && !isIdentByte(c, true) && c != '"' {
			return nil, p.errorf("unexpected %q in an object", c)
		}
	}
}
