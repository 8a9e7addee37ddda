package server_test

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/ca/server"
)

func TestNewChecksOAuthSettings(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  server.OAuthConfig
		ok   bool
	}{
		{"off", server.OAuthConfig{}, true},
		{"own SVID", server.OAuthConfig{BindAddress: "127.0.0.1:0"}, true},
		{"files", server.OAuthConfig{BindAddress: "127.0.0.1:0", CertFile: "c.pem", KeyFile: "k.pem", TokenTTL: time.Minute}, true},
		{"settings without an address", server.OAuthConfig{Issuer: "https://oauth.example.org"}, false},
		{"TTL without an address", server.OAuthConfig{TokenTTL: time.Minute}, false},
		{"certificate without key", server.OAuthConfig{BindAddress: "127.0.0.1:0", CertFile: "c.pem"}, false},
		{"TTL too short", server.OAuthConfig{BindAddress: "127.0.0.1:0", TokenTTL: time.Second}, false},
		{"TTL too long", server.OAuthConfig{BindAddress: "127.0.0.1:0", TokenTTL: 25 * time.Hour}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := server.New(server.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), DataDir: t.TempDir(), OAuth: tt.cfg})
			if (err == nil) != tt.ok {
				t.Fatalf("New: %v, want ok=%v", err, tt.ok)
			}
		})
	}
}
