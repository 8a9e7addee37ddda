package agent

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"writ.dev/writ/agent/revocation"
	"writ.dev/writ/internal/datadir"
)

// Files of the layout before StateFile: the key and the chain were
// written one after the other, so a crash between the two lost the
// agent's identity. They are read once, moved into StateFile and removed.
const (
	legacySVIDFile   = "agent_svid.pem"
	legacyKeyFile    = "agent_key.pem"
	legacyBundleFile = "bundle.json"
)

// stateVersion is the version of StateFile's format.
const stateVersion = 1

// stateTempPrefix starts the names of StateFile's temporary files.
const stateTempPrefix = "." + StateFile + ".tmp"

// stateJSON is StateFile's content. Key and SVID are both set or both
// empty; Bundle may be set alone (a bundle saved before attestation
// completed).
type stateJSON struct {
	Version int             `json:"version"`
	Key     []byte          `json:"key,omitempty"`  // PKCS#8 DER
	SVID    [][]byte        `json:"svid,omitempty"` // DER, leaf first
	Bundle  json.RawMessage `json:"bundle,omitempty"`
	// Federated are the bundles of foreign trust domains the agent's
	// entries federate with, by trust domain name (SPIFFE bundle JSON).
	Federated map[string]json.RawMessage `json:"federated,omitempty"`
	// Revocations are the access-token revocations last received, so
	// that an agent restarted while the server is away still refuses
	// revoked tokens.
	Revocations []savedRevocation `json:"revocations,omitempty"`
}

// savedRevocation is a revocation.Revocation in StateFile (Unix seconds).
type savedRevocation struct {
	JTI       string `json:"jti,omitempty"`
	ClientID  string `json:"client_id,omitempty"`
	RevokedAt int64  `json:"revoked_at,omitempty"`
	ExpiresAt int64  `json:"expires_at"`
}

// writeStep names a step of writing StateFile, for fault injection.
type writeStep int

// The steps of stateStore.write, in order.
const (
	stepCreateTemp writeStep = iota
	stepWriteTemp
	stepSyncTemp
	stepCloseTemp
	stepRename
	stepSyncDir
	stepRemoveLegacy
	stepSyncDirAgain
	numWriteSteps
)

// stateStore reads and writes the agent's state: key, SVID chain and
// bundle together in StateFile, so that a crash at any point leaves
// either the previous state or the new one, never a key beside another
// key's SVID. Each write goes to a temporary file that is synced, then
// renamed over StateFile, then the directory is synced.
type stateStore struct {
	dir *datadir.Dir
	// afterStep, when set (tests), runs after each write step; an error
	// stops the write there as a crash would, leaving what is on disk.
	afterStep func(writeStep) error

	mu sync.Mutex // guards svid, bundle, federated and revs, and serializes writes
	// svid, bundle, federated and revs are what StateFile holds.
	svid      *agentSVID
	bundle    *spiffebundle.Bundle
	federated map[spiffeid.TrustDomain]*spiffebundle.Bundle
	revs      []savedRevocation
}

func newStateStore(dir *datadir.Dir) *stateStore { return &stateStore{dir: dir} }

// savedState is what the data directory holds.
type savedState struct {
	svid *agentSVID // nil if none
	// svidErr says why a saved SVID is not usable (expired, mismatched).
	svidErr error
	expired bool
	bundle  *spiffebundle.Bundle // nil if none
	// revocations are the saved revocations (expired ones included).
	revocations []revocation.Revocation
	// federated are the saved foreign bundles.
	federated map[spiffeid.TrustDomain]*spiffebundle.Bundle
}

// load reads the agent's state. Without StateFile it reads the files of
// the previous layout and, if they hold a usable SVID, moves them into
// StateFile. It refuses state where an SVID exists without its key or
// bundle: that is lost state, not a first start.
func (s *stateStore) load(td spiffeid.TrustDomain, now time.Time) (*savedState, error) {
	s.removeTemps()
	path := s.dir.Join(StateFile)
	data, err := readOptional(path)
	if err != nil {
		return nil, err
	}
	if data == nil {
		return s.loadLegacy(td, now)
	}
	var j stateJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInconsistentState, path, err)
	}
	if j.Version != stateVersion {
		return nil, fmt.Errorf("%w: %s has format version %d, not %d", ErrInconsistentState, path, j.Version, stateVersion)
	}
	if (len(j.Key) == 0) != (len(j.SVID) == 0) {
		return nil, fmt.Errorf("%w: %s holds a key without an SVID or an SVID without a key; remove it to attest again with a new join token", ErrInconsistentState, path)
	}
	// Files of the earlier layout left by a crash after StateFile was
	// written are stale.
	s.removeLegacy()
	st := &savedState{}
	if len(j.Bundle) > 0 {
		if st.bundle, err = parseSavedBundle(td, j.Bundle); err != nil {
			return nil, fmt.Errorf("%w: %s: bundle: %w", ErrInconsistentState, path, err)
		}
	}
	for i, sr := range j.Revocations {
		r, err := revocation.FromUnix(sr.JTI, sr.ClientID, sr.RevokedAt, sr.ExpiresAt)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: revocation %d: %w", ErrInconsistentState, path, i, err)
		}
		st.revocations = append(st.revocations, r)
	}
	if st.federated, err = parseSavedFederated(td, j.Federated); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInconsistentState, path, err)
	}
	s.mu.Lock()
	s.revs = j.Revocations
	s.federated = st.federated
	s.mu.Unlock()
	if len(j.SVID) == 0 {
		s.remember(nil, st.bundle)
		return st, nil
	}
	if st.bundle == nil {
		return nil, fmt.Errorf("%w: %s holds an SVID but no bundle; remove it to attest again with a new join token", ErrInconsistentState, path)
	}
	k, err := x509.ParsePKCS8PrivateKey(j.Key)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: key: %w", ErrInconsistentState, path, err)
	}
	key, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: %s: key of type %T cannot sign", ErrInconsistentState, path, k)
	}
	s.checkSVID(st, td, path, j.SVID, key, now)
	s.remember(st.svid, st.bundle)
	return st, nil
}

// checkSVID sets st.svid, or st.svidErr and st.expired.
func (s *stateStore) checkSVID(st *savedState, td spiffeid.TrustDomain, path string, chain [][]byte, key crypto.Signer, now time.Time) {
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		st.svidErr = fmt.Errorf("%w: the agent SVID in %s is not usable: %w", ErrInconsistentState, path, err)
		return
	}
	if !now.Before(leaf.NotAfter) {
		st.expired = true
		st.svidErr = fmt.Errorf("%w: the agent SVID in %s expired at %s", ErrAgentSVIDExpired, path, leaf.NotAfter.UTC().Format(time.RFC3339))
		return
	}
	svid, err := newAgentSVID(td, chain, key, st.bundle, now)
	if err != nil {
		st.svidErr = fmt.Errorf("%w: the agent SVID in %s is not usable: %w", ErrInconsistentState, path, err)
		return
	}
	st.svid = svid
}

// parseSavedFederated parses saved foreign bundles.
func parseSavedFederated(local spiffeid.TrustDomain, docs map[string]json.RawMessage) (map[spiffeid.TrustDomain]*spiffebundle.Bundle, error) {
	if len(docs) == 0 {
		return nil, nil
	}
	out := make(map[spiffeid.TrustDomain]*spiffebundle.Bundle, len(docs))
	for name, doc := range docs {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil || td.Name() != name || td == local {
			return nil, fmt.Errorf("federated bundle under an invalid trust domain name %q", name)
		}
		if out[td], err = spiffebundle.Parse(td, doc); err != nil {
			return nil, fmt.Errorf("federated bundle of %s: %w", name, err)
		}
	}
	return out, nil
}

func parseSavedBundle(td spiffeid.TrustDomain, data []byte) (*spiffebundle.Bundle, error) {
	b, err := spiffebundle.Parse(td, data)
	if err != nil {
		return nil, err
	}
	if len(b.X509Authorities()) == 0 {
		return nil, errors.New("no X.509 authorities")
	}
	return b, nil
}

// loadLegacy reads the previous layout (agent_svid.pem, agent_key.pem,
// bundle.json) and moves a usable SVID with its key and bundle into
// StateFile.
func (s *stateStore) loadLegacy(td spiffeid.TrustDomain, now time.Time) (*savedState, error) {
	svidPath, keyPath, bundlePath := s.dir.Join(legacySVIDFile), s.dir.Join(legacyKeyFile), s.dir.Join(legacyBundleFile)
	svidPEM, err := readOptional(svidPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readOptional(keyPath)
	if err != nil {
		return nil, err
	}
	bundleJSON, err := readOptional(bundlePath)
	if err != nil {
		return nil, err
	}
	st := &savedState{}
	if bundleJSON != nil {
		if st.bundle, err = parseSavedBundle(td, bundleJSON); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrInconsistentState, bundlePath, err)
		}
	}
	if svidPEM == nil {
		s.remember(nil, st.bundle)
		return st, nil
	}
	if keyPEM == nil || st.bundle == nil {
		missing := keyPath
		if st.bundle == nil {
			missing = bundlePath
		}
		return nil, fmt.Errorf("%w: %s exists but %s is missing; restore it, or remove %s, %s and %s to attest again with a new join token",
			ErrInconsistentState, svidPath, missing, legacySVIDFile, legacyKeyFile, legacyBundleFile)
	}
	chain, err := decodeCerts(svidPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInconsistentState, svidPath, err)
	}
	key, err := decodeKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInconsistentState, keyPath, err)
	}
	s.checkSVID(st, td, svidPath, chain, key, now)
	s.remember(nil, st.bundle)
	if st.svid != nil {
		if err := s.save(st.svid, st.bundle); err != nil {
			return nil, fmt.Errorf("move the agent's state into %s: %w", s.dir.Join(StateFile), err)
		}
	}
	return st, nil
}

func (s *stateStore) remember(svid *agentSVID, b *spiffebundle.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.svid, s.bundle = svid, b
}

// save replaces the saved state with svid and bundle together; a nil one
// keeps what is saved.
func (s *stateStore) save(svid *agentSVID, bundle *spiffebundle.Bundle) error {
	return s.saveAll(svid, bundle, nil)
}

// saveAll is save that also replaces the saved revocations when revs is
// not nil.
func (s *stateStore) saveAll(svid *agentSVID, bundle *spiffebundle.Bundle, revs *[]savedRevocation) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if revs == nil {
		revs = &s.revs
	}
	if svid == nil {
		svid = s.svid
	}
	if bundle == nil {
		bundle = s.bundle
	}
	data, err := marshalState(svid, bundle, s.federated, *revs)
	if err != nil {
		return err
	}
	if err := s.write(data); err != nil {
		return err
	}
	s.svid, s.bundle, s.revs = svid, bundle, *revs
	return nil
}

// marshalState encodes StateFile's content; nil parts are left out.
func marshalState(svid *agentSVID, bundle *spiffebundle.Bundle, fed map[spiffeid.TrustDomain]*spiffebundle.Bundle, revs []savedRevocation) ([]byte, error) {
	j := stateJSON{Version: stateVersion}
	if svid != nil {
		der, err := x509.MarshalPKCS8PrivateKey(svid.key)
		if err != nil {
			return nil, fmt.Errorf("save the agent's state: %w", err)
		}
		j.Key, j.SVID = der, svid.chain
	}
	if bundle != nil {
		raw, err := bundle.Marshal()
		if err != nil {
			return nil, fmt.Errorf("save the agent's state: %w", err)
		}
		j.Bundle = raw
	}
	for td, b := range fed {
		raw, err := b.Marshal()
		if err != nil {
			return nil, fmt.Errorf("save the agent's state: federated bundle of %s: %w", td.Name(), err)
		}
		if j.Federated == nil {
			j.Federated = make(map[string]json.RawMessage, len(fed))
		}
		j.Federated[td.Name()] = raw
	}
	j.Revocations = revs
	data, err := json.Marshal(j)
	if err != nil {
		return nil, fmt.Errorf("save the agent's state: %w", err)
	}
	return data, nil
}

// saveFederated replaces the saved foreign bundles with fed, keeping the
// rest of the state, unless they are the same. It reports whether it
// wrote.
func (s *stateStore) saveFederated(fed map[spiffeid.TrustDomain]*spiffebundle.Bundle) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sameBundles(s.federated, fed) {
		return false, nil
	}
	data, err := marshalState(s.svid, s.bundle, fed, s.revs)
	if err != nil {
		return false, err
	}
	if err := s.write(data); err != nil {
		return false, err
	}
	s.federated = fed
	return true, nil
}

// sameBundles reports whether a and b hold equal bundles of the same
// trust domains.
func sameBundles(a, b map[spiffeid.TrustDomain]*spiffebundle.Bundle) bool {
	if len(a) != len(b) {
		return false
	}
	for td, x := range a {
		if y := b[td]; y == nil || !x.Equal(y) {
			return false
		}
	}
	return true
}

func (s *stateStore) saveSVID(svid *agentSVID) error          { return s.save(svid, nil) }
func (s *stateStore) saveBundle(b *spiffebundle.Bundle) error { return s.save(nil, b) }

// saveRevocations replaces the saved revocations, keeping the rest.
func (s *stateStore) saveRevocations(rs []revocation.Revocation) error {
	saved := make([]savedRevocation, len(rs))
	for i, r := range rs {
		saved[i] = savedRevocation{JTI: r.JTI, ClientID: r.ClientID, RevokedAt: r.UnixRevokedAt(), ExpiresAt: r.UnixExpiresAt()}
	}
	return s.saveAll(nil, nil, &saved)
}

// errCrashed stops a write in tests.
var errCrashed = errors.New("agent: write stopped (test crash)")

func (s *stateStore) step(k writeStep) error {
	if s.afterStep == nil {
		return nil
	}
	return s.afterStep(k)
}

// write replaces StateFile with data: temporary file, fsync, rename,
// fsync of the directory; then it removes the files of the previous
// layout. A failure before the rename leaves StateFile as it was.
func (s *stateStore) write(data []byte) (err error) {
	path := s.dir.Join(StateFile)
	dirPath := filepath.Dir(path)
	fail := func(err error) error { return fmt.Errorf("write %s: %w", path, err) }
	tmp, err := os.CreateTemp(dirPath, stateTempPrefix+"*")
	if err != nil {
		return fail(err)
	}
	tmpName := tmp.Name()
	crashed := false
	defer func() {
		if err != nil && !crashed {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	stop := func(k writeStep) error {
		if err := s.step(k); err != nil {
			crashed = true
			return err
		}
		return nil
	}
	if err := tmp.Chmod(0o600); err != nil {
		return fail(err)
	}
	if err := stop(stepCreateTemp); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return fail(err)
	}
	if err := stop(stepWriteTemp); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := stop(stepSyncTemp); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := stop(stepCloseTemp); err != nil {
		return err
	}
	if err := os.Rename(tmpName, path); err != nil {
		return fail(err)
	}
	if err := stop(stepRename); err != nil {
		return err
	}
	if err := datadir.SyncDir(dirPath); err != nil {
		return fail(err)
	}
	if err := stop(stepSyncDir); err != nil {
		return err
	}
	removed := false
	for _, name := range []string{legacyKeyFile, legacySVIDFile, legacyBundleFile} {
		if rerr := os.Remove(s.dir.Join(name)); rerr == nil {
			removed = true
		} else if !errors.Is(rerr, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", s.dir.Join(name), rerr)
		}
	}
	if err := stop(stepRemoveLegacy); err != nil {
		return err
	}
	if removed {
		if err := datadir.SyncDir(dirPath); err != nil {
			return fail(err)
		}
	}
	return stop(stepSyncDirAgain)
}

// removeLegacy removes the files of the earlier layout, if any.
func (s *stateStore) removeLegacy() {
	for _, name := range []string{legacyKeyFile, legacySVIDFile, legacyBundleFile} {
		os.Remove(s.dir.Join(name))
	}
}

// removeTemps removes temporary files a crash left behind.
func (s *stateStore) removeTemps() {
	entries, err := os.ReadDir(s.dir.Path())
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), stateTempPrefix) {
			os.Remove(s.dir.Join(e.Name()))
		}
	}
}

// SavedSVID returns the agent SVID chain saved in dataDir, leaf first,
// without checking it. It fails with an error wrapping fs.ErrNotExist if
// there is none.
func SavedSVID(dataDir string) ([]*x509.Certificate, error) {
	var ders [][]byte
	path := filepath.Join(dataDir, StateFile)
	data, err := readOptional(path)
	switch {
	case err != nil:
		return nil, err
	case data != nil:
		var j stateJSON
		if err := json.Unmarshal(data, &j); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		ders = j.SVID
	default:
		path = filepath.Join(dataDir, legacySVIDFile)
		if data, err = readOptional(path); err != nil {
			return nil, err
		}
		if data != nil {
			if ders, err = decodeCerts(data); err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
		}
	}
	if len(ders) == 0 {
		return nil, fmt.Errorf("no agent SVID in %s: %w", dataDir, fs.ErrNotExist)
	}
	certs := make([]*x509.Certificate, len(ders))
	for i, der := range ders {
		if certs[i], err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("%s: certificate %d: %w", path, i+1, err)
		}
	}
	return certs, nil
}
