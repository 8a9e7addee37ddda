package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config sets how long and how much the benchmark measures.
type Config struct {
	Smoke bool
	// LimitDur is how long each raw limit (sign, verify, create) and
	// x509ca.SignX509SVID is measured.
	LimitDur time.Duration
	// Warmup, LoadDur and Rounds: each Workload API scenario is measured
	// on each target for LoadDur in all, in Rounds rounds that alternate
	// between the stub and Writ, after Warmup (a quarter of it in later
	// rounds), unmeasured.
	Warmup, LoadDur time.Duration
	Rounds          int
	// PropSamples is the number of propagation samples per checkpoint.
	PropSamples int
	// EntriesSmall and EntriesLarge are the entry counts of the memory
	// checkpoints (EntriesLarge also of propagation and streams).
	EntriesSmall, EntriesLarge int
	// Batch is the number of entries per BatchCreateEntry call.
	Batch int
	// Streams is the number of Workload API streams opened at once.
	Streams int
	// CLIEntries is the number of entries `writ entry create --file`
	// imports.
	CLIEntries int
	// BacklogEntries is the number of entries of the agent of the
	// backlog case (more than its SVID cache keeps), and BacklogSamples
	// the new entries timed there.
	BacklogEntries, BacklogSamples int
	// TemplateCallers is the number of distinct callers of the template
	// case.
	TemplateCallers int
	// Timeout bounds every wait for a process or an SVID.
	Timeout time.Duration
	// FanAgents, if not zero, replaces the number of simulated agents
	// of the PostgreSQL fan-out.
	FanAgents int
}

// fullConfig is `make bench`: within 10 minutes on 2 cores.
func fullConfig() Config {
	return Config{
		LimitDur:     3 * time.Second,
		Warmup:       500 * time.Millisecond,
		LoadDur:      8 * time.Second,
		Rounds:       4,
		PropSamples:  200,
		EntriesSmall: 1000,
		EntriesLarge: 10000,
		Batch:        1000,
		Streams:      10000,
		CLIEntries:   10000,
		Timeout:      2 * time.Minute,

		BacklogEntries: 300000,
		BacklogSamples: 10,

		TemplateCallers: 10000,
	}
}

// smokeConfig is `make bench-smoke`: every figure, from few samples, in
// well under 2 minutes. The entry counts are the full run's, so that the
// memory and propagation figures keep their meaning; only durations,
// sample counts, streams and the backlog case's entries shrink.
func smokeConfig() Config {
	c := fullConfig()
	c.Smoke = true
	c.LimitDur = 100 * time.Millisecond
	c.Warmup = 50 * time.Millisecond
	c.LoadDur = 300 * time.Millisecond
	c.Rounds = 2
	c.PropSamples = 5
	c.Streams = 500
	c.CLIEntries = 2000
	c.BacklogEntries = 5000
	c.BacklogSamples = 3
	c.TemplateCallers = 100
	c.Timeout = time.Minute
	return c
}

// Options are the command line's.
type Options struct {
	Out     string // output directory
	Smoke   bool
	WritBin string // a prebuilt writ binary; built from the module if empty
	Keep    bool   // keep the temporary directory (logs, data dirs)
	// Only, if not empty, names the phases to run (phaseNames); the
	// figures of the others are reported as not measured.
	Only []string
	// FanAgents, if not zero, is the number of simulated agents of the
	// PostgreSQL fan-out.
	FanAgents int
}

func main() {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(runChild(mode))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runMain(ctx, os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}

// runMain parses args and runs the benchmark; it returns the exit code.
func runMain(ctx context.Context, args []string, stderr io.Writer) int {
	flags := flag.NewFlagSet("writ-bench", flag.ContinueOnError)
	flags.SetOutput(stderr)
	var o Options
	flags.StringVar(&o.Out, "out", "bench-results", "directory to write results.json, report.md and the charts to")
	flags.BoolVar(&o.Smoke, "smoke", false, "quick run that checks every figure is produced (timings are meaningless)")
	flags.StringVar(&o.WritBin, "writ-bin", "", "use this writ binary instead of building ./cmd/writ")
	flags.BoolVar(&o.Keep, "keep", false, "keep the temporary directory (data dirs and process logs)")
	flags.IntVar(&o.FanAgents, "fan-agents", 0, "simulated agents of the PostgreSQL fan-out, split over the two servers (default: 10,000; 200 with --smoke)")
	only := flags.String("only", "", "run only these phases, comma-separated ("+strings.Join(phaseNames, ", ")+"); the other figures are reported as not measured")
	flags.Usage = func() {
		fmt.Fprintln(stderr, "usage: writ-bench [--out DIR] [--smoke] [--writ-bin PATH] [--keep] [--only PHASES] [--fan-agents N]")
		fmt.Fprintln(stderr, "Measures Writ's server and agent against this machine's limits and writes a report.")
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if o.FanAgents < 0 || o.FanAgents%2 != 0 {
		fmt.Fprintf(stderr, "writ-bench: --fan-agents %d: want an even number of agents\n", o.FanAgents)
		return 2
	}
	if flags.NArg() > 0 {
		fmt.Fprintf(stderr, "writ-bench: unexpected argument %q\n", flags.Arg(0))
		return 2
	}
	if *only != "" {
		for p := range strings.SplitSeq(*only, ",") {
			if !slices.Contains(phaseNames, p) {
				fmt.Fprintf(stderr, "writ-bench: --only: unknown phase %q (want %s)\n", p, strings.Join(phaseNames, ", "))
				return 2
			}
			o.Only = append(o.Only, p)
		}
	}
	if _, err := run(ctx, o, stderr); err != nil {
		fmt.Fprintf(stderr, "writ-bench: %v\n", err)
		return 1
	}
	return 0
}

// errMissing: some figures could not be measured (a smoke run fails).
var errMissing = errors.New("figures missing")

// run runs the benchmark and writes its results to o.Out. In smoke mode
// it returns an error wrapping errMissing if any figure is missing; the
// error then also wraps the reason of the first, so that callers can
// tell errNoWorkloadAPI.
func run(ctx context.Context, o Options, stderr io.Writer) (*Results, error) {
	cfg, mode := fullConfig(), "full"
	if o.Smoke {
		cfg, mode = smokeConfig(), "smoke"
	}
	cfg.FanAgents = o.FanAgents
	start := time.Now()
	b := &bench{
		cfg:  cfg,
		only: o.Only,
		prog: &progress{w: stderr, start: start},
		dist: map[string]Sample{},
		res: &Results{
			Tool:            "writ-bench",
			Mode:            mode,
			Started:         start.UTC().Truncate(time.Second),
			Machine:         describeMachine(start),
			WritVersion:     writVersion(ctx),
			ReferenceSource: ReferenceSource,
			Figures:         catalogue(cfg),
		},
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	m := b.res.Machine
	b.prog.printf("writ-bench (%s): %s, %d cores, %s MiB, kernel %s, %s, load %s", b.res.Mode, m.CPU, m.Cores, count(m.MemoryMiB), m.Kernel, m.Go, m.LoadAtStart)

	if l, err := strconv.ParseFloat(strings.Fields(m.LoadAtStart + " 0")[0], 64); err == nil && l > 0.5 {
		b.prog.printf("note: the machine is already busy (load average %s): other work skews every figure", m.LoadAtStart)
	}

	tmp, err := shortTempDir()
	if err != nil {
		return nil, err
	}
	b.tmp = tmp
	defer func() {
		if o.Keep {
			b.prog.printf("kept %s", tmp)
			return
		}
		os.RemoveAll(tmp)
	}()
	defer b.stopAll()

	b.phases(ctx, o)
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	b.finish()
	b.res.DurationSeconds = math.Round(time.Since(start).Seconds()*10) / 10
	if err := b.write(o.Out); err != nil {
		return nil, err
	}
	b.prog.printf("wrote %s and %s", filepath.Join(o.Out, "results.json"), filepath.Join(o.Out, "report.md"))
	if len(b.bugs) > 0 {
		return b.res, fmt.Errorf("internal error: figures set that the catalogue lacks: %s", strings.Join(b.bugs, ", "))
	}
	missing := b.res.missing()
	if len(o.Only) > 0 {
		missing = slices.DeleteFunc(missing, func(f *Figure) bool { return f.Error == notAmongOnly(o.Only) })
		if len(missing) == 0 {
			b.prog.printf("the figures of --only %s measured in %s", strings.Join(o.Only, ","), time.Since(start).Round(time.Second))
			return b.res, nil
		}
	}
	if len(missing) == 0 {
		b.prog.printf("all %d figures measured in %s", len(b.res.Figures), time.Since(start).Round(time.Second))
		return b.res, nil
	}
	var names []string
	for _, f := range missing {
		names = append(names, f.Name)
	}
	b.prog.printf("%d of %d figures NOT available: %s", len(missing), len(b.res.Figures), strings.Join(names, ", "))
	for _, reason := range b.reasons() {
		b.prog.printf("  because: %s", reason)
	}
	if b.firstErr == nil {
		b.firstErr = errors.New(missing[0].Error)
	}
	if o.Smoke {
		return b.res, fmt.Errorf("%w: %d of %d, the first because %w", errMissing, len(missing), len(b.res.Figures), b.firstErr)
	}
	return b.res, nil
}

// shortTempDir makes a temporary directory whose path leaves room for
// socket names within sun_path (104 bytes on the BSDs, 108 on Linux).
func shortTempDir() (string, error) {
	parent := os.TempDir()
	if len(parent) > 40 {
		parent = "/tmp"
	}
	return os.MkdirTemp(parent, "wb")
}

// bench is one run.
type bench struct {
	cfg  Config
	only []string // phases to run; all if empty
	res  *Results
	prog *progress
	tmp  string

	dist     map[string]Sample // latency samples by series, for the charts
	memory   []memPoint        // for the memory chart
	bugs     []string          // figures set that the catalogue lacks
	firstErr error             // the first reason a figure is missing

	mu    sync.Mutex // guards procs
	procs []stopper  // processes to stop at the end
}

// memPoint is the memory of the server and agent at an entry count.
type memPoint struct {
	Entries       int
	Server, Agent memInfo
}

type stopper interface{ stop() }

func (b *bench) track(s stopper) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.procs = append(b.procs, s)
}

// stopAll stops every process still running, newest first.
func (b *bench) stopAll() {
	b.mu.Lock()
	procs := b.procs
	b.procs = nil
	b.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop()
	}
}

// set records a figure's value.
func (b *bench) set(name string, v float64, samples int, params map[string]int) {
	f := b.res.find(name)
	if f == nil {
		b.bugs = append(b.bugs, name)
		return
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		b.fail(fmt.Errorf("%s: not a number", name), name)
		return
	}
	f.Value = ptr(v)
	f.Samples = samples
	f.Params = params
	f.Error = ""
}

// fail records why the figures named (or starting with a name ending in
// '.') have no value; figures that have one are left alone.
func (b *bench) fail(err error, names ...string) {
	if err == nil {
		return
	}
	if b.firstErr == nil {
		b.firstErr = err
	}
	for _, f := range b.res.Figures {
		if f.Value != nil || f.Error != "" {
			continue
		}
		for _, n := range names {
			if f.Name == n || strings.HasSuffix(n, ".") && strings.HasPrefix(f.Name, n) {
				f.Error = err.Error()
				break
			}
		}
	}
	b.prog.printf("NOT AVAILABLE (%s): %v", strings.Join(names, ", "), err)
}

// reasons returns the distinct reasons figures are missing.
func (b *bench) reasons() []string {
	var out []string
	seen := map[string]bool{}
	for _, f := range b.res.missing() {
		if !seen[f.Error] {
			seen[f.Error] = true
			out = append(out, f.Error)
		}
	}
	return out
}

// ratio sets the figure name to num / den, or to the reason one is
// missing.
func (b *bench) ratio(name, num, den string) {
	nv, nok := b.res.value(num)
	dv, dok := b.res.value(den)
	switch {
	case nok && dok:
		b.set(name, nv/dv, 0, nil)
	case !nok:
		b.res.find(name).Error = b.res.find(num).Error
	default:
		b.res.find(name).Error = b.res.find(den).Error
	}
}

// finish computes the ratios and targets, and marks figures no phase
// produced.
func (b *bench) finish() {
	for _, sc := range []string{scX509C1, scX509C16, scX509S101, scX509S101E10k, scX509S101E10kC16, scJWTFirst, scJWTFirstC16, scJWTCached, scValidate} {
		b.ratio("writ."+sc+".ratio_to_stub", "writ."+sc+".rate", "stub."+stubScenario(sc)+".rate")
	}
	for _, sc := range []string{scJWTFirst, scJWTFirstC16} {
		b.ratio("writ."+sc+".ratio_to_relay", "writ."+sc+".rate", relayPrefix+"."+sc+".rate")
	}
	for _, f := range b.res.Figures {
		if f.Value == nil && f.Error == "" {
			f.Error = "not measured (an earlier step failed)"
			if len(b.only) > 0 {
				f.Error = notAmongOnly(b.only)
			}
		}
		if f.Value != nil && f.Target != nil {
			f.TargetMet = ptr(f.Target.met(*f.Value))
		}
	}
}

// notAmongOnly is the error of a figure whose phase --only left out.
func notAmongOnly(only []string) string {
	return "not measured (its phase is not among --only " + strings.Join(only, ",") + ")"
}

// write writes results.json, report.md and the charts to dir.
func (b *bench) write(dir string) error {
	js, err := json.MarshalIndent(b.res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	// Charts of an earlier run that this one cannot draw must not stay
	// beside its report.
	for _, f := range chartFiles {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	charts := buildCharts(b.res, b.dist, b.memory)
	for _, c := range charts {
		if err := os.WriteFile(filepath.Join(dir, c.File), []byte(c.SVG()), 0o644); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "report.md"), []byte(renderReport(b.res, charts)), 0o644)
}

// progress prints what the run is doing on the terminal.
type progress struct {
	mu    sync.Mutex // guards w
	w     io.Writer
	start time.Time
}

func (p *progress) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "[%6.1fs] %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

func (p *progress) phase(name string) { p.printf("== %s", name) }
