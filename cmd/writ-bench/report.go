package main

import (
	"fmt"
	"math"
	"strings"
)

// Chart is an SVG file the report refers to.
type Chart struct {
	File    string
	Title   string
	Caption string
	chart   interface{ SVG() string }
}

// SVG renders the chart.
func (c Chart) SVG() string { return c.chart.SVG() }

// chartFiles are the files buildCharts may write.
var chartFiles = []string{"latency-fetch-x509svid.svg", "latency-fetch-x509svids-101.svg", "latency-jwt.svg", "propagation-cdf.svg", "memory.svg", "throughput.svg"}

// cdfPoints is the number of points a CDF is drawn with.
const cdfPoints = 200

// buildCharts makes the report's charts from the samples; a chart with no
// data is left out.
func buildCharts(r *Results, dist map[string]Sample, mem []memPoint) []Chart {
	var charts []Chart
	cdf := func(file, title, caption, xLabel string, markers []marker, series ...[2]string) {
		c := cdfChart{Title: title, XLabel: xLabel, LogX: true, Markers: markers}
		for _, s := range series {
			if d := dist[s[0]]; len(d) > 0 {
				c.Series = append(c.Series, cdfSeries{Name: s[1], Points: d.CDF(cdfPoints)})
			}
		}
		if len(c.Series) > 0 {
			charts = append(charts, Chart{File: file, Title: title, Caption: caption, chart: c})
		}
	}
	cdf("latency-fetch-x509svid.svg", "FetchX509SVID latency, 1-SVID response", "Latency of one-shot FetchX509SVID calls through go-spiffe's client, Writ's agent against the stub, both measured by this run.", "latency (ms, log scale)", nil,
		[2]string{"writ." + scX509C1, "Writ, 1 caller"},
		[2]string{"stub." + scX509C1, "stub, 1 caller"},
		[2]string{"writ." + scX509C16, "Writ, 16 callers"},
		[2]string{"stub." + scX509C16, "stub, 16 callers"})
	cdf("latency-fetch-x509svids-101.svg", "FetchX509SVIDs latency, 101 SVIDs", "Latency of one-shot calls returning and parsing 101 X.509-SVIDs, Writ against the stub.", "latency (ms, log scale)", nil,
		[2]string{"writ." + scX509S101, "Writ"},
		[2]string{"stub." + scX509S101, "stub"})
	cdf("latency-jwt.svg", "JWT-SVID latency", "FetchJWTSVID (a new audience each call, then a cached one) and ValidateJWTSVID, Writ against the stub.", "latency (ms, log scale)", nil,
		[2]string{"writ." + scJWTFirst, "Writ fetch, first"},
		[2]string{"writ." + scJWTCached, "Writ fetch, cached"},
		[2]string{"stub." + scJWT, "stub fetch"},
		[2]string{"writ." + scValidate, "Writ validate"},
		[2]string{"stub." + scValidate, "stub validate"})
	cdf("propagation-cdf.svg", "Propagation: entry created to SVID received", "Time from BatchCreateEntry returning to the new SVID arriving on a watching FetchX509SVID stream. Dashed lines: the target, and SPIRE 1.16's median (reference, from the issue).", "propagation (ms, log scale)",
		[]marker{{X: 100, Label: "target p99"}, {X: 4400, Label: "SPIRE p50 (ref.)"}},
		[2]string{"propagation." + propE0, "no other entries"},
		[2]string{"propagation." + propE10k, bulkLabel(r)})

	if len(mem) > 0 {
		var srss, sanon, arss, aanon [][2]float64
		for _, m := range mem {
			x := float64(m.Entries)
			srss = append(srss, [2]float64{x, m.Server.RSS})
			sanon = append(sanon, [2]float64{x, m.Server.Anon})
			arss = append(arss, [2]float64{x, m.Agent.RSS})
			aanon = append(aanon, [2]float64{x, m.Agent.Anon})
		}
		large := float64(mem[len(mem)-1].Entries)
		if large < 10000 {
			large = 10000
		}
		c := lineChart{Title: "Memory against registered entries", XLabel: "entries for the agent", YLabel: "MiB", Series: []lineSeries{
			{Name: "server RSS", Points: srss},
			{Name: "server anon RSS", Points: sanon},
			{Name: "agent RSS", Points: arss},
			{Name: "agent anon RSS", Points: aanon},
			{Name: "SPIRE server (ref.)", Points: [][2]float64{{0, 147}, {10000, 187}}, Dashed: true},
			{Name: "SPIRE agent (ref.)", Points: [][2]float64{{0, 60}, {10000, 100}}, Dashed: true},
		}}
		charts = append(charts, Chart{File: "memory.svg", Title: c.Title, Caption: "RSS and anonymous RSS (/proc/<pid>/status) of the server and agent at rest. Dashed: SPIRE 1.16 at 0 and 10,000 entries (reference, from the issue).", chart: c})
	}

	var bars []bar
	for _, b := range []struct {
		label, name string
		ref         float64
		refLabel    string
	}{
		{"Writ, 1 caller", "writ." + scX509C1 + ".rate", 1800, "SPIRE 1.16, 1 caller (ref.)"},
		{"stub, 1 caller", "stub." + scX509C1 + ".rate", 5800, "stub, 1 caller (ref.)"},
		{"Writ, 16 callers", "writ." + scX509C16 + ".rate", 4600, "SPIRE 1.16, 16 callers (ref.)"},
		{"stub, 16 callers", "stub." + scX509C16 + ".rate", 17500, "stub, 16 callers (ref.)"},
	} {
		if v, ok := r.value(b.name); ok {
			bars = append(bars, bar{Label: b.label, Value: v})
		}
		bars = append(bars, bar{Label: b.refLabel, Value: b.ref, Reference: true})
	}
	if len(bars) > 4 { // some measured values, not only references
		c := barChart{Title: "FetchX509SVID throughput (calls/s)", Bars: bars}
		charts = append(charts, Chart{File: "throughput.svg", Title: c.Title, Caption: "One-shot FetchX509SVID calls per second. Grey: reference values from the issue (SPIRE 1.16 and the stub on this machine class), not measured by this run.", chart: c})
	}
	return charts
}

// rounds returns the number of rounds the Workload API calls were
// measured in.
func rounds(r *Results) int {
	for _, f := range r.Figures {
		if n := f.Params["rounds"]; n > 0 {
			return n
		}
	}
	return 0
}

// bulkLabel names the propagation series measured with the bulk entries.
func bulkLabel(r *Results) string {
	if f := r.find("propagation." + propE10k + ".p50"); f != nil && f.Params["entries"] > 0 {
		return fmt.Sprintf("with %s other entries", count(f.Params["entries"]))
	}
	return "with the bulk entries"
}

// num formats a throughput or count.
func num(v float64) string {
	switch {
	case math.Abs(v) >= 100:
		return count(int(math.Round(v)))
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// msNum formats milliseconds with three significant digits.
func msNum(v float64) string {
	switch {
	case v >= 1000:
		return count(int(math.Round(v)))
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

// formatValue formats v in unit, with the unit.
func formatValue(v float64, unit string) string {
	switch unit {
	case unitMS:
		return msNum(v) + " ms"
	case unitMiB, unitKiB:
		return fmt.Sprintf("%.1f %s", v, unit)
	case unitRatio:
		return fmt.Sprintf("%.3f", v) // 0.797 is not 0.80 against a 0.8 target
	}
	return num(v) + " " + unit
}

// cell is a figure's value for a table, or "n/a".
func cell(r *Results, name string) string {
	f := r.find(name)
	if f == nil || f.Value == nil {
		return "n/a"
	}
	return formatValue(*f.Value, f.Unit)
}

func refCell(f *Figure) string {
	if f == nil || f.Reference == nil {
		return ""
	}
	s := formatValue(f.Reference.Value, f.Unit) + " (" + f.Reference.Of
	if f.Reference.Note != "" && f.Reference.Of != "stub" {
		s += ", " + f.Reference.Note
	}
	return s + ")"
}

func metCell(f *Figure) string {
	switch {
	case f == nil || f.Target == nil:
		return ""
	case f.TargetMet == nil:
		return f.Target.Text + ": n/a"
	case *f.TargetMet:
		return f.Target.Text + ": **met**"
	}
	return f.Target.Text + ": **not met**"
}

// mdWriter writes Markdown.
type mdWriter struct{ b strings.Builder }

func (w *mdWriter) p(format string, args ...any) {
	fmt.Fprintf(&w.b, format, args...)
	w.b.WriteString("\n")
}

func (w *mdWriter) table(header []string, rows [][]string) {
	w.p("| %s |", strings.Join(header, " | "))
	seps := make([]string, len(header))
	for i := range seps {
		seps[i] = "---"
	}
	w.p("| %s |", strings.Join(seps, " | "))
	for _, r := range rows {
		for i := range r {
			r[i] = strings.ReplaceAll(r[i], "|", `\|`)
		}
		w.p("| %s |", strings.Join(r, " | "))
	}
	w.p("")
}

func (w *mdWriter) chart(charts []Chart, file string) {
	for _, c := range charts {
		if c.File == file {
			w.p("![%s](%s)", c.Title, c.File)
			w.p("")
			w.p("*%s*", c.Caption)
			w.p("")
			return
		}
	}
	w.p("*(No chart: its figures were not measured.)*")
	w.p("")
}

// figureRows returns a row per figure: label, value, reference, target.
func figureRows(r *Results, rows [][2]string) [][]string {
	var out [][]string
	for _, lr := range rows {
		f := r.find(lr[1])
		out = append(out, []string{lr[0], cell(r, lr[1]), refCell(f), metCell(f)})
	}
	return out
}

// renderReport returns report.md.
func renderReport(r *Results, charts []Chart) string {
	w := &mdWriter{}
	m := r.Machine
	w.p("# Writ benchmark report")
	w.p("")
	if r.Mode == "smoke" {
		w.p("> **Smoke run**: short durations and few samples, to check that every figure is produced. Its numbers are not figures to quote.")
		w.p("")
	}
	version := r.WritVersion
	if version == "" {
		version = "unknown"
	}
	w.p("Measured on %s by `writ-bench` (%s mode, %.0f s), Writ %s.", m.Date, r.Mode, r.DurationSeconds, version)
	w.p("")
	w.table([]string{"Machine", ""}, [][]string{
		{"CPU", m.CPU},
		{"Cores", fmt.Sprint(m.Cores)},
		{"Memory", count(m.MemoryMiB) + " MiB"},
		{"Kernel", m.Kernel},
		{"OS", m.OS},
		{"Go", m.Go},
		{"Load average at start (1, 5, 15 min)", m.LoadAtStart},
	})
	w.p("Every value is measured by this run except those in the column **%s**: they were measured elsewhere and are shown for comparison only. Targets are the issue's: at least 80 %% of the stub's throughput, propagation under 100 ms at p99, half SPIRE's memory.", ReferenceSource)
	w.p("")

	w.p("## Headline")
	w.p("")
	head := [][2]string{
		{"FetchX509SVID, 1 caller, p50", "writ." + scX509C1 + ".p50"},
		{"FetchX509SVID, 1 caller, calls/s", "writ." + scX509C1 + ".rate"},
		{"FetchX509SVID, 1 caller, Writ / stub", "writ." + scX509C1 + ".ratio_to_stub"},
		{"FetchX509SVID, 16 callers, calls/s", "writ." + scX509C16 + ".rate"},
		{"FetchX509SVID, 16 callers, Writ / stub", "writ." + scX509C16 + ".ratio_to_stub"},
		{"FetchJWTSVID cached, p50", "writ." + scJWTCached + ".p50"},
		{"FetchJWTSVID first, p50", "writ." + scJWTFirst + ".p50"},
		{"ValidateJWTSVID, p50", "writ." + scValidate + ".p50"},
		{"JWT-SVID validation, first-seen token / raw ES256", figJWTFirstRatio},
		{"Propagation, p50", "propagation." + propE0 + ".p50"},
		{"Propagation, p99", "propagation." + propE0 + ".p99"},
		{"Propagation with the bulk entries, p99", "propagation." + propE10k + ".p99"},
		{"Propagation with the bulk entries, max", "propagation." + propE10k + ".max"},
		{"Agent RSS, idle", "memory.agent.rss." + memIdle},
		{"Agent RSS, 10,000 entries", "memory.agent.rss." + memE10k},
		{"Server RSS, idle", "memory.server.rss." + memIdle},
		{"Server RSS, 10,000 entries", "memory.server.rss." + memE10k},
		{"New entry among the backlog, max", figBacklogMax},
		{"Agent RSS with the backlog", figBacklogRSS},
		{"Stub, 1 caller, calls/s", "stub." + scX509C1 + ".rate"},
		{"Stub, 16 callers, calls/s", "stub." + scX509C16 + ".rate"},
	}
	w.table([]string{"Figure", "Writ (this run)", ReferenceSource, "Target"}, figureRows(r, head))

	w.p("## Limits of this machine and CA signing")
	w.p("")
	var rows [][]string
	for _, n := range []string{figSign, figVerify, figCreateCert, figSignSVID, figSignSVIDRatio} {
		f := r.find(n)
		rows = append(rows, []string{n, cell(r, n), f.Description})
	}
	w.table([]string{"Figure", "Value", "What"}, rows)
	renderJWTValidation(w, r)

	w.p("## Workload API: Writ's agent against the stub")
	w.p("")
	w.p("Both measured by this run with go-spiffe's Workload API client, each caller on its own connection, for the same duration after a warm-up. The stub serves the same protocol from a child process with a response built once and no attestation: the ceiling of the protocol on this machine.")
	w.p("")
	rows = nil
	for _, sc := range []struct{ label, writ string }{
		{"FetchX509SVID, 1 caller", scX509C1},
		{"FetchX509SVID, 16 callers", scX509C16},
		{"FetchX509SVIDs, 101 SVIDs", scX509S101},
		{"FetchJWTSVID, first (new audience)", scJWTFirst},
		{"FetchJWTSVID, first (new audience), 16 callers", scJWTFirstC16},
		{"FetchJWTSVID, cached", scJWTCached},
		{"ValidateJWTSVID", scValidate},
	} {
		wp, st := "writ."+sc.writ, "stub."+stubScenario(sc.writ)
		var refs []string
		for _, n := range []string{wp + ".p50", wp + ".rate", st + ".rate"} {
			if f := r.find(n); f != nil && f.Reference != nil {
				refs = append(refs, refCell(f))
			}
		}
		rows = append(rows, []string{sc.label,
			cell(r, wp+".p50"), cell(r, wp+".p99"), cell(r, wp+".rate"),
			cell(r, st+".p50"), cell(r, st+".p99"), cell(r, st+".rate"),
			cell(r, wp+".ratio_to_stub"), metCell(r.find(wp + ".ratio_to_stub")), strings.Join(refs, "; ")})
	}
	w.table([]string{"Call", "Writ p50", "Writ p99", "Writ rate", "stub p50", "stub p99", "stub rate", "Writ / stub", "Target", ReferenceSource}, rows)
	w.chart(charts, "throughput.svg")
	w.chart(charts, "latency-fetch-x509svid.svg")
	w.chart(charts, "latency-fetch-x509svids-101.svg")
	w.chart(charts, "latency-jwt.svg")
	renderJWTFloor(w, r)

	w.p("## Propagation")
	w.p("")
	w.p("From the admin API's BatchCreateEntry returning (called directly over the admin socket) to a workload watching a FetchX509SVID stream receiving the new SVID; an SVID that arrived before the call returned counts as 0. The last two columns measure from the call being sent instead, the call included. Each sample's entry is deleted, and its removal seen, before the next.")
	w.p("")
	rows = nil
	for _, p := range []struct{ label, key string }{{"no other entries", propE0}, {bulkLabel(r), propE10k}} {
		base := "propagation." + p.key
		f := r.find(base + ".p50")
		n, early, entries := "", "", ""
		if f != nil && f.Value != nil {
			n = fmt.Sprint(f.Samples)
			early = fmt.Sprint(f.Params["arrived_before_return"])
			entries = count(f.Params["entries"])
		}
		rows = append(rows, []string{p.label, entries, n, cell(r, base+".p50"), cell(r, base+".p99"), cell(r, base+".max"), early,
			cell(r, base+".from_send.p50"), cell(r, base+".from_send.p99"),
			refCell(f) + " / " + refCell(r.find(base+".max")), metCell(r.find(base + ".p99"))})
	}
	w.table([]string{"Registered", "Entries", "Samples", "p50", "p99", "max", "Arrived before the call returned (counted as 0)", "From the call sent, p50", "From the call sent, p99", ReferenceSource, "Target"}, rows)
	w.chart(charts, "propagation-cdf.svg")

	w.p("## Memory")
	w.p("")
	w.p("VmRSS and RssAnon from /proc/<pid>/status, read once the server and agent have used no CPU for %s.", idleQuiet)
	w.p("")
	rows = nil
	for _, c := range []struct{ label, key string }{{"idle", memIdle}, {"small set", memE1k}, {"large set", memE10k}} {
		f := r.find("memory.server.rss." + c.key)
		entries := ""
		if f != nil && f.Value != nil {
			entries = count(f.Params["entries"])
		}
		rows = append(rows, []string{c.label, entries,
			cell(r, "memory.server.rss."+c.key), cell(r, "memory.server.rss_anon."+c.key),
			cell(r, "memory.agent.rss."+c.key), cell(r, "memory.agent.rss_anon."+c.key),
			strings.Trim(refCell(f)+" / "+refCell(r.find("memory.agent.rss."+c.key)), " /"),
			strings.Trim(metCell(f)+"; "+metCell(r.find("memory.agent.rss."+c.key)), "; ")})
	}
	w.table([]string{"Checkpoint", "Entries", "Server RSS", "Server anon", "Agent RSS", "Agent anon", ReferenceSource + " server / agent", "Targets server; agent"}, rows)
	w.chart(charts, "memory.svg")
	streams := r.find(figAgentRSSStreams)
	ns := ""
	if streams != nil && streams.Value != nil {
		ns = count(streams.Params["streams"])
	}
	w.table([]string{"Open streams", "Agent RSS", "Per stream"}, [][]string{{ns, cell(r, figAgentRSSStreams), cell(r, figAgentPerStream)}})

	w.p("## Registration")
	w.p("")
	rows = nil
	for _, n := range []string{figRegAdmin, figRegCLI, figAgentSyncRate} {
		rows = append(rows, []string{n, cell(r, n), r.find(n).Description})
	}
	w.table([]string{"Figure", "Value", "What"}, rows)

	renderLifecycle(w, r)
	renderJWKS(w, r)
	renderOAuth(w, r)

	if missing := r.missing(); len(missing) > 0 {
		w.p("## Not available")
		w.p("")
		w.p("These figures were not measured; no value is given for them.")
		w.p("")
		byReason := map[string][]string{}
		var reasons []string
		for _, f := range missing {
			if _, ok := byReason[f.Error]; !ok {
				reasons = append(reasons, f.Error)
			}
			byReason[f.Error] = append(byReason[f.Error], "`"+f.Name+"`")
		}
		for _, reason := range reasons {
			w.p("- %s: %s", reason, strings.Join(byReason[reason], ", "))
		}
		w.p("")
	}

	w.p("## All figures")
	w.p("")
	rows = nil
	for _, f := range r.Figures {
		samples := ""
		if f.Samples > 0 {
			samples = fmt.Sprint(f.Samples)
		}
		rows = append(rows, []string{"`" + f.Name + "`", cell(r, f.Name), samples, f.Description})
	}
	w.table([]string{"Name", "Value", "Samples", "Description"}, rows)

	w.p("## Method")
	w.p("")
	w.p("- One run of `writ-bench` builds `writ`, starts `writ server run` (node API on 127.0.0.1, admin API on a Unix socket) and `writ agent run` (attested with a join token from `writ token generate`), in a temporary directory, with the Go runtime's environment variables removed so that both run as shipped.")
	w.p("- The benchmark's own entries select `unix:uid:<its uid>` under the agent; bulk entries select uids no process here has, so the agent signs and caches them without serving them.")
	w.p("- Workload API calls: the stub and Writ's agent are measured alternately, in %d rounds each after a warm-up, for the same total time, so that a change in the machine's speed affects both alike; each caller has its own go-spiffe client and connection.", rounds(r))
	w.p("- Latency: each call timed alone; p50 and p99 are nearest-rank percentiles of the calls that began and ended within the measurement windows; calls/s is their number over the windows.")
	w.p("- Limits run in this process, interleaved in rounds so that a change in machine speed affects each alike.")
	w.p("- Streams are opened from a child process, %d per connection; the per-stream figure is the agent's RSS increase divided by the streams.", streamsPerConn)
	return w.b.String()
}

// renderJWTFloor compares Writ's first JWT-SVID with the relay stub's.
func renderJWTFloor(w *mdWriter, r *Results) {
	w.p("### First JWT-SVID: Writ against the relay stub")
	w.p("")
	w.p("A workload's first JWT-SVID for an audience must be signed by the server, which alone holds the JWT signing key. The relay stub does only what such a call cannot avoid on this machine: a Workload API in one process forwards each request over mutual TLS to a signer in another, which signs a token for the audience asked; nothing is attested, cached, batched or checked. Measured alternately with Writ in the same rounds. CPU per call is that of the agent and server, or of the relay and signer.")
	w.p("")
	var rows [][]string
	for _, sc := range []struct{ label, sc string }{
		{"1 caller", scJWTFirst},
		{"16 callers", scJWTFirstC16},
	} {
		wp, rp := "writ."+sc.sc, relayPrefix+"."+sc.sc
		rows = append(rows, []string{sc.label,
			cell(r, wp+".p50"), cell(r, wp+".rate"), cell(r, wp+".cpu_per_call"),
			cell(r, rp+".p50"), cell(r, rp+".rate"), cell(r, rp+".cpu_per_call"),
			cell(r, wp+".ratio_to_relay")})
	}
	w.table([]string{"FetchJWTSVID, new audience", "Writ p50", "Writ rate", "Writ CPU/call", "relay p50", "relay rate", "relay CPU/call", "Writ / relay"}, rows)
	w.p("One server signing for a fleet, without the Workload API hop (%d simulated agents, batches of %d new audiences, phase %s): %s, a call %s p50, server CPU %s per token.",
		jwtSignAgents, jwtSignBatch, phaseJWTSign, cell(r, figJWTSignRate), cell(r, figJWTSignBatch), cell(r, figJWTSignCPU))
	w.p("")
}
