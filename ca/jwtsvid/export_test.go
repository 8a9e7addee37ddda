package jwtsvid

// VerifierLen returns how many tokens v remembers.
func VerifierLen(v *Verifier) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.seen)
}
