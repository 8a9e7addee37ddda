package jointoken_test

import (
	"encoding/base64"
	"fmt"
	"testing"

	"writ.dev/writ/ca/attest/jointoken"
)

func TestNew(t *testing.T) {
	seen := make(map[string]bool)
	for range 100 {
		tok := jointoken.New()
		if len(tok) != jointoken.Length {
			t.Fatalf("len(%q) = %d, want %d", tok, len(tok), jointoken.Length)
		}
		b, err := base64.RawURLEncoding.Strict().DecodeString(tok)
		if err != nil {
			t.Fatalf("token %q is not unpadded base64url: %v", tok, err)
		}
		if len(b) != jointoken.Size {
			t.Fatalf("token decodes to %d bytes, want %d", len(b), jointoken.Size)
		}
		if seen[tok] {
			t.Fatalf("token %q repeated", tok)
		}
		seen[tok] = true
	}
}

func TestHash(t *testing.T) {
	tests := []struct {
		name  string
		token string
		want  string
	}{
		{name: "empty", token: "", want: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		{name: "abc", token: "abc", want: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := jointoken.Hash(tt.token); got != tt.want {
				t.Errorf("Hash(%q) = %s, want %s", tt.token, got, tt.want)
			}
		})
	}
	tok := jointoken.New()
	if jointoken.Hash(tok) == tok || jointoken.Hash(tok) != jointoken.Hash(tok) {
		t.Error("Hash is not a deterministic digest")
	}
}

func ExampleHash() {
	fmt.Println(jointoken.Hash("abc"))
	// Output: ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
}
