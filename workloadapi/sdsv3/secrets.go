package sdsv3

import (
	"cmp"
	"encoding/pem"
	"fmt"
	"slices"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"writ.dev/writ/agent/svidcache"
)

// SecretTypeURL is the type of every resource SDS serves.
const SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// spiffeValidatorName is the name of Envoy's SPIFFE certificate
// validator extension.
const spiffeValidatorName = "envoy.tls.cert_validator.spiffe"

// view is what one caller sees at one instant.
type view struct {
	// svids are the caller's X.509-SVIDs in the cache's order (by SPIFFE
	// ID, then entry ID): the first is the default SVID.
	svids []*svidcache.X509SVID
	// bundles are the trust domains' bundles, the local one first.
	bundles []*spiffebundle.Bundle
}

// secrets returns the Secrets for names (every SVID and trust domain if
// names is empty), in the order of names, and the names it has none for.
// A name may be a SPIFFE ID of one of the caller's SVIDs, a trust domain
// ("spiffe://td"), or one of the configured default names.
func (h *Handler) secrets(names []string, v view, spiffeValidator bool) ([]*anypb.Any, []string, error) {
	if len(names) == 0 {
		names = nil
		for i, s := range v.svids {
			if i == 0 || s.ID != v.svids[i-1].ID {
				names = append(names, s.ID.String())
			}
		}
		for _, b := range v.bundles {
			names = append(names, b.TrustDomain().IDString())
		}
	}
	var (
		out     []*anypb.Any
		missing []string
		seen    = make(map[string]bool, len(names))
	)
	for _, name := range names {
		if seen[name] {
			continue
		}
		seen[name] = true
		secret := h.secret(name, v, spiffeValidator)
		if secret == nil {
			missing = append(missing, name)
			continue
		}
		a := new(anypb.Any)
		err := anypb.MarshalFrom(a, secret, proto.MarshalOptions{Deterministic: true})
		if err != nil {
			return nil, nil, fmt.Errorf("sdsv3: encode secret %q: %w", name, err)
		}
		out = append(out, a)
	}
	return out, missing, nil
}

// secret returns the Secret called name, or nil if the caller has none.
func (h *Handler) secret(name string, v view, spiffeValidator bool) *tlsv3.Secret {
	switch {
	case name == "":
		return nil
	case name == h.defaultSVID:
		if len(v.svids) == 0 {
			return nil
		}
		return tlsCertificate(name, v.svids[0])
	case name == h.defaultAllBundles && spiffeValidator:
		// First: the all-bundles name may be the bundle name too
		// (Istio's configuration calls every bundle "ROOTCA").
		if len(v.bundles) == 0 {
			return nil
		}
		return validationContext(name, v.bundles, true)
	case name == h.defaultBundle:
		if len(v.bundles) == 0 {
			return nil
		}
		return validationContext(name, v.bundles[:1], spiffeValidator)
	case name == h.defaultAllBundles:
		// Envoy's trusted_ca cannot keep trust domains apart: an ID of
		// one would verify with another's keys.
		return nil
	}
	for _, s := range v.svids {
		if s.ID.String() == name {
			return tlsCertificate(name, s)
		}
	}
	for _, b := range v.bundles {
		if b.TrustDomain().IDString() == name {
			return validationContext(name, []*spiffebundle.Bundle{b}, spiffeValidator)
		}
	}
	return nil
}

// tlsCertificate is an SVID as Envoy's TlsCertificate: the chain, leaf
// first, and the PKCS#8 key, both PEM.
func tlsCertificate(name string, s *svidcache.X509SVID) *tlsv3.Secret {
	var chain []byte
	for _, c := range s.Certificates() {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	key := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: s.PrivateKeyDER})
	return &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(chain),
			PrivateKey:       inline(key),
		}},
	}
}

// validationContext is a CertificateValidationContext for bundles: with
// the SPIFFE validator, one trust domain entry per bundle, so that each
// trust domain's IDs are verified only with its own authorities;
// without, the one bundle's authorities as trusted_ca.
func validationContext(name string, bundles []*spiffebundle.Bundle, spiffeValidator bool) *tlsv3.Secret {
	if !spiffeValidator {
		return &tlsv3.Secret{
			Name: name,
			Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: inline(authoritiesPEM(bundles[0])),
			}},
		}
	}
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	for _, b := range bundles {
		cfg.TrustDomains = append(cfg.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{
			Name:        b.TrustDomain().Name(),
			TrustBundle: inline(authoritiesPEM(b)),
		})
	}
	slices.SortFunc(cfg.TrustDomains, func(a, b *tlsv3.SPIFFECertValidatorConfig_TrustDomain) int { return cmp.Compare(a.Name, b.Name) })
	typed, err := anypb.New(cfg)
	if err != nil {
		// A message of generated types with valid UTF-8 strings always
		// marshals.
		panic("sdsv3: marshal SPIFFECertValidatorConfig: " + err.Error())
	}
	return &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			CustomValidatorConfig: &corev3.TypedExtensionConfig{Name: spiffeValidatorName, TypedConfig: typed},
		}},
	}
}

func authoritiesPEM(b *spiffebundle.Bundle) []byte {
	var out []byte
	for _, c := range b.X509Authorities() {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// spiffeValidator reports whether secrets for the Envoy that sent node
// use the SPIFFE validator form: for Envoy 1.18 and later, which have
// it, unless disabled. The node's metadata disable_spiffe_cert_validation
// (true or false) decides for that Envoy; without it, the Config does. A
// client that does not say it is Envoy 1.18 or later gets trusted_ca.
func (h *Handler) spiffeValidator(node *corev3.Node) bool {
	disabled := h.disableValidator
	if f, ok := node.GetMetadata().GetFields()[disableValidatorKey]; ok {
		if d, ok := metadataBool(f); ok {
			disabled = d // this Envoy's choice, either way
		}
	}
	if disabled {
		return false
	}
	v := node.GetUserAgentBuildVersion().GetVersion()
	if v == nil {
		return false
	}
	return v.GetMajorNumber() > 1 || v.GetMajorNumber() == 1 && v.GetMinorNumber() >= 18
}

// disableValidatorKey is the node metadata key with which one Envoy asks
// for trusted_ca instead of the SPIFFE validator (true), or for the
// SPIFFE validator where the agent disables it (false).
const disableValidatorKey = "disable_spiffe_cert_validation"

// metadataBool reads a node metadata value as a boolean: a boolean, or a
// string such as "true" or "false" (YAML writes a quoted value as a
// string). ok is false for anything else.
func metadataBool(v *structpb.Value) (b, ok bool) {
	switch k := v.GetKind().(type) {
	case *structpb.Value_BoolValue:
		return k.BoolValue, true
	case *structpb.Value_StringValue:
		b, err := strconv.ParseBool(k.StringValue)
		return b, err == nil
	}
	return false, false
}

// MaxResourceNames bounds the names of one request: each costs a lookup
// on every change the stream sees.
const MaxResourceNames = 1024

// checkRequest refuses requests for other resource types than Secret,
// and requests of more than MaxResourceNames names.
func checkRequest(req *discoveryv3.DiscoveryRequest) error {
	if t := req.GetTypeUrl(); t != "" && t != SecretTypeURL {
		return errWrongType
	}
	if len(req.GetResourceNames()) > MaxResourceNames {
		return errTooManyNames
	}
	return nil
}
