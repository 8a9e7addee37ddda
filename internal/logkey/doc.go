// Package logkey holds the attribute keys of Writ's log records, one set
// for the server, the agent and the Workload API, so that a record about
// the same thing carries the same key wherever it is written:
//
//	log.Warn("cannot sign X.509-SVID", logkey.SPIFFEID, id.String(), logkey.EntryID, e.ID, logkey.Error, err)
//
// Records about a request carry the identity it concerns: the SPIFFE ID
// of the calling agent or of the workload, and the entry ID. No key here
// may hold a secret: never log keys, join tokens, full JWTs, CSRs or
// selectors under any key.
package logkey
