package main

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
	"golang.org/x/crypto/ssh"

	"writ.dev/writ/agent"
	"writ.dev/writ/ca/attest/sshpop"
	"writ.dev/writ/ca/attest/x509pop"
	"writ.dev/writ/ca/clock"
	"writ.dev/writ/ca/nodeapi"
)

// Node attestors: the flags of each side and the one place that builds
// them from configuration.

// agentNodeAttestFlags are `writ agent run`'s node attestation flags.
func agentNodeAttestFlags() []cli.Flag {
	return []cli.Flag{
		altsrc.NewStringFlag(&cli.StringFlag{Name: "node-attestor", Usage: "how the agent proves its node when it has no valid SVID: join_token (with --join-token; the default), x509pop or sshpop", EnvVars: []string{"WRIT_NODE_ATTESTOR"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "x509pop-cert", Usage: "x509pop: PEM `FILE` of the node's certificate, then any intermediates", EnvVars: []string{"WRIT_X509POP_CERT"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "x509pop-key", Usage: "x509pop: PEM `FILE` of the node certificate's private key", EnvVars: []string{"WRIT_X509POP_KEY"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "sshpop-host-key", Usage: "sshpop: the SSH host private key `FILE` (such as /etc/ssh/ssh_host_ed25519_key)", EnvVars: []string{"WRIT_SSHPOP_HOST_KEY"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "sshpop-host-cert", Usage: "sshpop: the SSH host certificate `FILE` (such as /etc/ssh/ssh_host_ed25519_key-cert.pub)", EnvVars: []string{"WRIT_SSHPOP_HOST_CERT"}, TakesFile: true}),
	}
}

// agentNodeAttestor builds the agent's node attestor from its flags: nil
// for join tokens.
func agentNodeAttestor(c *cli.Context) (agent.NodeAttestor, error) {
	typ := c.String("node-attestor")
	set := func(names ...string) error {
		for _, n := range names {
			if c.String(n) != "" {
				return fmt.Errorf("--%s is for --node-attestor %s", n, map[string]string{"x509pop-cert": x509pop.Type, "x509pop-key": x509pop.Type, "sshpop-host-key": sshpop.Type, "sshpop-host-cert": sshpop.Type}[n])
			}
		}
		return nil
	}
	switch typ {
	case "", nodeapi.AttestationTypeJoinToken:
		return nil, set("x509pop-cert", "x509pop-key", "sshpop-host-key", "sshpop-host-cert")
	case x509pop.Type:
		if c.String("join-token") != "" {
			return nil, errors.New("--join-token is for --node-attestor join_token")
		}
		if err := set("sshpop-host-key", "sshpop-host-cert"); err != nil {
			return nil, err
		}
		if c.String("x509pop-cert") == "" || c.String("x509pop-key") == "" {
			return nil, errors.New("--node-attestor x509pop needs --x509pop-cert and --x509pop-key")
		}
		return loadX509popAgent(c.String("x509pop-cert"), c.String("x509pop-key"))
	case sshpop.Type:
		if c.String("join-token") != "" {
			return nil, errors.New("--join-token is for --node-attestor join_token")
		}
		if err := set("x509pop-cert", "x509pop-key"); err != nil {
			return nil, err
		}
		if c.String("sshpop-host-key") == "" || c.String("sshpop-host-cert") == "" {
			return nil, errors.New("--node-attestor sshpop needs --sshpop-host-key and --sshpop-host-cert")
		}
		return loadSSHpopAgent(c.String("sshpop-host-cert"), c.String("sshpop-host-key"))
	}
	return nil, fmt.Errorf("--node-attestor %q: use join_token, x509pop or sshpop", typ)
}

func loadX509popAgent(certPath, keyPath string) (*x509pop.Agent, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("--x509pop-cert: %w", err)
	}
	var chain [][]byte
	for rest := certPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			chain = append(chain, b.Bytes)
		}
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("--x509pop-cert %s: no PEM certificate", certPath)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("--x509pop-key: %w", err)
	}
	key, err := parsePEMSigner(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("--x509pop-key %s: %w", keyPath, err)
	}
	a, err := x509pop.NewAgent(chain, key)
	if err != nil {
		return nil, fmt.Errorf("--x509pop-cert and --x509pop-key: %w", err)
	}
	return a, nil
}

// parsePEMSigner parses the first private key of a PEM file: PKCS#8, SEC 1
// (EC) or PKCS#1 (RSA).
func parsePEMSigner(data []byte) (crypto.Signer, error) {
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return nil, errors.New("no PEM private key")
		}
		var (
			k   any
			err error
		)
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("private key: %w", err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("private key of type %T cannot sign", k)
		}
		return s, nil
	}
}

func loadSSHpopAgent(certPath, keyPath string) (*sshpop.Agent, error) {
	cert, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("--sshpop-host-cert: %w", err)
	}
	keyData, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("--sshpop-host-key: %w", err)
	}
	key, err := ssh.ParsePrivateKey(keyData)
	if err != nil {
		return nil, fmt.Errorf("--sshpop-host-key %s: %w", keyPath, err)
	}
	a, err := sshpop.NewAgent(cert, key)
	if err != nil {
		return nil, fmt.Errorf("--sshpop-host-cert and --sshpop-host-key: %w", err)
	}
	return a, nil
}

// serverNodeAttestFlags are `writ server run`'s node attestation flags.
func serverNodeAttestFlags() []cli.Flag {
	return []cli.Flag{
		altsrc.NewStringFlag(&cli.StringFlag{Name: "x509pop-ca-bundle", Usage: "enable x509pop node attestation: PEM `FILE` of the CA certificates node certificates must chain to (read again when it changes)", EnvVars: []string{"WRIT_X509POP_CA_BUNDLE"}, TakesFile: true}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "x509pop-agent-path-template", Usage: "x509pop: text/template of the agent ID's path under /writ/agent/, over .PluginName, .Fingerprint, .Subject (.Subject.CommonName, ...), .SerialNumberHex, .TrustDomain (default \"" + x509pop.DefaultPathTemplate + "\")", EnvVars: []string{"WRIT_X509POP_AGENT_PATH_TEMPLATE"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "sshpop-cert-authority", Usage: "enable sshpop node attestation: `FILE` of the SSH host CA public keys (authorized_keys format, one a line) host certificates must be signed by (read again when it changes)", EnvVars: []string{"WRIT_SSHPOP_CERT_AUTHORITY"}, TakesFile: true}),
	}
}

// serverNodeAttestors builds the node attestors the server's flags
// enable. Their files are read now (a bad file stops the server from
// starting) and again whenever they change.
func serverNodeAttestors(c *cli.Context, td spiffeid.TrustDomain, log *slog.Logger) ([]nodeapi.NodeAttestor, error) {
	var out []nodeapi.NodeAttestor
	clk := clock.Real()
	if path := c.String("x509pop-ca-bundle"); path != "" {
		tmpl, err := x509pop.ParsePathTemplate(c.String("x509pop-agent-path-template"))
		if err != nil {
			return nil, fmt.Errorf("--x509pop-agent-path-template: %w", err)
		}
		roots, err := newFileReloader(path, "--x509pop-ca-bundle", parseCABundle, log)
		if err != nil {
			return nil, err
		}
		v, err := x509pop.NewVerifier(x509pop.Config{TrustDomain: td, Roots: roots.get, PathTemplate: tmpl, Clock: clk})
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	} else if c.String("x509pop-agent-path-template") != "" {
		return nil, errors.New("--x509pop-agent-path-template needs --x509pop-ca-bundle")
	}
	if path := c.String("sshpop-cert-authority"); path != "" {
		cas, err := newFileReloader(path, "--sshpop-cert-authority", parseSSHAuthorities, log)
		if err != nil {
			return nil, err
		}
		v, err := sshpop.NewVerifier(sshpop.Config{TrustDomain: td, Authorities: cas.get, Clock: clk})
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func parseCABundle(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(out)+1, err)
		}
		out = append(out, cert)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

func parseSSHAuthorities(data []byte) ([]ssh.PublicKey, error) {
	var out []ssh.PublicKey
	for rest := data; len(bytes.TrimSpace(rest)) > 0; {
		k, _, _, r, err := ssh.ParseAuthorizedKey(rest)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", len(out)+1, err)
		}
		if _, ok := k.(*ssh.Certificate); ok {
			return nil, fmt.Errorf("key %d is a certificate, not a CA public key", len(out)+1)
		}
		out = append(out, k)
		rest = r
	}
	if len(out) == 0 {
		return nil, errors.New("no public key")
	}
	return out, nil
}

// fileReloader holds what a file parses to, and parses it again when the
// file changes (checked at each get, that is at each attestation). A file
// that fails to read or parse keeps the last good value.
type fileReloader[T any] struct {
	path, flag string
	parse      func([]byte) ([]T, error)
	log        *slog.Logger

	mu sync.Mutex // guards stamp, bad, val
	// stamp identifies the version of the file val was read from, bad
	// the last version that failed (logged once).
	stamp, bad fileStamp
	val        []T
}

type fileStamp struct {
	size    int64
	modTime time.Time
	ino     uint64
}

func newFileReloader[T any](path, flag string, parse func([]byte) ([]T, error), log *slog.Logger) (*fileReloader[T], error) {
	r := &fileReloader[T]{path: path, flag: flag, parse: parse, log: log}
	if err := r.load(); err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	return r, nil
}

func (r *fileReloader[T]) load() error {
	st, err := os.Stat(r.path)
	if err != nil {
		return err
	}
	stamp := fileStamp{size: st.Size(), modTime: st.ModTime(), ino: inode(st)}
	if stamp == r.stamp && r.val != nil || stamp == r.bad {
		return nil
	}
	data, err := os.ReadFile(r.path)
	if err != nil {
		return err
	}
	val, err := r.parse(data)
	if err != nil {
		r.bad = stamp
		return fmt.Errorf("%s: %w", r.path, err)
	}
	if r.val != nil {
		r.log.Info("node attestation trust file reloaded", "flag", r.flag, "path", r.path, "keys", len(val))
	}
	r.stamp, r.val = stamp, val
	return nil
}

func (r *fileReloader[T]) get() []T {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.load(); err != nil {
		r.log.Error("cannot reload a node attestation trust file; keeping the last good one", "flag", r.flag, "path", r.path, "error", err)
	}
	return r.val
}
