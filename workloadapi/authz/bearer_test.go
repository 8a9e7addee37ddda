package authz_test

import (
	"errors"
	"strings"
	"testing"

	"writ.dev/writ/workloadapi/authz"
)

var bearerTests = []struct {
	name  string
	value string
	token string
	err   error
}{
	{name: "token", value: "Bearer abc.def.ghi", token: "abc.def.ghi"},
	{name: "scheme in any case", value: "bEaReR abc", token: "abc"},
	{name: "several spaces", value: "Bearer   abc", token: "abc"},
	{name: "b64token alphabet", value: "Bearer aZ09-._~+/==", token: "aZ09-._~+/=="},
	{name: "empty", value: "", err: authz.ErrNoToken},
	{name: "other scheme", value: "Basic dXNlcjpwYXNz", err: authz.ErrNoToken},
	{name: "scheme with bearer prefix", value: "Bearerish abc", err: authz.ErrNoToken},
	{name: "bearer alone", value: "Bearer", err: authz.ErrInvalidToken},
	{name: "bearer and space", value: "Bearer ", err: authz.ErrInvalidToken},
	{name: "tab", value: "Bearer\tabc", err: authz.ErrInvalidToken},
	{name: "two tokens", value: "Bearer abc def", err: authz.ErrInvalidToken},
	{name: "trailing space", value: "Bearer abc ", err: authz.ErrInvalidToken},
	{name: "padding inside", value: "Bearer ab=c", err: authz.ErrInvalidToken},
	{name: "only padding", value: "Bearer ==", err: authz.ErrInvalidToken},
	{name: "quoted", value: `Bearer "abc"`, err: authz.ErrInvalidToken},
	{name: "comma", value: "Bearer abc, Basic x", err: authz.ErrInvalidToken},
	{name: "newline", value: "Bearer abc\n", err: authz.ErrInvalidToken},
	{name: "non-ASCII", value: "Bearer abç", err: authz.ErrInvalidToken},
	{name: "too long", value: "Bearer " + strings.Repeat("a", authz.MaxAuthorizationLen), err: authz.ErrInvalidToken},
}

func TestParseBearer(t *testing.T) {
	for _, tt := range bearerTests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := authz.ParseBearer(tt.value)
			if !errors.Is(err, tt.err) || (tt.err == nil && err != nil) {
				t.Fatalf("ParseBearer(%q) error %v, want %v", tt.value, err, tt.err)
			}
			if got != tt.token {
				t.Fatalf("ParseBearer(%q) = %q, want %q", tt.value, got, tt.token)
			}
		})
	}
	// The largest value allowed is accepted.
	long := strings.Repeat("a", authz.MaxAuthorizationLen-len("Bearer "))
	if got, err := authz.ParseBearer("Bearer " + long); err != nil || got != long {
		t.Fatalf("longest value: %v", err)
	}
}

// FuzzParseBearer: ParseBearer never panics, fails only with its two
// sentinels, returns only b64tokens taken from the end of the value, and
// round-trips: ParseBearer("Bearer " + token) == token.
func FuzzParseBearer(f *testing.F) {
	for _, tt := range bearerTests {
		f.Add(tt.value)
	}
	f.Fuzz(func(t *testing.T, value string) {
		token, err := authz.ParseBearer(value)
		if err != nil {
			if !errors.Is(err, authz.ErrNoToken) && !errors.Is(err, authz.ErrInvalidToken) {
				t.Fatalf("ParseBearer(%q): unexpected error %v", value, err)
			}
			if token != "" {
				t.Fatalf("ParseBearer(%q) returned %q with an error", value, token)
			}
			return
		}
		if token == "" || !strings.HasSuffix(value, token) || len(value) > authz.MaxAuthorizationLen {
			t.Fatalf("ParseBearer(%q) = %q", value, token)
		}
		if !strings.EqualFold(value[:len("Bearer ")], "Bearer ") {
			t.Fatalf("ParseBearer(%q) accepted another scheme", value)
		}
		trimmed := strings.TrimRight(token, "=")
		if trimmed == "" || strings.ContainsFunc(trimmed, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-._~+/", r))
		}) {
			t.Fatalf("ParseBearer(%q) = %q, not a b64token", value, token)
		}
		if again, err := authz.ParseBearer("Bearer " + token); err != nil || again != token {
			t.Fatalf("round trip of %q: %q, %v", token, again, err)
		}
	})
}
