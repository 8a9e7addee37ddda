package unixattest

// NewWithoutPidfd returns an Attestor that behaves as on a kernel without
// pidfd_open or SO_PEERPIDFD: it pins processes by /proc directory only.
func NewWithoutPidfd(cfg Config) *Attestor {
	a := New(cfg)
	a.noPidfd.Store(true)
	return a
}

// HashCount returns how many executables a has hashed.
func HashCount(a *Attestor) int64 { return a.hashCount.Load() }

// CachedHashes returns how many hashes a's cache holds.
func CachedHashes(a *Attestor) int { return a.hashes.len() }

// ComputeCount returns how many times a has computed a process's selectors.
func ComputeCount(a *Attestor) int64 { return a.computeCount.Load() }

// ForgetIdentities empties a's cache of selectors by process identity, so
// that the next attestation of the same process computes them again.
func ForgetIdentities(a *Attestor) {
	a.identities.mu.Lock()
	defer a.identities.mu.Unlock()
	clear(a.identities.m)
}
