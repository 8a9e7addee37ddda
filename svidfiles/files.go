package svidfiles

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"writ.dev/writ/internal/datadir"
)

// file is one file to write.
type file struct {
	name string
	data []byte
	mode fs.FileMode
}

// x509Files renders an SVID and the bundles as the certificate, key and
// bundle files.
func (cfg *Config) x509Files(svid *x509svid.SVID, bundles *x509bundle.Set) ([]file, error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("encode the private key: %w", err)
	}
	chain := svid.Certificates
	var bundleCerts []*x509.Certificate
	if cfg.AddIntermediatesToBundle {
		bundleCerts = append(bundleCerts, chain[1:]...)
		chain = chain[:1]
	}
	td := svid.ID.TrustDomain()
	if b, ok := bundles.Get(td); ok {
		bundleCerts = append(bundleCerts, b.X509Authorities()...)
	}
	if cfg.IncludeFederatedDomains {
		others := bundles.Bundles() // sorted by trust domain
		for _, b := range others {
			if b.TrustDomain() != td {
				bundleCerts = append(bundleCerts, b.X509Authorities()...)
			}
		}
	}
	if len(bundleCerts) == 0 {
		return nil, fmt.Errorf("no X.509 authorities for trust domain %q", td.Name())
	}
	files := []file{
		{name: cfg.SVIDBundleFileName, data: cfg.encodeCerts(bundleCerts), mode: cfg.CertFileMode},
		{name: cfg.SVIDKeyFileName, data: cfg.encodeKey(keyDER), mode: cfg.KeyFileMode},
		{name: cfg.SVIDFileName, data: cfg.encodeCerts(chain), mode: cfg.CertFileMode},
	}
	// Each federated trust domain in a file of its own too, as `writ svid
	// fetch --write` names them.
	for _, b := range bundles.Bundles() {
		if b.TrustDomain() != td {
			files = append(files, file{name: FederatedBundleFileName(b.TrustDomain().Name(), cfg.Format), data: cfg.encodeCerts(b.X509Authorities()), mode: cfg.CertFileMode})
		}
	}
	return files, nil
}

// WriteX509Files writes svid's certificate, key and bundle files and the
// federated bundle files into cfg.CertDir, as one set that readers see
// change at once (see writeSet), and removes the federated bundle files
// of trust domains no longer in bundles. It reports whether the files
// readers see changed: an error with true came after the switch to the
// new set, in cleaning up, and readers have the new files.
func (cfg *Config) WriteX509Files(svid *x509svid.SVID, bundles *x509bundle.Set) (bool, error) {
	files, err := cfg.x509Files(svid, bundles)
	if err != nil {
		return false, err
	}
	n := cfg.setNames()
	changed, err := writeSet(cfg.CertDir, n, files, cfg.fault)
	if err != nil {
		return changed, err
	}
	removed, err := removeStaleFederated(cfg.CertDir, n, cfg.keepNames(files), cfg.Log)
	return changed || removed, err
}

// setNames are the names of cfg's set of X.509 files in CertDir.
func (cfg *Config) setNames() setNames {
	return namesFor(cfg.SVIDFileName, cfg.SVIDKeyFileName, cfg.SVIDBundleFileName)
}

// keepNames are the names of files, and of every file cfg names: none of
// them is ever removed as stale.
func (cfg *Config) keepNames(files []file) map[string]bool {
	keep := map[string]bool{cfg.SVIDFileName: true, cfg.SVIDKeyFileName: true, cfg.SVIDBundleFileName: true, cfg.JWTBundleFileName: true}
	for _, j := range cfg.JWTSVIDs {
		keep[j.FileName] = true
	}
	for _, f := range files {
		keep[f.name] = true
	}
	return keep
}

// isFederatedBundleFileName reports whether name is a federated bundle
// file's name as FederatedBundleFileName makes it, in either format.
func isFederatedBundleFileName(name string) bool {
	rest, ok := strings.CutPrefix(name, "federated_bundle.")
	if !ok {
		return false
	}
	td, ok := strings.CutSuffix(rest, "."+string(PEM))
	if !ok {
		td, ok = strings.CutSuffix(rest, "."+string(DER))
	}
	if !ok {
		return false
	}
	parsed, err := spiffeid.TrustDomainFromString(td)
	return err == nil && parsed.Name() == td
}

// removeStaleFederated removes from dir the federated bundle files (by
// name, regular files or symbolic links, never directories) not in
// keep: a trust domain that is no longer federated must not stay
// trusted through a file left behind. It leaves the files of other
// users (logged to log, if not nil) and the links into another set's
// directory (another writer's, with other file names). It reports
// whether it removed any.
func removeStaleFederated(dir string, n setNames, keep map[string]bool, log *slog.Logger) (bool, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, fmt.Errorf("list %s: %w", dir, err)
	}
	removed := false
	for _, e := range entries {
		name := e.Name()
		if keep[name] || !isFederatedBundleFileName(name) || !(e.Type().IsRegular() || e.Type()&fs.ModeSymlink != 0) {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // gone already
		}
		if !ownedByMe(fi) {
			if log != nil {
				log.Warn("leaving a stale federated bundle file of another user", "file", filepath.Join(dir, name))
			}
			continue
		}
		if e.Type()&fs.ModeSymlink != 0 {
			if t, err := os.Readlink(filepath.Join(dir, name)); err != nil || (strings.HasPrefix(t, setPrefix) && t != n.current+"/"+name) {
				continue
			}
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, fmt.Errorf("remove the stale %s: %w", name, err)
		}
		removed = true
	}
	if removed {
		return true, datadir.SyncDir(dir)
	}
	return false, nil
}

// FederatedBundleFileName is the file of a federated trust domain's X.509
// authorities: federated_bundle.<trust domain>.pem (or .der).
func FederatedBundleFileName(td string, f Format) string {
	return "federated_bundle." + td + "." + string(f)
}

func (cfg *Config) encodeCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		if cfg.Format == DER {
			out = append(out, c.Raw...)
		} else {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
	}
	return out
}

func (cfg *Config) encodeKey(der []byte) []byte {
	if cfg.Format == DER {
		return der
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// writeFiles writes files into dir, each atomically (a temporary file
// in dir, fsync, rename, fsync of dir: a link at a file's path is
// replaced, never followed), skipping those whose content and mode are
// unchanged. It reports whether any file changed.
func writeFiles(dir string, files []file) (bool, error) {
	changed := false
	for _, f := range files {
		path := filepath.Join(dir, f.name)
		if sameFile(path, f) {
			continue
		}
		if err := writeAtomic(path, f.data, f.mode); err != nil {
			return changed, err
		}
		changed = true
	}
	return changed, nil
}

// sameFile reports whether path is a regular file, not a link, with f's
// content and mode.
func sameFile(path string, f file) bool {
	fd, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return false
	}
	defer fd.Close()
	fi, err := fd.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != f.mode || fi.Size() != int64(len(f.data)) {
		return false
	}
	old, err := io.ReadAll(fd)
	return err == nil && slices.Equal(old, f.data)
}

// writeAtomic replaces path with data, mode perm, so that a reader sees
// the old file or the new one, and a crash leaves one of them.
func writeAtomic(path string, data []byte, perm fs.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // a no-op once renamed
	// The temporary file is 0600 until written: the key is never
	// readable by others, whatever the umask.
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmpName, path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return datadir.SyncDir(dir)
}
