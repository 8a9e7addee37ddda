package authz_test

import (
	"errors"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/workloadapi/authz"
)

func TestPolicies(t *testing.T) {
	id := spiffeid.RequireFromString
	prod := authz.MustPathPrefix(td, "/ns/prod")
	tests := []struct {
		name   string
		policy authz.Policy
		allow  []string
		deny   []string
	}{
		{
			name:   "IDs exact",
			policy: authz.IDs(id("spiffe://example.org/web"), id("spiffe://example.org/db")),
			allow:  []string{"spiffe://example.org/web", "spiffe://example.org/db"},
			deny:   []string{"spiffe://example.org/web/x", "spiffe://example.org/we", "spiffe://other.test/web", "spiffe://example.org"},
		},
		{
			name:   "IDs none",
			policy: authz.IDs(),
			deny:   []string{"spiffe://example.org/web", "spiffe://example.org"},
		},
		{
			name:   "IDs ignores zero",
			policy: authz.IDs(spiffeid.ID{}),
			deny:   []string{"spiffe://example.org/web"},
		},
		{
			name:   "trust domain",
			policy: authz.TrustDomain(td),
			allow:  []string{"spiffe://example.org/web", "spiffe://example.org/a/b/c"},
			deny:   []string{"spiffe://example.org", "spiffe://other.test/web", "spiffe://example.org.evil/web", "spiffe://org/web"},
		},
		{
			name:   "zero trust domain",
			policy: authz.TrustDomain(spiffeid.TrustDomain{}),
			deny:   []string{"spiffe://example.org/web"},
		},
		{
			name:   "path prefix is segment-aware",
			policy: prod,
			allow:  []string{"spiffe://example.org/ns/prod", "spiffe://example.org/ns/prod/x", "spiffe://example.org/ns/prod/x/y"},
			deny: []string{"spiffe://example.org/ns/production", "spiffe://example.org/ns/pro", "spiffe://example.org/ns",
				"spiffe://other.test/ns/prod", "spiffe://example.org/x/ns/prod", "spiffe://example.org/ns/prod.x", "spiffe://example.org/ns/prod-x"},
		},
		{
			name:   "path prefix of one segment",
			policy: authz.MustPathPrefix(td, "/a"),
			allow:  []string{"spiffe://example.org/a", "spiffe://example.org/a/b"},
			deny:   []string{"spiffe://example.org/ab", "spiffe://example.org/b/a"},
		},
		{
			name:   "any of",
			policy: authz.Any(prod, authz.IDs(id("spiffe://other.test/admin")), nil),
			allow:  []string{"spiffe://example.org/ns/prod/web", "spiffe://other.test/admin"},
			deny:   []string{"spiffe://example.org/ns/dev/web", "spiffe://other.test/admin/x"},
		},
		{
			name:   "any of nothing",
			policy: authz.Any(),
			deny:   []string{"spiffe://example.org/web"},
		},
		{
			name:   "func",
			policy: authz.PolicyFunc(func(id spiffeid.ID) bool { return id.Path() == "/web" }),
			allow:  []string{"spiffe://example.org/web", "spiffe://other.test/web"},
			deny:   []string{"spiffe://example.org/db"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, s := range tt.allow {
				if !tt.policy.Allows(id(s)) {
					t.Errorf("%v does not allow %s", tt.policy, s)
				}
				if err := authz.TLSAuthorizer(tt.policy)(id(s), nil); err != nil {
					t.Errorf("TLSAuthorizer refuses %s: %v", s, err)
				}
			}
			for _, s := range tt.deny {
				if tt.policy.Allows(id(s)) {
					t.Errorf("%v allows %s", tt.policy, s)
				}
				if err := authz.TLSAuthorizer(tt.policy)(id(s), nil); !errors.Is(err, authz.ErrNotAllowed) {
					t.Errorf("TLSAuthorizer on %s: %v, want ErrNotAllowed", s, err)
				}
			}
			if tt.policy.Allows(spiffeid.ID{}) && tt.name != "func" {
				t.Error("allows the zero ID")
			}
		})
	}
	if err := authz.TLSAuthorizer(nil)(id("spiffe://example.org/web"), nil); !errors.Is(err, authz.ErrNotAllowed) {
		t.Errorf("nil policy: %v", err)
	}
}

func TestPathPrefixRefusesInvalidPrefixes(t *testing.T) {
	for _, prefix := range []string{"", "/", "ns/prod", "/ns/prod/", "/ns//prod", "/ns/./prod", "/ns/../prod", "/ns/pr%6fd", "/ns/prod?x", "/ns/pröd"} {
		if p, err := authz.PathPrefix(td, prefix); err == nil {
			t.Errorf("PathPrefix(%q) = %v, want an error", prefix, p)
		}
	}
	if _, err := authz.PathPrefix(spiffeid.TrustDomain{}, "/ns"); err == nil {
		t.Error("PathPrefix accepted a zero trust domain")
	}
	defer func() {
		if recover() == nil {
			t.Error("MustPathPrefix did not panic on an invalid prefix")
		}
	}()
	authz.MustPathPrefix(td, "/ns/")
}
