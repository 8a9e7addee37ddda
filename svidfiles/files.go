package svidfiles

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
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
// in dir, fsync, rename, fsync of dir), skipping those whose content and
// mode are unchanged. It reports whether any file changed.
func writeFiles(dir string, files []file) (bool, error) {
	changed := false
	for _, f := range files {
		path := filepath.Join(dir, f.name)
		if old, err := os.ReadFile(path); err == nil && slices.Equal(old, f.data) {
			if fi, err := os.Stat(path); err == nil && fi.Mode().Perm() == f.mode {
				continue
			}
		}
		if err := writeAtomic(path, f.data, f.mode); err != nil {
			return changed, err
		}
		changed = true
	}
	return changed, nil
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
