package jwtsvid

// VerifierLen returns how many tokens v remembers.
func VerifierLen(v *Verifier) int { return v.Len() }
