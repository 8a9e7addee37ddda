package main

import (
	"fmt"
	"slices"
	"time"
)

// Units of figures.
const (
	unitOpsPerSec     = "ops/s"
	unitCallsPerSec   = "calls/s"
	unitEntriesPerSec = "entries/s"
	unitSVIDsPerSec   = "SVIDs/s"
	unitMS            = "ms"
	unitUS            = "µs"
	unitMiB           = "MiB"
	unitKiB           = "KiB"
	unitRatio         = "ratio"
)

// ReferenceSource labels every reference value: they were measured
// elsewhere (they come from issue 6), not by this run.
const ReferenceSource = "reference (SPIRE 1.16 / stub on this machine class, from the issue)"

// Results is what results.json holds.
type Results struct {
	Tool            string    `json:"tool"`
	Mode            string    `json:"mode"` // "full" or "smoke"
	Started         time.Time `json:"started"`
	DurationSeconds float64   `json:"duration_seconds"`
	Machine         Machine   `json:"machine"`
	WritVersion     string    `json:"writ_version,omitempty"` // git commit, "-dirty" if modified
	ReferenceSource string    `json:"reference_source"`
	Figures         []*Figure `json:"figures"`
}

// Figure is one measured figure. Value is nil when it could not be
// measured; Error then says why. A value is never estimated.
type Figure struct {
	Name        string         `json:"name"`
	Value       *float64       `json:"value"`
	Unit        string         `json:"unit"`
	Samples     int            `json:"samples,omitempty"`
	Description string         `json:"description"`
	Params      map[string]int `json:"params,omitempty"`
	Reference   *Reference     `json:"reference,omitempty"`
	Target      *Target        `json:"target,omitempty"`
	TargetMet   *bool          `json:"target_met,omitempty"`
	Error       string         `json:"error,omitempty"`
}

// Reference is a value measured elsewhere, shown beside a figure.
type Reference struct {
	Value float64 `json:"value"`
	Of    string  `json:"of"` // what was measured: "SPIRE 1.16", "stub"
	Note  string  `json:"note,omitempty"`
}

// Target is the value a figure should reach: at least Min, or below Max.
type Target struct {
	Min  *float64 `json:"min,omitempty"`
	Max  *float64 `json:"max,omitempty"`
	Text string   `json:"text"`
}

func (t *Target) met(v float64) bool {
	if t.Min != nil && v < *t.Min {
		return false
	}
	if t.Max != nil && v >= *t.Max {
		return false
	}
	return true
}

func ptr[T any](v T) *T { return &v }

// atLeast and below are targets.
func atLeast(v float64, text string) *Target { return &Target{Min: ptr(v), Text: text} }
func below(v float64, text string) *Target   { return &Target{Max: ptr(v), Text: text} }

func spire(v float64) *Reference { return &Reference{Value: v, Of: "SPIRE 1.16"} }
func stubRef(v float64) *Reference {
	return &Reference{Value: v, Of: "stub", Note: "stub Workload API, fixed response, no attestation"}
}

// Targets from the issue.
var (
	targetStubRatio   = atLeast(0.8, ">= 80 % of the stub's throughput")
	targetPropagation = below(100, "< 100 ms at p99")
)

func halfOf(ref float64) *Target {
	return &Target{Max: ptr(ref / 2), Text: fmt.Sprintf("<= half SPIRE's %.0f MiB", ref)}
}

// Names of figures that other code refers to.
const (
	figSign            = "limit.ecdsa_p256_sign"
	figVerify          = "limit.ecdsa_p256_verify"
	figCreateCert      = "limit.x509_create_certificate"
	figSignSVID        = "ca.sign_x509svid"
	figSignSVIDRatio   = "ca.sign_x509svid.ratio_to_create_certificate"
	figRegAdmin        = "registration.admin_api"
	figRegCLI          = "registration.cli_file"
	figAgentSyncRate   = "agent.sync_sign_rate"
	figAgentRSSStreams = "memory.agent.rss.streams"
	figAgentPerStream  = "memory.agent.per_stream"
	figBacklogP50      = "backlog.new_entry.p50"
	figBacklogMax      = "backlog.new_entry.max"
	figBacklogRSS      = "backlog.memory.agent.rss"
	figBacklogAnon     = "backlog.memory.agent.rss_anon"
)

// Workload API scenarios, measured on the stub and on Writ.
const (
	scX509C1   = "fetch_x509svid.c1"
	scX509C16  = "fetch_x509svid.c16"
	scX509S101 = "fetch_x509svids.s101"
	// scX509S101E10k and scX509S101E10kC16: the same 101 SVIDs, from an
	// agent that also holds EntriesLarge entries for other workloads, 1
	// and 16 callers.
	scX509S101E10k    = "fetch_x509svids.s101.e10k"
	scX509S101E10kC16 = "fetch_x509svids.s101.e10k.c16"
	scJWT             = "fetch_jwtsvid"        // stub: fixed token
	scJWTFirst        = "fetch_jwtsvid.first"  // Writ: new audience each call
	scJWTCached       = "fetch_jwtsvid.cached" // Writ: same audience
	// scJWTFirstC16: Writ, a new audience each call from 16 callers: the
	// JWT-SVID signing ceiling through the agent.
	scJWTFirstC16 = "fetch_jwtsvid.first.c16"
	// scJWTC16: the stub, a fixed token to 16 callers: the protocol's
	// ceiling for the call that scJWTFirstC16 measures on Writ.
	scJWTC16 = "fetch_jwtsvid.c16"
	// relayPrefix names the figures of the relay stub (relay.go), which
	// measures the scenarios scJWTFirst and scJWTFirstC16 with the least
	// work they take on this machine.
	relayPrefix = "relay"
	scValidate  = "validate_jwtsvid"
)

// stubScenario is the stub scenario a Writ scenario is compared with.
func stubScenario(writ string) string {
	switch writ {
	case scJWTFirst, scJWTCached:
		return scJWT
	case scJWTFirstC16:
		return scJWTC16
	}
	return writ
}

// Memory checkpoints.
const (
	memIdle = "idle"
	memE1k  = "e1k"
	memE10k = "e10k"
)

// Propagation checkpoints.
const (
	propE0   = "e0"
	propE10k = "e10k"
)

// catalogue returns every figure a run must produce, in report order,
// with descriptions for the counts of cfg.
func catalogue(cfg Config) []*Figure {
	var fs []*Figure
	add := func(name, unit, desc string, ref *Reference, tgt *Target) {
		fs = append(fs, &Figure{Name: name, Unit: unit, Description: desc, Reference: ref, Target: tgt})
	}
	add(figSign, unitOpsPerSec, "ECDSA P-256 signatures of a SHA-256 digest per second, one goroutine (crypto/ecdsa.SignASN1)", nil, nil)
	add(figVerify, unitOpsPerSec, "ECDSA P-256 signature verifications per second, one goroutine (crypto/ecdsa.VerifyASN1)", nil, nil)
	add(figCreateCert, unitOpsPerSec, "x509.CreateCertificate of an X.509-SVID-shaped leaf, P-256 issuer, per second, one goroutine", nil, nil)
	add(figSignSVID, unitSVIDsPerSec, "x509ca.SignX509SVID per second, same issuer and leaf key, one goroutine (in process)", nil, nil)
	add(figSignSVIDRatio, unitRatio, "ca.sign_x509svid / limit.x509_create_certificate: the cost of Writ's checks and template", nil, nil)

	type wl struct {
		sc, what           string
		stubP50, writP50   *Reference
		stubRate, writRate *Reference
	}
	stubScs := []wl{
		{sc: scX509C1, what: "FetchX509SVID one-shot calls (go-spiffe Client.FetchX509SVID), 1 caller, 1-SVID response", stubRate: stubRef(5800)},
		{sc: scX509C16, what: "FetchX509SVID one-shot calls, 16 concurrent callers (one connection each), 1-SVID response", stubRate: stubRef(17500)},
		{sc: scX509S101, what: "FetchX509SVID one-shot calls parsing all SVIDs (Client.FetchX509SVIDs), 1 caller, 101-SVID response"},
		{sc: scJWT, what: "FetchJWTSVID (Client.FetchJWTSVID), 1 caller, fixed token"},
		{sc: scValidate, what: "ValidateJWTSVID (Client.ValidateJWTSVID), 1 caller, fixed answer"},
		{sc: scX509S101E10k, what: "FetchX509SVID one-shot calls parsing all SVIDs, 1 caller, 101-SVID response (measured beside the agent holding other entries)"},
		{sc: scX509S101E10kC16, what: "FetchX509SVID one-shot calls parsing all SVIDs, 16 callers, 101-SVID response (measured beside the agent holding other entries)"},
	}
	writScs := []wl{
		{sc: scX509C1, what: "FetchX509SVID one-shot calls (go-spiffe Client.FetchX509SVID) on the agent, 1 caller entitled to 1 SVID", writP50: spire(0.5), writRate: spire(1800)},
		{sc: scX509C16, what: "FetchX509SVID one-shot calls on the agent, 16 concurrent callers (one connection each)", writRate: spire(4600)},
		{sc: scX509S101, what: "FetchX509SVID one-shot calls parsing all SVIDs (Client.FetchX509SVIDs), 1 caller entitled to 101 SVIDs (1 + 100)"},
		{sc: scJWTFirst, what: "FetchJWTSVID with a new audience each call (the agent gets each token signed by the server)", writP50: spire(1.25)},
		{sc: scJWTCached, what: "FetchJWTSVID with the same audience (served from the agent's cache)", writP50: spire(0.45)},
		{sc: scValidate, what: "ValidateJWTSVID of a token from the agent, 1 caller", writP50: spire(0.57)},
		{sc: scX509S101E10k, what: fmt.Sprintf("FetchX509SVID one-shot calls parsing all SVIDs, 1 caller entitled to 101 SVIDs, on an agent that also holds %s entries for other workloads", count(cfg.EntriesLarge))},
		{sc: scX509S101E10kC16, what: fmt.Sprintf("FetchX509SVID one-shot calls parsing all SVIDs, 16 callers entitled to 101 SVIDs, on an agent that also holds %s entries for other workloads", count(cfg.EntriesLarge))},
	}
	for _, s := range stubScs {
		add("stub."+s.sc+".p50", unitMS, "stub: "+s.what+": median latency", s.stubP50, nil)
		add("stub."+s.sc+".p99", unitMS, "stub: "+s.what+": 99th percentile latency", nil, nil)
		add("stub."+s.sc+".rate", unitCallsPerSec, "stub: "+s.what+": calls per second", s.stubRate, nil)
	}
	for _, s := range writScs {
		add("writ."+s.sc+".p50", unitMS, s.what+": median latency", s.writP50, nil)
		add("writ."+s.sc+".p99", unitMS, s.what+": 99th percentile latency", nil, nil)
		add("writ."+s.sc+".rate", unitCallsPerSec, s.what+": calls per second", s.writRate, nil)
		desc, tgt := fmt.Sprintf("writ.%s.rate / stub.%s.rate", s.sc, stubScenario(s.sc)), targetStubRatio
		if s.sc == scJWTFirst {
			// The stub has no server to wait for: no target.
			desc += " (no target: each first fetch waits for the server to sign a token, the stub's never does)"
			tgt = nil
		}
		add("writ."+s.sc+".ratio_to_stub", unitRatio, desc, nil, tgt)
	}
	first16 := "FetchJWTSVID with a new audience each call, 16 concurrent callers (one connection each): the JWT-SVID signing ceiling through the agent"
	add("writ."+scJWTFirstC16+".p50", unitMS, first16+": median latency", nil, nil)
	add("writ."+scJWTFirstC16+".p99", unitMS, first16+": 99th percentile latency", nil, nil)
	add("writ."+scJWTFirstC16+".rate", unitCallsPerSec, first16+": calls per second", nil, atLeast(10000, ">= 10,000/s"))

	for _, p := range []struct {
		key  string
		what string
	}{
		{propE0, "with no other entries registered"},
		{propE10k, fmt.Sprintf("with %s other entries registered for the agent", count(cfg.EntriesLarge))},
	} {
		what := "propagation from the admin API's BatchCreateEntry returning to a watching workload receiving the new SVID (0 if it arrived first), " + p.what
		add("propagation."+p.key+".p50", unitMS, what+": median", spire(4400), nil)
		add("propagation."+p.key+".p99", unitMS, what+": 99th percentile", nil, targetPropagation)
		add("propagation."+p.key+".max", unitMS, what+": maximum", &Reference{Value: 9500, Of: "SPIRE 1.16", Note: "up to 9.5 s"}, nil)
		sent := "propagation from the admin API's BatchCreateEntry being sent (the call included) to the new SVID arriving, " + p.what
		add("propagation."+p.key+".from_send.p50", unitMS, sent+": median", nil, nil)
		add("propagation."+p.key+".from_send.p99", unitMS, sent+": 99th percentile", nil, nil)
	}

	for _, proc := range []string{"server", "agent"} {
		for _, m := range []struct {
			key, what string
		}{
			{memIdle, "idle (agent attested, no entries)"},
			{memE1k, fmt.Sprintf("with %s entries for the agent, all signed", count(cfg.EntriesSmall))},
			{memE10k, fmt.Sprintf("with %s entries for the agent, all signed", count(cfg.EntriesLarge))},
		} {
			var ref *Reference
			var tgt *Target
			switch {
			case proc == "server" && m.key == memIdle:
				ref, tgt = spire(147), halfOf(147)
			case proc == "server" && m.key == memE10k:
				ref, tgt = spire(187), halfOf(187)
			case proc == "agent" && m.key == memIdle:
				ref, tgt = spire(60), halfOf(60)
			case proc == "agent" && m.key == memE10k:
				ref, tgt = spire(100), halfOf(100)
			}
			add("memory."+proc+".rss."+m.key, unitMiB, proc+" RSS (VmRSS) "+m.what, ref, tgt)
			add("memory."+proc+".rss_anon."+m.key, unitMiB, proc+" anonymous RSS (RssAnon) "+m.what, nil, nil)
		}
	}
	add(figAgentRSSStreams, unitMiB, fmt.Sprintf("agent RSS with %s open FetchX509SVID streams (from a child process, %d per connection) and %s entries", count(cfg.Streams), streamsPerConn, count(cfg.EntriesLarge)), nil, nil)
	add(figAgentPerStream, unitKiB, fmt.Sprintf("agent RSS increase per open Workload API stream, over %s streams", count(cfg.Streams)), nil, nil)

	add(figRegAdmin, unitEntriesPerSec, fmt.Sprintf("entries created per second through the admin API's BatchCreateEntry (batches of %d, %s entries, server pushing to an attested agent)", cfg.Batch, count(cfg.EntriesLarge)), nil, nil)
	add(figRegCLI, unitEntriesPerSec, fmt.Sprintf("entries created per second by `writ entry create --file` (%s entries, CLI and a fresh server together)", count(cfg.CLIEntries)), nil, nil)
	add(figAgentSyncRate, unitSVIDsPerSec, fmt.Sprintf("X.509-SVIDs per second from registering %s entries to the agent holding all their SVIDs (server signing, agent keys and CSRs)", count(cfg.EntriesLarge-cfg.EntriesSmall)), nil, nil)
	bl := fmt.Sprintf("with %s entries for the agent, more than its SVID cache keeps (default --svid-cache-size)", count(cfg.BacklogEntries))
	add(figBacklogP50, unitMS, "time from the admin API's BatchCreateEntry returning to a watching go-spiffe Workload API client receiving the new entry's SVID, "+bl+": median", nil, nil)
	add(figBacklogMax, unitMS, "the same: maximum", nil, below(1000, "< 1 s"))
	add(figBacklogRSS, unitMiB, "agent RSS (VmRSS) "+bl+", after the new entries", nil, below(200, "< 200 MiB"))
	add(figBacklogAnon, unitMiB, "agent anonymous RSS (RssAnon) "+bl+", after the new entries", nil, nil)
	templateFigures(cfg, add)
	fs = append(fs, lifecycleFigures(cfg)...)
	fs = append(fs, pgCatalogue(cfg)...)
	for _, sc := range []string{scJWTCached, scJWTFirst, scJWTFirstC16} {
		add("writ."+sc+".cpu_per_call", unitUS, "CPU time (user and system) of the server and agent processes per call of writ."+sc+", warm-ups included: what a call costs the machine, whatever else runs on it", nil, nil)
	}
	jwksFigures(add)
	fs = append(fs, oauthFigures(cfg)...)
	// The stub's ceiling for the call of writ.fetch_jwtsvid.first.c16,
	// and Writ's share of it.
	stub16 := "stub: FetchJWTSVID (Client.FetchJWTSVID), 16 concurrent callers (one connection each), fixed token"
	add("stub."+scJWTC16+".p50", unitMS, stub16+": median latency", nil, nil)
	add("stub."+scJWTC16+".p99", unitMS, stub16+": 99th percentile latency", nil, nil)
	add("stub."+scJWTC16+".rate", unitCallsPerSec, stub16+": calls per second", nil, nil)
	add("writ."+scJWTFirstC16+".ratio_to_stub", unitRatio, fmt.Sprintf("writ.%s.rate / stub.%s.rate: the share of the protocol's ceiling on this machine (no target: each call waits for the server to sign a token, the stub's never does)", scJWTFirstC16, scJWTC16), nil, nil)
	for _, r := range []struct{ sc, what string }{
		{scJWTFirst, "1 caller"},
		{scJWTFirstC16, "16 concurrent callers (one connection each)"},
	} {
		what := "relay stub: FetchJWTSVID with a new audience each call, " + r.what + ", forwarded over mutual TLS to a signer process that signs each token: two hops and one ES256 signature, nothing else"
		name := relayPrefix + "." + r.sc
		add(name+".p50", unitMS, what+": median latency", nil, nil)
		add(name+".p99", unitMS, what+": 99th percentile latency", nil, nil)
		add(name+".rate", unitCallsPerSec, what+": calls per second", nil, nil)
		add(name+".cpu_per_call", unitUS, "CPU time (user and system) of the relay and signer processes per call of "+name+", warm-ups included", nil, nil)
		add("writ."+r.sc+".ratio_to_relay", unitRatio, fmt.Sprintf("writ.%s.rate / %s.rate: Writ's share of the relay stub's rate, the least work this call takes on this machine", r.sc, name), nil, nil)
	}
	jwtSignFigures(add)
	jwtValidateFigures(add)
	return fs
}

// count formats n with thousands separators.
func count(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// find returns the figure called name, or nil.
func (r *Results) find(name string) *Figure {
	i := slices.IndexFunc(r.Figures, func(f *Figure) bool { return f.Name == name })
	if i < 0 {
		return nil
	}
	return r.Figures[i]
}

// value returns the value of the figure called name, if it has one.
func (r *Results) value(name string) (float64, bool) {
	if f := r.find(name); f != nil && f.Value != nil {
		return *f.Value, true
	}
	return 0, false
}

// missing returns the figures that have no value.
func (r *Results) missing() []*Figure {
	var out []*Figure
	for _, f := range r.Figures {
		if f.Value == nil {
			out = append(out, f)
		}
	}
	return out
}
