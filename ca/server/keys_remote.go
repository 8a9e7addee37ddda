package server

import (
	"fmt"

	"writ.dev/writ/ca/keymanager/upstream"
)

// newStep returns the step-ca upstream c configures.
func newStep(c KeysConfig) (*upstream.Step, error) {
	roots, err := upstream.ReadCertificates(c.StepRoot)
	if err != nil {
		return nil, fmt.Errorf("step-ca root: %w", err)
	}
	if len(roots) != 1 {
		return nil, fmt.Errorf("%w: step-ca root file %s holds %d certificates; give only the root", upstream.ErrFile, c.StepRoot, len(roots))
	}
	password, err := upstream.ReadSecret(c.StepProvisionerPasswordFile)
	if err != nil {
		return nil, fmt.Errorf("step-ca provisioner password: %w", err)
	}
	return upstream.NewStep(upstream.StepConfig{
		URL:         c.StepCAURL,
		Root:        roots[0],
		Provisioner: c.StepProvisioner,
		Password:    password,
	})
}

// newCFSSL returns the cfssl upstream c configures.
func newCFSSL(c KeysConfig) (*upstream.CFSSL, error) {
	roots, err := upstream.ReadCertificates(c.UpstreamBundle)
	if err != nil {
		return nil, fmt.Errorf("cfssl upstream bundle: %w", err)
	}
	key, err := upstream.ReadSecret(c.CFSSLAuthKeyFile)
	if err != nil {
		return nil, fmt.Errorf("cfssl auth key: %w", err)
	}
	return upstream.NewCFSSL(upstream.CFSSLConfig{
		URL:     c.CFSSLURL,
		AuthKey: string(key),
		Profile: c.CFSSLProfile,
		Roots:   roots,
	})
}
