// Package entry defines registration entries and selectors, the strict
// parsers for every identifier an operator or agent can send (SPIFFE IDs,
// selectors, DNS names, TTLs), and selector matching.
//
// The package is pure: it does no I/O, reads no clock and logs nothing.
// The CLI, the CA server and the agent all use these parsers, so a value
// accepted in one place is accepted everywhere and a value refused in one
// place is refused everywhere. Parsers never repair input: a value that is
// not already in canonical form is an error.
//
//	sel, err := entry.ParseSelector("unix:uid:1000")
//	if err != nil { ... }
//	ok := entry.Match(e.Selectors, workloadSelectors)
package entry
