package entry_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/entry"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

var idCases = []struct {
	name string
	in   string
	ok   bool
}{
	{name: "workload", in: "spiffe://example.org/web", ok: true},
	{name: "nested", in: "spiffe://example.org/ns/prod/sa/web-1.v2_x", ok: true},
	{name: "empty", in: ""},
	{name: "no scheme", in: "example.org/web"},
	{name: "http scheme", in: "https://example.org/web"},
	{name: "uppercase scheme", in: "SPIFFE://example.org/web"},
	{name: "uppercase trust domain", in: "spiffe://Example.org/web"},
	{name: "port", in: "spiffe://example.org:8080/web"},
	{name: "userinfo", in: "spiffe://user@example.org/web"},
	{name: "percent encoding", in: "spiffe://example.org/w%65b"},
	{name: "dot segment", in: "spiffe://example.org/a/./b"},
	{name: "dot dot segment", in: "spiffe://example.org/a/../b"},
	{name: "empty segment", in: "spiffe://example.org/a//b"},
	{name: "trailing slash", in: "spiffe://example.org/web/"},
	{name: "query", in: "spiffe://example.org/web?x=1"},
	{name: "fragment", in: "spiffe://example.org/web#x"},
	{name: "space", in: "spiffe://example.org/we b"},
	{name: "control char", in: "spiffe://example.org/we\nb"},
	{name: "too long", in: "spiffe://example.org/" + strings.Repeat("a", entry.MaxIDLength)},
}

func TestParseID(t *testing.T) {
	for _, tc := range idCases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := entry.ParseID(tc.in)
			if tc.ok != (err == nil) {
				t.Fatalf("ParseID(%q) error = %v, want ok=%v", tc.in, err, tc.ok)
			}
			if err != nil {
				if !errors.Is(err, entry.ErrInvalid) {
					t.Errorf("error %v does not wrap ErrInvalid", err)
				}
				if strings.ContainsAny(err.Error(), "\n\r") {
					t.Errorf("error %q carries a raw control character", err)
				}
				return
			}
			if id.String() != tc.in {
				t.Errorf("round trip: got %q", id)
			}
		})
	}
}

func TestParseIDInDomain(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		ok   bool
	}{
		{name: "in domain", in: "spiffe://example.org/web", ok: true},
		{name: "other domain", in: "spiffe://other.org/web"},
		{name: "suffix domain", in: "spiffe://evil-example.org/web"},
		{name: "no path", in: "spiffe://example.org"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := entry.ParseIDInDomain(td, tc.in)
			if tc.ok != (err == nil) {
				t.Fatalf("ParseIDInDomain(%q) error = %v, want ok=%v", tc.in, err, tc.ok)
			}
		})
	}
}

var selectorCases = []struct {
	name string
	in   string
	ok   bool
}{
	{name: "uid", in: "unix:uid:1000", ok: true},
	{name: "uid zero", in: "unix:uid:0", ok: true},
	{name: "uid max", in: "unix:uid:4294967295", ok: true},
	{name: "gid", in: "unix:gid:20", ok: true},
	{name: "user", in: "unix:user:www-data", ok: true},
	{name: "group", in: "unix:group:staff", ok: true},
	{name: "supplementary gid", in: "unix:supplementary_gid:27", ok: true},
	{name: "path", in: "unix:path:/usr/bin/curl", ok: true},
	{name: "sha256", in: "unix:sha256:" + strings.Repeat("ab", 32), ok: true},
	{name: "other type with colons", in: "k8s:ns:default", ok: true},
	{name: "join token type", in: "join_token:abc", ok: true},
	{name: "no colon", in: "unix"},
	{name: "empty type", in: ":uid:1"},
	{name: "empty value", in: "k8s:"},
	{name: "uppercase type", in: "Unix:uid:1"},
	{name: "unknown unix key", in: "unix:foo:1"},
	{name: "unix without key", in: "unix:1000"},
	{name: "uid leading zero", in: "unix:uid:01"},
	{name: "uid negative", in: "unix:uid:-1"},
	{name: "uid overflow", in: "unix:uid:4294967296"},
	{name: "uid not number", in: "unix:uid:root"},
	{name: "user with slash", in: "unix:user:a/b"},
	{name: "user leading dash", in: "unix:user:-rf"},
	{name: "relative path", in: "unix:path:bin/curl"},
	{name: "unclean path", in: "unix:path:/usr/../bin/sh"},
	{name: "trailing slash path", in: "unix:path:/usr/bin/"},
	{name: "sha256 uppercase", in: "unix:sha256:" + strings.Repeat("AB", 32)},
	{name: "sha256 short", in: "unix:sha256:abcd"},
	{name: "control char", in: "k8s:ns:\x1b[31mred"},
	{name: "newline", in: "k8s:ns:a\nb"},
	{name: "invalid utf8", in: "k8s:ns:\xff"},
	{name: "oversized value", in: "k8s:" + strings.Repeat("a", entry.MaxSelectorValue+1)},
	{name: "oversized type", in: strings.Repeat("a", entry.MaxSelectorType+1) + ":x"},
}

func TestParseSelector(t *testing.T) {
	for _, tc := range selectorCases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := entry.ParseSelector(tc.in)
			if tc.ok != (err == nil) {
				t.Fatalf("ParseSelector(%q) error = %v, want ok=%v", tc.in, err, tc.ok)
			}
			if err != nil {
				if !errors.Is(err, entry.ErrInvalid) {
					t.Errorf("error %v does not wrap ErrInvalid", err)
				}
				if strings.ContainsAny(err.Error(), "\n\r\x1b") {
					t.Errorf("error %q carries a raw control character", err)
				}
				return
			}
			if s.String() != tc.in {
				t.Errorf("round trip: got %q", s)
			}
		})
	}
}

var dnsCases = []struct {
	name string
	in   string
	ok   bool
}{
	{name: "simple", in: "web.example.org", ok: true},
	{name: "single label", in: "localhost", ok: true},
	{name: "digits and dash", in: "a-1.b2.example", ok: true},
	{name: "wildcard", in: "*.svc.example.org", ok: true},
	{name: "empty", in: ""},
	{name: "uppercase", in: "Web.example.org"},
	{name: "trailing dot", in: "web.example.org."},
	{name: "empty label", in: "web..org"},
	{name: "leading dash", in: "-web.example.org"},
	{name: "trailing dash", in: "web-.example.org"},
	{name: "underscore", in: "we_b.example.org"},
	{name: "wildcard not leftmost", in: "a.*.example.org"},
	{name: "partial wildcard", in: "w*.example.org"},
	{name: "wildcard too broad", in: "*.org"},
	{name: "ip literal with colon", in: "::1"},
	{name: "space", in: "web example"},
	{name: "label too long", in: strings.Repeat("a", 64) + ".org"},
	{name: "name too long", in: strings.Repeat("a.", 127) + "aa"},
}

func TestParseDNSName(t *testing.T) {
	for _, tc := range dnsCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := entry.ParseDNSName(tc.in)
			if tc.ok != (err == nil) {
				t.Fatalf("ParseDNSName(%q) error = %v, want ok=%v", tc.in, err, tc.ok)
			}
			if err == nil && got != tc.in {
				t.Errorf("got %q, want %q", got, tc.in)
			}
		})
	}
}

var ttlCases = []struct {
	name string
	in   string
	want time.Duration
	ok   bool
}{
	{name: "duration", in: "1h", want: time.Hour, ok: true},
	{name: "seconds", in: "90s", want: 90 * time.Second, ok: true},
	{name: "bare seconds", in: "3600", want: time.Hour, ok: true},
	{name: "minimum", in: "1s", want: time.Second, ok: true},
	{name: "maximum", in: "168h", want: entry.MaxTTL, ok: true},
	{name: "zero", in: "0"},
	{name: "zero duration", in: "0s"},
	{name: "negative", in: "-1h"},
	{name: "negative seconds", in: "-5"},
	{name: "absurd", in: "100000h"},
	{name: "absurd seconds", in: "99999999999"},
	{name: "fraction", in: "1.5s"},
	{name: "sub-second", in: "500ms"},
	{name: "empty", in: ""},
	{name: "garbage", in: "soon"},
	{name: "overflow", in: "9223372036854775807h"},
}

func TestParseTTL(t *testing.T) {
	for _, tc := range ttlCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := entry.ParseTTL(tc.in)
			if tc.ok != (err == nil) {
				t.Fatalf("ParseTTL(%q) = %v, %v; want ok=%v", tc.in, got, err, tc.ok)
			}
			if err == nil && got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"plain":        "plain",
		"a\nb":         `a\nb`,
		"\x1b[31m":     `\x1b[31m`,
		"caf\u00e9":    "caf\u00e9",
		"bad\xffbytes": `bad\xffbytes`,
	} {
		if got := entry.Printable(in); got != want {
			t.Errorf("Printable(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzParseID(f *testing.F) {
	for _, tc := range idCases {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := entry.ParseID(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("accepted %q but it formats as %q", s, id)
		}
		again, err := entry.ParseID(id.String())
		if err != nil || again != id {
			t.Fatalf("parse(format(x)) != x for %q: %v", s, err)
		}
	})
}

func FuzzParseSelector(f *testing.F) {
	for _, tc := range selectorCases {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := entry.ParseSelector(s)
		if err != nil {
			return
		}
		again, err := entry.ParseSelector(sel.String())
		if err != nil || again != sel || sel.String() != s {
			t.Fatalf("parse(format(x)) != x for %q: %v", s, err)
		}
	})
}

func FuzzParseDNSName(f *testing.F) {
	for _, tc := range dnsCases {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := entry.ParseDNSName(s)
		if err != nil {
			return
		}
		if n != s || strings.ToLower(s) != s {
			t.Fatalf("accepted non-canonical %q", s)
		}
	})
}

func FuzzParseTTL(f *testing.F) {
	for _, tc := range ttlCases {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := entry.ParseTTL(s)
		if err != nil {
			return
		}
		if d < entry.MinTTL || d > entry.MaxTTL || d%time.Second != 0 {
			t.Fatalf("ParseTTL(%q) accepted out-of-bounds %v", s, d)
		}
		again, err := entry.ParseTTL(d.String())
		if err != nil || again != d {
			t.Fatalf("parse(format(x)) != x for %q: %v", s, err)
		}
	})
}

func TestErrorsAreBounded(t *testing.T) {
	huge := strings.Repeat("\x1b", 1<<20)
	for name, err := range map[string]error{
		"id":       func() error { _, err := entry.ParseID("spiffe://example.org/" + huge[:1500]); return err }(),
		"selector": func() error { _, err := entry.ParseSelector(huge); return err }(),
		"value":    func() error { _, err := entry.ParseSelector("k8s:" + huge); return err }(),
		"dns":      func() error { _, err := entry.ParseDNSName(huge); return err }(),
		"ttl":      func() error { _, err := entry.ParseTTL(huge); return err }(),
		"entry id": func() error { _, err := entry.ParseEntryID(huge); return err }(),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if len(err.Error()) > 1024 || strings.Contains(err.Error(), "\x1b") {
			t.Errorf("%s: error is %d bytes or carries raw escapes", name, len(err.Error()))
		}
	}
}
