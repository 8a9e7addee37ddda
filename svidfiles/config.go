package svidfiles

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strings"
	"syscall"
)

// Format is the encoding of the certificate and key files.
type Format string

// Formats.
const (
	// PEM: certificates as CERTIFICATE blocks, the key as a PKCS#8
	// PRIVATE KEY block.
	PEM Format = "pem"
	// DER: certificates as concatenated DER, the key as PKCS#8 DER.
	DER Format = "der"
)

// Default file names and modes.
const (
	DefaultSVIDFileName       = "svid.pem"
	DefaultSVIDKeyFileName    = "svid_key.pem"
	DefaultSVIDBundleFileName = "bundle.pem"
	DefaultCertFileMode       = fs.FileMode(0o644)
	DefaultKeyFileMode        = fs.FileMode(0o600)
	DefaultJWTFileMode        = fs.FileMode(0o600)
)

// JWTSVID asks for a JWT-SVID file.
type JWTSVID struct {
	// Audience and ExtraAudiences are the token's audience.
	Audience       string
	ExtraAudiences []string
	// FileName is the file in CertDir the token is written to.
	FileName string
}

// Config configures a Helper. Keys of spiffe-helper's configuration file
// are given for each field.
type Config struct {
	// SocketPath is the Workload API socket (agent_address; a
	// "unix:///path" address is accepted too).
	SocketPath string
	// CheckSocket says that SocketPath is a default the user did not
	// name (no configuration key sets it): the helper then connects only
	// if no other user can have made the socket (unixsock.CheckDial), so
	// that a socket another local user created first at a default path
	// in /tmp never supplies the files.
	CheckSocket bool
	// CertDir is the existing directory the files are written to
	// (cert_dir).
	CertDir string
	// SVIDFileName, SVIDKeyFileName and SVIDBundleFileName are the file
	// names of the certificate chain, its key and the trust bundle
	// (svid_file_name, svid_key_file_name, svid_bundle_file_name).
	SVIDFileName, SVIDKeyFileName, SVIDBundleFileName string
	// Format is PEM (default) or DER (file_format, Writ's own key).
	Format Format
	// CertFileMode is the mode of certificate and bundle files
	// (cert_file_mode, default 0644); KeyFileMode the key's
	// (key_file_mode, default 0600).
	CertFileMode, KeyFileMode fs.FileMode
	// AddIntermediatesToBundle writes intermediate CA certificates into
	// the bundle file rather than after the leaf
	// (add_intermediates_to_bundle).
	AddIntermediatesToBundle bool
	// IncludeFederatedDomains adds the federated trust domains'
	// authorities to the bundle file (include_federated_domains).
	IncludeFederatedDomains bool
	// JWTSVIDs are JWT-SVID files to keep fresh (jwt_svids).
	JWTSVIDs []JWTSVID
	// JWTBundleFileName, if set, is a file for the JWT bundle, a JWKS
	// (jwt_bundle_file_name).
	JWTBundleFileName string
	// JWTSVIDFileMode and JWTBundleFileMode are their modes
	// (jwt_svid_file_mode, jwt_bundle_file_mode, default 0600).
	JWTSVIDFileMode, JWTBundleFileMode fs.FileMode
	// DaemonMode keeps the files up to date until stopped; false writes
	// them once and returns (daemon_mode, default true).
	DaemonMode bool
	// RenewSignal is sent after each write (renew_signal), to Cmd's
	// process or to the pid in PIDFileName (pid_file_name).
	RenewSignal string
	PIDFileName string
	// Cmd is a program started after the first write and kept running
	// (cmd), with CmdArgs split like a shell would, quotes included
	// (cmd_args).
	Cmd, CmdArgs string

	// Log, if not nil, is told what a write leaves alone, such as a
	// stale federated bundle file of another user. New sets it to the
	// helper's logger if nil.
	Log *slog.Logger

	// fault, in tests, is called before each step of writing the X.509
	// files; an error stops the write there, as a crash would.
	fault func(step string) error
}

// DefaultConfig returns a Config with every default set.
func DefaultConfig() Config {
	return Config{
		SVIDFileName:       DefaultSVIDFileName,
		SVIDKeyFileName:    DefaultSVIDKeyFileName,
		SVIDBundleFileName: DefaultSVIDBundleFileName,
		Format:             PEM,
		CertFileMode:       DefaultCertFileMode,
		KeyFileMode:        DefaultKeyFileMode,
		JWTSVIDFileMode:    DefaultJWTFileMode,
		JWTBundleFileMode:  DefaultJWTFileMode,
		DaemonMode:         true,
	}
}

// ErrConfig: a configuration is invalid.
var ErrConfig = errors.New("svidfiles: invalid configuration")

// ConfigKeys are the configuration file keys understood, in the order
// the documentation lists them.
var ConfigKeys = []string{
	"agent_address", "cert_dir", "svid_file_name", "svid_key_file_name", "svid_bundle_file_name",
	"file_format", "cert_file_mode", "key_file_mode", "add_intermediates_to_bundle", "include_federated_domains",
	"jwt_svids", "jwt_bundle_file_name", "jwt_svid_file_mode", "jwt_bundle_file_mode",
	"daemon_mode", "renew_signal", "pid_file_name", "cmd", "cmd_args",
}

// LoadConfigFile reads a configuration file in spiffe-helper's HCL format
// over cfg: the keys it sets replace cfg's fields. It returns the keys
// set. Unknown keys, and spiffe-helper keys Writ does not support (such
// as hint or health_checks), are errors.
func LoadConfigFile(path string, cfg *Config) ([]string, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the configuration: %w", err)
	}
	keys, err := applyConfig(src, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

func applyConfig(src []byte, cfg *Config) ([]string, error) {
	m, err := parseHCL(src)
	if err != nil {
		return nil, err
	}
	var set []string
	for _, key := range sortedKeys(m) {
		v := m[key]
		var err error
		switch key {
		case "agent_address":
			err = setString(&cfg.SocketPath, key, v)
		case "cert_dir":
			err = setString(&cfg.CertDir, key, v)
		case "svid_file_name":
			err = setString(&cfg.SVIDFileName, key, v)
		case "svid_key_file_name":
			err = setString(&cfg.SVIDKeyFileName, key, v)
		case "svid_bundle_file_name":
			err = setString(&cfg.SVIDBundleFileName, key, v)
		case "file_format":
			var s string
			if err = setString(&s, key, v); err == nil {
				cfg.Format, err = ParseFormat(s)
			}
		case "cert_file_mode":
			err = setMode(&cfg.CertFileMode, key, v)
		case "key_file_mode":
			err = setMode(&cfg.KeyFileMode, key, v)
		case "jwt_svid_file_mode":
			err = setMode(&cfg.JWTSVIDFileMode, key, v)
		case "jwt_bundle_file_mode":
			err = setMode(&cfg.JWTBundleFileMode, key, v)
		case "add_intermediates_to_bundle":
			err = setBool(&cfg.AddIntermediatesToBundle, key, v)
		case "include_federated_domains":
			err = setBool(&cfg.IncludeFederatedDomains, key, v)
		case "daemon_mode":
			err = setBool(&cfg.DaemonMode, key, v)
		case "jwt_bundle_file_name":
			err = setString(&cfg.JWTBundleFileName, key, v)
		case "renew_signal":
			err = setString(&cfg.RenewSignal, key, v)
		case "pid_file_name":
			err = setString(&cfg.PIDFileName, key, v)
		case "cmd":
			err = setString(&cfg.Cmd, key, v)
		case "cmd_args":
			err = setString(&cfg.CmdArgs, key, v)
		case "jwt_svids":
			cfg.JWTSVIDs, err = jwtSVIDs(v)
		case "hint", "health_checks", "omit_expired", "exit_when_ready", "agentAddress", "certDir", "cmdArgs":
			err = fmt.Errorf("%w: %q is not supported by writ helper (supported: %s)", ErrConfig, key, strings.Join(ConfigKeys, ", "))
		default:
			err = fmt.Errorf("%w: unknown key %q (supported: %s)", ErrConfig, key, strings.Join(ConfigKeys, ", "))
		}
		if err != nil {
			return nil, err
		}
		set = append(set, key)
	}
	return set, nil
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func setString(dst *string, key string, v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("%w: %s must be a string", ErrConfig, key)
	}
	*dst = s
	return nil
}

func setBool(dst *bool, key string, v any) error {
	b, ok := v.(bool)
	if !ok {
		return fmt.Errorf("%w: %s must be true or false", ErrConfig, key)
	}
	*dst = b
	return nil
}

func setMode(dst *fs.FileMode, key string, v any) error {
	n, ok := v.(int64)
	if !ok || n < 0 || n > 0o777 {
		return fmt.Errorf("%w: %s must be a file mode such as 0644", ErrConfig, key)
	}
	*dst = fs.FileMode(n)
	return nil
}

func jwtSVIDs(v any) ([]JWTSVID, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("%w: jwt_svids must be a list of {jwt_audience = ..., jwt_svid_file_name = ...}", ErrConfig)
	}
	var out []JWTSVID
	for _, item := range list {
		obj, ok := item.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%w: jwt_svids must be a list of {jwt_audience = ..., jwt_svid_file_name = ...}", ErrConfig)
		}
		var j JWTSVID
		for _, k := range sortedKeys(obj) {
			var err error
			switch k {
			case "jwt_audience":
				err = setString(&j.Audience, k, obj[k])
			case "jwt_svid_file_name":
				err = setString(&j.FileName, k, obj[k])
			case "jwt_extra_audiences":
				l, ok := obj[k].([]any)
				if !ok {
					return nil, fmt.Errorf("%w: jwt_extra_audiences must be a list of strings", ErrConfig)
				}
				for _, a := range l {
					s, ok := a.(string)
					if !ok {
						return nil, fmt.Errorf("%w: jwt_extra_audiences must be a list of strings", ErrConfig)
					}
					j.ExtraAudiences = append(j.ExtraAudiences, s)
				}
			default:
				err = fmt.Errorf("%w: unknown key %q in jwt_svids", ErrConfig, k)
			}
			if err != nil {
				return nil, err
			}
		}
		out = append(out, j)
	}
	return out, nil
}

// ParseFormat parses "pem" or "der".
func ParseFormat(s string) (Format, error) {
	switch f := Format(strings.ToLower(s)); f {
	case PEM, DER:
		return f, nil
	}
	return "", fmt.Errorf("%w: file format %q: want pem or der", ErrConfig, s)
}

// ParseSignal parses a signal name such as "SIGHUP" or "HUP".
func ParseSignal(name string) (syscall.Signal, error) {
	n := strings.TrimPrefix(strings.ToUpper(name), "SIG")
	if s, ok := signals[n]; ok {
		return s, nil
	}
	return 0, fmt.Errorf("%w: unknown signal %q", ErrConfig, name)
}

var signals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "TERM": syscall.SIGTERM,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "WINCH": syscall.SIGWINCH, "CONT": syscall.SIGCONT,
}

// Check checks cfg: required fields, file names that are plain names,
// no two files alike, one signal target.
func (cfg *Config) Check() error {
	switch {
	case cfg.SocketPath == "":
		return fmt.Errorf("%w: no Workload API socket (agent_address, --socket-path or SPIFFE_ENDPOINT_SOCKET)", ErrConfig)
	case cfg.CertDir == "":
		return fmt.Errorf("%w: no certificate directory (cert_dir, --cert-dir)", ErrConfig)
	case cfg.RenewSignal != "" && cfg.Cmd == "" && cfg.PIDFileName == "":
		return fmt.Errorf("%w: renew_signal needs cmd or pid_file_name, the process to signal", ErrConfig)
	case cfg.PIDFileName != "" && cfg.RenewSignal == "":
		return fmt.Errorf("%w: pid_file_name needs renew_signal", ErrConfig)
	case cfg.Cmd != "" && !cfg.DaemonMode:
		return fmt.Errorf("%w: cmd needs daemon mode (daemon_mode = false writes the files once and exits)", ErrConfig)
	case cfg.CmdArgs != "" && cfg.Cmd == "":
		return fmt.Errorf("%w: cmd_args without cmd", ErrConfig)
	}
	if cfg.RenewSignal != "" {
		if _, err := ParseSignal(cfg.RenewSignal); err != nil {
			return err
		}
	}
	if _, err := ParseFormat(string(cfg.Format)); err != nil {
		return err
	}
	if _, err := splitArgs(cfg.CmdArgs); err != nil {
		return err
	}
	names := []string{cfg.SVIDFileName, cfg.SVIDKeyFileName, cfg.SVIDBundleFileName}
	if cfg.JWTBundleFileName != "" {
		names = append(names, cfg.JWTBundleFileName)
	}
	for _, j := range cfg.JWTSVIDs {
		if j.Audience == "" {
			return fmt.Errorf("%w: a JWT-SVID file without an audience", ErrConfig)
		}
		names = append(names, j.FileName)
	}
	seen := make(map[string]bool)
	for _, n := range names {
		if n == "" || n == "." || n == ".." || strings.ContainsAny(n, "/\x00") {
			return fmt.Errorf("%w: file name %q must be a plain name in the certificate directory", ErrConfig, n)
		}
		if strings.HasPrefix(n, reservedPrefix) {
			return fmt.Errorf("%w: file name %q: names starting with %q are Writ's own", ErrConfig, n, reservedPrefix)
		}
		if seen[n] {
			return fmt.Errorf("%w: file name %q is used twice", ErrConfig, n)
		}
		seen[n] = true
	}
	return nil
}

// splitArgs splits a command line into words as a POSIX shell does for
// plain words, single and double quotes and backslashes; it expands
// nothing.
func splitArgs(s string) ([]string, error) {
	var (
		out     []string
		cur     strings.Builder
		inWord  bool
		quote   byte
		escaped bool
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case escaped:
			cur.WriteByte(c)
			escaped = false
		case quote == '\'':
			if c == '\'' {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
		case quote == '"':
			switch c {
			case '"':
				quote = 0
			case '\\':
				if i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
					i++
					cur.WriteByte(s[i])
				} else {
					cur.WriteByte(c)
				}
			default:
				cur.WriteByte(c)
			}
		case c == '\\':
			escaped, inWord = true, true
		case c == '\'' || c == '"':
			quote, inWord = c, true
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quote != 0 || escaped {
		return nil, fmt.Errorf("%w: cmd_args has an unterminated quote or escape", ErrConfig)
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}
