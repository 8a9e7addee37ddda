package certfile

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// checkEvery bounds how often the files are looked at.
var checkEvery = time.Second

// Reloader holds the certificate of a certificate file and a key file.
type Reloader struct {
	certPath, keyPath string
	log               *slog.Logger

	mu        sync.Mutex
	cert      *tls.Certificate
	stamp     string // size and modification time of both files
	checkedAt time.Time
}

// New loads the pair; it fails if they do not load now.
func New(certPath, keyPath string, log *slog.Logger) (*Reloader, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{certPath: certPath, keyPath: keyPath, log: log}
	stamp, err := r.stampNow()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("load %s and %s: %w", certPath, keyPath, err)
	}
	r.cert, r.stamp, r.checkedAt = &cert, stamp, time.Now()
	return r, nil
}

func (r *Reloader) stampNow() (string, error) {
	var stamp string
	for _, p := range []string{r.certPath, r.keyPath} {
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		stamp += fmt.Sprintf("%d:%d;", fi.Size(), fi.ModTime().UnixNano())
	}
	return stamp, nil
}

// GetCertificate returns the current certificate, reloading the files
// first if they changed; if they no longer load (a half-written
// replacement), the last good pair is served and the failure logged.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checkedAt) < checkEvery {
		return r.cert, nil
	}
	r.checkedAt = time.Now()
	stamp, err := r.stampNow()
	if err != nil || stamp == r.stamp {
		return r.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(r.certPath, r.keyPath)
	if err != nil {
		r.log.Warn("certificate files changed but do not load; serving the previous certificate", "cert_file", r.certPath, "error", err.Error())
		return r.cert, nil
	}
	r.cert, r.stamp = &cert, stamp
	r.log.Info("certificate reloaded", "cert_file", r.certPath)
	return r.cert, nil
}
