package admin

import (
	"testing"

	"google.golang.org/grpc"

	adminv1 "writ.dev/writ/ca/api/admin/v1"
)

// TestRulesCoverAdminAPI checks that the policy table names every admin
// method, with mutations marked, and nothing else but the health service.
func TestRulesCoverAdminAPI(t *testing.T) {
	mutations := map[string]bool{
		"BatchCreateEntry": true, "UpdateEntry": true, "DeleteEntry": true,
		"EvictAgent": true, "BanAgent": true, "UnbanAgent": true,
		"GenerateJoinToken": true,
		"PrepareAuthority":  true, "ActivateAuthority": true, "TaintAuthority": true,
		"RevokeAuthority": true, "Rotate": true,
		"SetFederatedBundle": true, "DeleteFederatedBundle": true,
		"CreateFederation": true, "UpdateFederation": true, "DeleteFederation": true, "RefreshFederation": true,
		"CreateOAuthClient": true, "UpdateOAuthClient": true, "DeleteOAuthClient": true, "RevokeOAuthTokens": true,
	}
	seen := make(map[string]bool)
	for _, desc := range []grpc.ServiceDesc{
		adminv1.EntryService_ServiceDesc,
		adminv1.AgentService_ServiceDesc,
		adminv1.JoinTokenService_ServiceDesc,
		adminv1.BundleService_ServiceDesc,
		adminv1.ServerService_ServiceDesc,
		adminv1.CAService_ServiceDesc,
		adminv1.FederationService_ServiceDesc,
		adminv1.OAuthService_ServiceDesc,
	} {
		var names []string
		for _, m := range desc.Methods {
			names = append(names, m.MethodName)
		}
		for _, s := range desc.Streams {
			names = append(names, s.StreamName)
		}
		for _, name := range names {
			full := "/" + desc.ServiceName + "/" + name
			seen[full] = true
			r, ok := rules[full]
			if !ok {
				t.Errorf("%s has no rule", full)
				continue
			}
			if r.public {
				t.Errorf("%s is public", full)
			}
			if r.mutation != mutations[name] {
				t.Errorf("%s: mutation = %v, want %v", full, r.mutation, mutations[name])
			}
		}
	}
	for full, r := range rules {
		if !seen[full] && !r.public {
			t.Errorf("rule for %s, which is not an admin method", full)
		}
		if r.public && r.mutation {
			t.Errorf("%s is a public mutation", full)
		}
	}
}
