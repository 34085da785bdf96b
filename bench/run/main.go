// Command run is the harness of make bench (bench/bench.sh builds and
// calls it): it runs the freeway binary and its peers side by side on
// the very same lines and writes a report.
//
// One run makes the lines file once (internal/loadgen, from a seed) with
// its ground truth (count and sum of value per key per minute), then, in
// rounds so that the machine's noise falls on every system alike:
//
//   - Freeway end to end (freeway all, embedded backends): `freeway load`
//     sends the lines to the agent; the rate the agent acknowledged (B1)
//     and the rate until Puma has aggregated them all (B4), CPU-seconds
//     of freeway (from /proc) and of the generator apart, peak RSS, and
//     every cell checked against the truth through the query API;
//   - B2, durable acknowledgement by an agent alone (freeway agent whose
//     upstream is an address where nothing listens, so nothing ships and
//     no shipping shares the cores with its Log calls), fed the same
//     lines, with the agent's CPU per entry; the run counts only if the
//     agent's queue then holds every acknowledged entry;
//   - the hand-written limit (bench/limit), DuckDB (bench/duckdb) and
//     Flink (bench/flink) on the lines file, their cells checked too.
//
// Then once: B1 by batch size and connections against a writer alone;
// B5 freshness at half the end-to-end maximum (probe lines carrying their
// send time, looked for in queries); B8 a checkpoint and a recovery of
// 1 M cells, with B6 query latencies and B7 memory per cell. With
// -engines, also end to end and freshness on the real engines, and the
// sustained run there (sustain.go): a fixed rate whose lag is followed
// slice by slice and judged bounded or not.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/freeway-dev/freeway/calligraphus"
	fwbackends "github.com/freeway-dev/freeway/internal/backends"
	"github.com/freeway-dev/freeway/internal/loadgen"
	"github.com/freeway-dev/freeway/puma"
)

type options struct {
	mode      string
	work      string
	freeway   string
	limit     string
	python    string
	duckdb    string
	flink     string
	out       string
	command   string
	lines     int64
	keys      int
	conns     int
	batch     int
	runs      int
	cells     int64
	fresh     time.Duration
	matrix    bool
	matrixFor time.Duration
	cellsCkpt time.Duration
	profile   time.Duration
	engines   bool
	only      map[string]bool
	inFlight  int             // agent.max_in_flight of the end-to-end runs (0: the default)
	batchB    int64           // agent.batch_bytes of the end-to-end runs (0: the default)
	batchN    int             // agent.batch_entries of the end-to-end runs (0: the default)
	freshRate float64         // the engines' freshness run's rate (0: half their end-to-end rate)
	embRate   float64         // the embedded freshness runs' rate (0: half the end-to-end median)
	freshAges []time.Duration // segment ages of the embedded freshness runs (0: the dfs's default)
	engBatchB int64           // agent.batch_bytes of the runs on the real engines
	engBatchN int             // agent.batch_entries of the runs on the real engines
	engInFly  int             // agent.max_in_flight of the runs on the real engines (0: as -max-in-flight)
	engSeqWin int             // agent.seq_window of the runs on the real engines (0: the default)
	// The engines' freshness run's own agent.max_in_flight and
	// agent.seq_window (0: as the other runs on the engines): the
	// throughput settings queue more at the writer, which costs
	// freshness at half the load.
	freshInFly  int
	freshSeqWin int
	seqWindow   int // agent.seq_window (0: the default)
	// writers is the writers of a run on the real engines (0 or 1: the
	// writer of freeway all alone; more: freeway calligraphus processes
	// beside it, the agent's upstream their coordinator URL).
	writers int
	// The sustained run on the real engines: its rate, how long, and the
	// slices its lag is cut into.
	sustainRate  float64
	sustain      time.Duration
	sustainSlice time.Duration
	// manyWriters is the writers of the runs on the real engines with
	// several (-only writers).
	manyWriters int
}

// onEngines is o for the runs on the real engines: the agent's batches
// are those README recommends for one agent that alone feeds a writer
// on HDFS (-engines-batch-bytes, -engines-batch-entries).
func (o options) onEngines() options {
	if o.engBatchB > 0 {
		o.batchB = o.engBatchB
	}
	if o.engBatchN > 0 {
		o.batchN = o.engBatchN
	}
	if o.engInFly > 0 {
		o.inFlight = o.engInFly
	}
	if o.engSeqWin > 0 {
		o.seqWindow = o.engSeqWin
	}
	return o
}

// forFreshness is o (already onEngines) for the freshness run on the
// real engines: its own max_in_flight and seq_window where set
// (-engines-fresh-max-in-flight, -engines-fresh-seq-window; a negative
// seq_window is freeway's default).
func (o options) forFreshness() options {
	if o.freshInFly > 0 {
		o.inFlight = o.freshInFly
	}
	switch {
	case o.freshSeqWin > 0:
		o.seqWindow = o.freshSeqWin
	case o.freshSeqWin < 0:
		o.seqWindow = 0
	}
	return o
}

// batches names the agent's batch settings of o's runs.
func (o options) batches() string {
	b, n := "default", "default"
	if o.batchB > 0 {
		b = fmt.Sprintf("%d KiB", o.batchB>>10)
	}
	if o.batchN > 0 {
		n = fmt.Sprint(o.batchN)
	}
	f, w := "default", "default"
	if o.inFlight > 0 {
		f = fmt.Sprint(o.inFlight)
	}
	if o.seqWindow > 0 {
		w = fmt.Sprint(o.seqWindow)
	}
	return fmt.Sprintf("agent batch_bytes %s, batch_entries %s, max_in_flight %s, seq_window %s", b, n, f, w)
}

// does says whether the run includes part (all parts without -only).
func (o options) does(part string) bool { return len(o.only) == 0 || o.only[part] }

func main() {
	var o options
	flag.StringVar(&o.mode, "mode", "full", "full (make bench) or smoke (make bench-smoke: tiny sizes, seconds)")
	flag.StringVar(&o.work, "work", filepath.Join(os.TempDir(), "freeway-bench"), "work directory: lines file, data directories, peers' output")
	flag.StringVar(&o.freeway, "freeway", "bin/freeway", "the freeway binary")
	flag.StringVar(&o.limit, "limit", "bin/benchlimit", "the hand-written limit binary (bench/limit)")
	flag.StringVar(&o.python, "python", "", "python with duckdb installed (empty: no DuckDB)")
	flag.StringVar(&o.duckdb, "duckdb-script", "bench/duckdb/groupby.py", "the DuckDB peer's script")
	flag.StringVar(&o.flink, "flink", "", "the Flink job's directory, built (empty: no Flink)")
	flag.StringVar(&o.out, "out", "", "where the report goes (default: bench/results for full, the work directory for smoke)")
	flag.StringVar(&o.command, "command", "", "the command to name in the report")
	flag.Int64Var(&o.lines, "lines", 0, "lines (default 2 M; smoke 20 k)")
	flag.IntVar(&o.keys, "keys", 0, "distinct keys (default 10 k; smoke 1 k)")
	flag.IntVar(&o.conns, "conns", 8, "connections of the load")
	flag.IntVar(&o.batch, "batch", 1000, "entries per Log call")
	flag.IntVar(&o.runs, "runs", 0, "rounds of the side-by-side runs (default 3; smoke 1)")
	flag.Int64Var(&o.cells, "cells", 0, "cells of the checkpoint, recovery and query run (default 1 M; smoke 20 k)")
	flag.DurationVar(&o.fresh, "fresh", 0, "how long the freshness run lasts (default 30s; smoke 3s)")
	flag.BoolVar(&o.matrix, "matrix", true, "run B1 by batch size and connections")
	flag.DurationVar(&o.profile, "profile", 0, "take a CPU profile of freeway for this long in the first end-to-end run (written to the work directory)")
	flag.BoolVar(&o.engines, "engines", false, "also run end to end on the real engines (FREEWAY_TEST_HDFS, _HBASE, _ZK)")
	flag.IntVar(&o.inFlight, "max-in-flight", 0, "agent.max_in_flight of the end-to-end runs (default: freeway's own)")
	flag.Int64Var(&o.batchB, "batch-bytes", 0, "agent.batch_bytes of the end-to-end runs, in bytes (default: freeway's own)")
	flag.IntVar(&o.batchN, "batch-entries", 0, "agent.batch_entries of the end-to-end runs (default: freeway's own)")
	flag.Float64Var(&o.freshRate, "engines-fresh-rate", 0, "entries/s of the freshness run on the real engines (default: half their end-to-end rate); set, the embedded freshness runs are skipped")
	flag.Int64Var(&o.engBatchB, "engines-batch-bytes", 4<<20, "agent.batch_bytes of the runs on the real engines (0: as -batch-bytes); the default is README's for one agent alone feeding HDFS")
	flag.IntVar(&o.engBatchN, "engines-batch-entries", 16384, "agent.batch_entries of the runs on the real engines (0: as -batch-entries)")
	flag.IntVar(&o.engInFly, "engines-max-in-flight", 8, "agent.max_in_flight of the runs on the real engines (0: as -max-in-flight); 8 batches of 16384 fill seq_window 131072")
	flag.IntVar(&o.engSeqWin, "engines-seq-window", 131072, "agent.seq_window of the runs on the real engines (0: freeway's default, 65536; a binary before agent.seq_window needs 0)")
	flag.IntVar(&o.freshInFly, "engines-fresh-max-in-flight", 4, "agent.max_in_flight of the freshness run on the real engines (0: as -engines-max-in-flight); fewer batches in flight queue less at the writer")
	flag.IntVar(&o.freshSeqWin, "engines-fresh-seq-window", -1, "agent.seq_window of the freshness run on the real engines (0: as -engines-seq-window; -1: freeway's default)")
	flag.Float64Var(&o.sustainRate, "sustain-rate", 300_000, "entries/s of the sustained run on the real engines (with -engines)")
	flag.DurationVar(&o.sustain, "sustain", 0, "how long the sustained run on the real engines holds its rate (default 40s; smoke 4s)")
	flag.DurationVar(&o.sustainSlice, "sustain-slice", 0, "the slices the sustained run's lag is cut into (default 10s; smoke 1s)")
	flag.Float64Var(&o.embRate, "fresh-rate", 0, "entries/s of the embedded freshness runs (default: half the median end-to-end rate of this run); set, they need no end-to-end run, so that two binaries can be compared at one rate")
	ages := flag.String("fresh-ages", "0,1s", "calligraphus.segment_max_age of the embedded freshness runs, comma-separated (0: the dfs's default)")
	flag.IntVar(&o.manyWriters, "writers", 2, "writers of the runs on the real engines with several (part writers: end to end and sustained, beside the one-writer runs): freeway all and writers-1 freeway calligraphus processes, the agent's upstream their ZooKeeper URL")
	only := flag.String("only", "", "run only these parts, comma-separated: e2e, ack, peers, matrix, fresh, cells, sustain, writers (default: all)")
	flag.Parse()
	if *only != "" {
		o.only = map[string]bool{}
		for _, p := range strings.Split(*only, ",") {
			switch p = strings.TrimSpace(p); p {
			case "e2e", "ack", "peers", "matrix", "fresh", "cells", "sustain", "writers":
				o.only[p] = true
			default:
				log.Fatalf("-only: unknown part %q (want e2e, ack, peers, matrix, fresh, cells, sustain, writers)", p)
			}
		}
	}
	for _, a := range strings.Split(*ages, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(a))
		if err != nil || d < 0 {
			log.Fatalf("-fresh-ages: %q is not a duration", a)
		}
		o.freshAges = append(o.freshAges, d)
	}
	smoke := o.mode == "smoke"
	if o.mode != "full" && !smoke {
		log.Fatalf("unknown -mode %q (want full or smoke)", o.mode)
	}
	def := func(v *int64, full, small int64) {
		if *v == 0 {
			*v = map[bool]int64{false: full, true: small}[smoke]
		}
	}
	def(&o.lines, 2_000_000, 20_000)
	def(&o.cells, 1_000_000, 20_000)
	keys, runs := int64(o.keys), int64(o.runs)
	def(&keys, 10_000, 1_000)
	def(&runs, 3, 1)
	o.keys, o.runs = int(keys), int(runs)
	if o.fresh == 0 {
		o.fresh = map[bool]time.Duration{false: 30 * time.Second, true: 3 * time.Second}[smoke]
	}
	if o.sustain == 0 {
		o.sustain = map[bool]time.Duration{false: 40 * time.Second, true: 4 * time.Second}[smoke]
	}
	if o.sustainSlice == 0 {
		o.sustainSlice = map[bool]time.Duration{false: 10 * time.Second, true: time.Second}[smoke]
	}
	o.matrixFor = map[bool]time.Duration{false: 3 * time.Second, true: time.Second}[smoke]
	o.cellsCkpt = map[bool]time.Duration{false: 30 * time.Second, true: 2 * time.Second}[smoke]
	if o.out == "" {
		o.out = map[bool]string{false: "bench/results", true: o.work}[smoke]
	}
	if o.command == "" {
		o.command = strings.Join(os.Args, " ")
	}
	log.SetFlags(log.Ltime)
	log.SetPrefix("bench: ")
	rep, err := run(o)
	if err != nil {
		log.Fatal(err)
	}
	path, err := rep.write(o)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("report: %s", path)
	if len(rep.Failures) > 0 {
		for _, f := range rep.Failures {
			log.Printf("FAIL: %s", f)
		}
		os.Exit(1)
	}
}

func run(o options) (*report, error) {
	if err := os.MkdirAll(o.work, 0o755); err != nil {
		return nil, err
	}
	rep := &report{Date: time.Now().UTC(), Commit: gitRev(), Command: o.command, Mode: o.mode, Machine: machine(),
		LoadAvgStart: loadAvg(), Lines: o.lines, Keys: o.keys, Conns: o.conns, Batch: o.batch, Runs: o.runs}
	ctx := context.Background()

	// The lines, once: 176-byte JSON lines over the keys, event times
	// spread over the last ten minutes (Freeway's default lateness and
	// retention take them all), and their truth.
	start := time.Now().Add(-15 * time.Minute).Truncate(time.Minute)
	spec := loadgen.Lines{Format: loadgen.JSON, Size: 176, Keys: o.keys, Seed: 1, Start: start, Step: 10 * time.Minute / time.Duration(o.lines)}
	linesPath := filepath.Join(o.work, "lines.json")
	f, err := os.Create(linesPath)
	if err != nil {
		return nil, err
	}
	truth := loadgen.NewTruth(o.keys)
	if err := spec.Write(f, 0, o.lines, 0, truth); err != nil {
		_ = f.Close() // the write error is the one reported
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	want := truth.Cells()
	rep.Cells = truth.Len()
	rep.LineSpec = fmt.Sprintf("freeway load --count %d --keys %d --size 176 --seed 1 --start %d --step %v", o.lines, o.keys, start.Unix(), spec.Step)
	log.Printf("lines: %s (%d lines, %d cells; %s)", linesPath, o.lines, truth.Len(), rep.LineSpec)
	loadArgs := []string{"--category", "bench", "--count", strconv.FormatInt(o.lines, 10), "--keys", strconv.Itoa(o.keys),
		"--size", "176", "--seed", "1", "--start", strconv.FormatInt(start.Unix(), 10), "--step", spec.Step.String(),
		"--conns", strconv.Itoa(o.conns), "--batch", strconv.Itoa(o.batch)}

	peers := []*peer{limitPeer(o.limit)}
	if !o.does("peers") {
		peers = nil
	} else if o.python != "" {
		peers = append(peers, duckdbPeer(o.python, o.duckdb, 2))
	} else {
		rep.Notes = append(rep.Notes, "DuckDB not run (no venv with duckdb; make bench installs it)")
	}
	if o.flink != "" {
		p, err := flinkPeer(o.flink, 2, flinkVersion(o.flink))
		if err != nil {
			rep.Notes = append(rep.Notes, "Flink not run: "+err.Error())
		} else {
			peers = append(peers, p)
		}
	} else if o.does("peers") {
		rep.Notes = append(rep.Notes, "Flink not run (job not built; make bench builds it)")
	}
	rep.Peers = make([]peerResult, len(peers))
	for i, p := range peers {
		rep.Peers[i] = peerResult{Name: p.name, Version: p.version, Note: p.note}
	}

	for round := range o.runs {
		log.Printf("round %d of %d", round+1, o.runs)
		if o.does("e2e") {
			e := e2e(ctx, o, round, loadArgs, want, backends{}, o.lines)
			log.Printf("freeway: acknowledged %.0f/s, end to end %.0f/s (%.0f per CPU-s), %s %s", e.AckPerSec, e.PerSec, e.PerCPUSec, e.Totals, e.Err)
			rep.E2E = append(rep.E2E, e)
		}
		if o.does("ack") {
			a := agentAlone(ctx, o, round, loadArgs, o.lines, linesPath)
			log.Printf("agent alone: acknowledged %.0f/s, %.3f µs of agent CPU per entry, %.0f entries in its queue %s", a.PerSec, a.CPUMicros, a.QueueEntries, a.Err)
			rep.AgentAlone = append(rep.AgentAlone, a)
		}
		for i, p := range peers {
			r := p.run(ctx, linesPath, o.work, want)
			log.Printf("%s: %.0f/s (%.0f per CPU-s), %s %s", p.name, r.PerSec, r.PerCPUSec, r.Totals, r.Err)
			rep.Peers[i].Runs = append(rep.Peers[i].Runs, r)
		}
	}
	maxRate := median(rep.E2E, func(e e2eRun) float64 { return e.PerSec })
	if o.engines && (o.does("e2e") || o.does("fresh")) {
		be, err := engineBackends()
		if err != nil {
			rep.Notes = append(rep.Notes, "real engines not run: "+err.Error())
		} else {
			oe := o.onEngines()
			e := e2e(ctx, oe, -1, loadArgs, want, be, o.lines)
			removeEngineRoots(rep, be)
			e.Backends = be.String() + "; " + oe.batches()
			log.Printf("freeway on the real engines: acknowledged %.0f/s, end to end %.0f/s, %s", e.AckPerSec, e.PerSec, e.Totals)
			rep.Engines = &e
		}
	}
	if o.matrix && o.does("matrix") {
		rep.Matrix = matrix(ctx, o)
	}
	if o.does("fresh") && o.freshRate == 0 {
		rate := maxRate / 2
		if o.embRate > 0 {
			rate = o.embRate
		}
		if rate > 0 {
			// By default the dfs's default (a local disk here), and the
			// second that was the default before it was chosen by dfs.
			for _, age := range o.freshAges {
				rep.Freshness = append(rep.Freshness, freshness(ctx, o, rate, age, backends{}))
			}
		} else {
			rep.Failures = append(rep.Failures, "no end-to-end rate to run the freshness bench at (it runs at half of it)")
		}
	}
	if o.does("fresh") && rep.Engines != nil && rep.Engines.PerSec > 0 {
		// At half of the engines' own end-to-end rate, on fresh roots.
		rate := rep.Engines.PerSec / 2
		if o.freshRate > 0 {
			rate = o.freshRate
		}
		if be, err := engineBackends(); err == nil {
			rep.Freshness = append(rep.Freshness, freshness(ctx, o.onEngines().forFreshness(), rate, 0, be))
			removeEngineRoots(rep, be)
		}
	}
	if o.engines && o.does("sustain") {
		if be, err := engineBackends(); err != nil {
			rep.Notes = append(rep.Notes, "sustained run on the real engines not run: "+err.Error())
		} else {
			s := sustained(ctx, o.onEngines(), o.sustainRate, be)
			removeEngineRoots(rep, be)
			rep.Sustained = &s
		}
	}
	if o.engines && o.does("writers") && o.manyWriters > 1 {
		// The same two runs with several writers: flat out, then at the
		// sustained run's rate.
		if be, err := engineBackends(); err != nil {
			rep.Notes = append(rep.Notes, "runs with several writers on the real engines not run: "+err.Error())
		} else {
			ow := o.onEngines()
			ow.writers = o.manyWriters
			e := e2e(ctx, ow, -2, loadArgs, want, be, o.lines)
			removeEngineRoots(rep, be)
			e.Backends = be.String() + "; " + ow.batches()
			log.Printf("freeway on the real engines, %d writers: acknowledged %.0f/s, end to end %.0f/s, %.0f entries forwarded between writers, %s %s", e.Writers, e.AckPerSec, e.PerSec, e.Forwarded, e.Totals, e.Err)
			rep.EnginesWriters = &e
			if be, err = engineBackends(); err == nil {
				s := sustained(ctx, ow, o.sustainRate, be)
				removeEngineRoots(rep, be)
				rep.SustainedWriters = &s
			}
		}
	}
	if o.does("cells") {
		c := cellsRun(ctx, o)
		rep.CellsRun = &c
	}
	rep.LoadAvgEnd = loadAvg()

	for _, e := range rep.E2E {
		if e.Err != "" || !e.Exact {
			rep.Failures = append(rep.Failures, fmt.Sprintf("freeway end to end: %s %s", e.Totals, e.Err))
		}
	}
	for _, a := range rep.AgentAlone {
		if a.Err != "" {
			rep.Failures = append(rep.Failures, "agent alone: "+a.Err)
		}
	}
	if rep.Engines != nil && (rep.Engines.Err != "" || !rep.Engines.Exact) {
		rep.Failures = append(rep.Failures, fmt.Sprintf("freeway on the real engines: %s %s", rep.Engines.Totals, rep.Engines.Err))
	}
	for _, p := range rep.Peers {
		for _, r := range p.Runs {
			if r.Err != "" || !r.Exact {
				rep.Failures = append(rep.Failures, fmt.Sprintf("%s: %s %s", p.Name, r.Totals, r.Err))
			}
		}
	}
	for _, fr := range rep.Freshness {
		if fr.Err != "" {
			rep.Failures = append(rep.Failures, "freshness: "+fr.Err)
		}
	}
	if s := rep.Sustained; s != nil && s.Err != "" {
		rep.Failures = append(rep.Failures, "sustained on the real engines: "+s.Err)
	}
	if e := rep.EnginesWriters; e != nil && (e.Err != "" || !e.Exact) {
		rep.Failures = append(rep.Failures, fmt.Sprintf("freeway on the real engines, %d writers: %s %s", e.Writers, e.Totals, e.Err))
	}
	if s := rep.SustainedWriters; s != nil && s.Err != "" {
		rep.Failures = append(rep.Failures, fmt.Sprintf("sustained on the real engines, %d writers: %s", s.Writers, s.Err))
	}
	if c := rep.CellsRun; c != nil && c.Err != "" {
		rep.Failures = append(rep.Failures, "cells: "+c.Err)
	}
	for _, m := range rep.Matrix {
		if m.Err != "" {
			rep.Failures = append(rep.Failures, fmt.Sprintf("ingest batch %d conns %d: %s", m.Batch, m.Conns, m.Err))
		}
	}
	if !o.keepWork() {
		_ = os.Remove(linesPath) // best effort: a work file
	}
	return rep, nil
}

func (o options) keepWork() bool { return os.Getenv("BENCH_KEEP") != "" }

// e2eRun is one end-to-end run of freeway all.
type e2eRun struct {
	Backends   string          `json:"backends,omitempty"`
	Writers    int             `json:"writers,omitempty"`
	Forwarded  float64         `json:"entries_forwarded,omitempty"` // between writers
	Entries    int64           `json:"entries"`
	AckSec     float64         `json:"ack_seconds"`
	AckPerSec  float64         `json:"ack_entries_per_second"`
	AckMBPerS  float64         `json:"ack_mb_per_second"`
	LogLatency loadgen.Latency `json:"log_latency_ms"`
	TryLater   int64           `json:"try_later"`
	Seconds    float64         `json:"seconds"`
	PerSec     float64         `json:"entries_per_second"`
	CPUSec     float64         `json:"cpu_seconds"`
	PerCPUSec  float64         `json:"entries_per_cpu_second"`
	LoadCPUSec float64         `json:"load_cpu_seconds"`
	PeakRSSMiB float64         `json:"peak_rss_mib"`
	// BacklogMax is the most entries acknowledged to the generator and
	// not yet aggregated at one scrape (every 100ms), AtAgentMax the most
	// of them still in the agent's queue: where a run's entries waited.
	BacklogMax float64 `json:"backlog_max_entries"`
	AtAgentMax float64 `json:"backlog_at_agent_max_entries"`
	// ShipMs is the agent's mean time from sending a batch upstream to
	// its OK (freeway_agent_ship_seconds), in flight max_in_flight at once.
	ShipMs  float64 `json:"ship_ms_mean"`
	Exact   bool    `json:"exact"`
	Totals  string  `json:"totals"`
	Profile string  `json:"profile,omitempty"`
	Err     string  `json:"error,omitempty"`
}

// countSumApp is the app every part of the bench runs: a count and a sum
// per key per minute, on the category of its name.
func countSumApp(name string) string {
	return fmt.Sprintf(`  - name: %[1]s
    category: %[1]s
    format: json
    time: {field: ts, layout: unix_ms}
    window: 1m
    group_by: [key]
    aggregates:
      - {name: n, fn: count}
      - {name: total, fn: sum, field: value}
`, name)
}

// e2e runs freeway all on fresh data, sends the lines with freeway
// load, waits until Puma has aggregated them all, and checks every cell.
func e2e(ctx context.Context, o options, round int, loadArgs []string, want map[loadgen.Cell]loadgen.Agg, be backends, n int64) (r e2eRun) {
	dir := filepath.Join(o.work, fmt.Sprintf("e2e-%d", round))
	_ = os.RemoveAll(dir)                    // best effort: what an interrupted run left
	defer func() { _ = os.RemoveAll(dir) }() // best effort: work files only
	fw, err := startFreeway(o.freeway, dir, fwConfig{apps: countSumApp("bench"), pprof: o.profile > 0 && round == 0, be: be, maxInFlight: o.inFlight,
		batchBytes: o.batchB, batchEntries: o.batchN, seqWindow: o.seqWindow, upstream: upstreamFor(o, be)}, nil)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer fw.kill()
	if err := fw.waitReady(2*time.Minute, 50*time.Millisecond); err != nil {
		r.Err = err.Error()
		return r
	}
	r.Writers = max(1, o.writers)
	extra, err := startExtraWriters(o, dir, be, countSumApp("bench"), fw)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer extra.kill()
	cpu0, _ := fw.cpu()
	cpu0 += extra.cpu()
	var prof sync.WaitGroup
	if o.profile > 0 && round == 0 {
		r.Profile = filepath.Join(o.work, "e2e-cpu.pprof")
		prof.Go(func() {
			if err := fetch(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", fw.http, int(o.profile.Seconds())), r.Profile); err != nil {
				log.Printf("profile: %v", err)
			}
		})
	}
	t0 := time.Now()
	type loadResult struct {
		sum loadgen.Summary
		cpu time.Duration
		err error
	}
	done := make(chan loadResult, 1)
	go func() {
		s, cpu, err := runLoad(ctx, o.freeway, append([]string{"--addr", fw.agent}, loadArgs...)...)
		done <- loadResult{s, cpu, err}
	}()
	limit := 10 * time.Minute
	if be.dfs != "" {
		limit = 30 * time.Minute
	}
	// Every read of /metrics costs freeway a little CPU: 10 a second
	// cost it under 1%, and place the end within 100ms.
	var last map[string]float64
	t1, err := fw.waitMetric("freeway_puma_entries_total", float64(n), limit, 100*time.Millisecond, func(m map[string]float64) {
		b := backlogOf(m)
		r.BacklogMax, r.AtAgentMax = max(r.BacklogMax, b.Entries), max(r.AtAgentMax, b.AtAgent)
		last = m
	})
	if c := last["freeway_agent_ship_seconds_count"]; c > 0 {
		r.ShipMs = last["freeway_agent_ship_seconds_sum"] / c * 1e3
	}
	cpu1, _ := fw.cpu()
	cpu1 += extra.cpu()
	lr := <-done
	prof.Wait()
	if err == nil {
		err = lr.err
	}
	if err != nil {
		r.Err = err.Error()
		return r
	}
	r.Entries = lr.sum.Entries
	r.AckSec, r.AckPerSec, r.AckMBPerS = lr.sum.Seconds, lr.sum.PerSec, lr.sum.MBPerSec
	r.LogLatency, r.TryLater = lr.sum.LatencyMs, lr.sum.TryLater
	r.LoadCPUSec = lr.cpu.Seconds()
	r.Seconds = t1.Sub(t0).Seconds()
	r.PerSec = float64(n) / r.Seconds
	r.CPUSec = (cpu1 - cpu0).Seconds()
	if r.CPUSec > 0 {
		r.PerCPUSec = float64(n) / r.CPUSec
	}
	r.PeakRSSMiB, _ = fw.status("VmHWM")
	r.PeakRSSMiB /= 1 << 20
	a, err := fw.query(ctx, url.Values{"app": {"bench"}, "from": {"0"}, "to": {strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)}})
	if err != nil {
		r.Err = err.Error()
		return r
	}
	if a.Truncated || a.Partial {
		r.Err = fmt.Sprintf("answer truncated %v, partial %v", a.Truncated, a.Partial)
	}
	r.Exact, r.Totals = loadgen.Compare(want, a.cells("key", "n", "total"))
	if len(extra) > 0 {
		r.Forwarded = extra.sum(fw, `freeway_calligraphus_entries_forwarded_total{direction="out"}`)
	}
	if err := extra.stop(time.Minute); err != nil && r.Err == "" {
		r.Err = err.Error()
	}
	if err := fw.stop(time.Minute); err != nil && r.Err == "" {
		r.Err = err.Error()
	}
	return r
}

// agentRun is B2: what an agent alone acknowledges durably.
type agentRun struct {
	Entries      int64           `json:"entries"`
	Seconds      float64         `json:"seconds"`
	PerSec       float64         `json:"entries_per_second"`
	MBPerSec     float64         `json:"mb_per_second"`
	LogLatency   loadgen.Latency `json:"log_latency_ms"`
	TryLater     int64           `json:"try_later"`
	CPUSec       float64         `json:"cpu_seconds"`
	CPUMicros    float64         `json:"cpu_us_per_entry"`
	LoadCPUSec   float64         `json:"load_cpu_seconds"`
	QueueEntries float64         `json:"queue_entries"`
	QueueBytes   float64         `json:"queue_bytes"`
	Syncs        float64         `json:"queue_syncs"`
	Err          string          `json:"error,omitempty"`
}

// agentAlone runs `freeway agent` with an upstream where nothing
// listens (nothing ships: the queue only grows, and no shipping shares
// the cores with the Log calls), sends it the lines with freeway load,
// and takes the rate the generator saw acknowledged with the agent's
// CPU over the load. The figure counts only if the agent's queue then
// holds every acknowledged entry: freeway_agent_queue_entries, and the
// queue read back once the agent stopped holds exactly the lines sent,
// each once (checkQueueHolds; its records are compressed, so their bytes
// say nothing). An OK the queue does not hold would be a lie the rate
// must not include.
func agentAlone(ctx context.Context, o options, round int, loadArgs []string, n int64, linesPath string) (r agentRun) {
	dir := filepath.Join(o.work, fmt.Sprintf("agent-%d", round))
	_ = os.RemoveAll(dir)                    // best effort: what an interrupted run left
	defer func() { _ = os.RemoveAll(dir) }() // best effort: work files only
	ports, err := freePorts(3)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	// Port 1 of the loopback: connections are refused at once. The
	// queue's bound leaves room for every line with its record header.
	fc := fwConfig{target: "agent", apps: countSumApp("bench"), upstream: "127.0.0.1:1", maxInFlight: o.inFlight,
		maxQueueBytes: max(1<<30, n*1024)}
	fw, err := startFreeway(o.freeway, dir, fc, ports)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer fw.kill()
	if err := fw.waitReady(time.Minute, 50*time.Millisecond); err != nil {
		r.Err = err.Error()
		return r
	}
	cpu0, _ := fw.cpu()
	s, loadCPU, err := runLoad(ctx, o.freeway, append([]string{"--addr", fw.agent}, loadArgs...)...)
	cpu1, _ := fw.cpu()
	if err != nil {
		r.Err = err.Error()
		return r
	}
	r.Entries, r.Seconds, r.PerSec, r.MBPerSec = s.Entries, s.Seconds, s.PerSec, s.MBPerSec
	r.LogLatency, r.TryLater, r.LoadCPUSec = s.LatencyMs, s.TryLater, loadCPU.Seconds()
	r.CPUSec = (cpu1 - cpu0).Seconds()
	if s.Entries > 0 {
		r.CPUMicros = r.CPUSec * 1e6 / float64(s.Entries)
	}
	m, err := fw.metrics()
	if err != nil {
		r.Err = err.Error()
		return r
	}
	r.QueueEntries, r.QueueBytes, r.Syncs = m["freeway_agent_queue_entries"], m["freeway_agent_queue_bytes"], m["freeway_agent_queue_syncs_total"]
	switch {
	case s.Entries != n:
		r.Err = fmt.Sprintf("%d of %d entries acknowledged", s.Entries, n)
	case r.QueueEntries != float64(n):
		r.Err = fmt.Sprintf("the agent acknowledged %d entries but its queue holds %.0f", n, r.QueueEntries)
	}
	if err := fw.stop(time.Minute); err != nil && r.Err == "" {
		r.Err = err.Error()
	}
	if r.Err == "" {
		if err := checkQueueHolds(filepath.Join(dir, "data", "agent"), linesPath); err != nil {
			r.Err = err.Error()
		}
	}
	return r
}

// engineBackends names fresh roots on the real engines of make engines.
func engineBackends() (backends, error) {
	hdfs, hbase, zk := os.Getenv("FREEWAY_TEST_HDFS"), os.Getenv("FREEWAY_TEST_HBASE"), os.Getenv("FREEWAY_TEST_ZK")
	if hdfs == "" || hbase == "" || zk == "" {
		return backends{}, errors.New("set FREEWAY_TEST_HDFS, FREEWAY_TEST_HBASE and FREEWAY_TEST_ZK (make engines; export $(deploy/engines/engines.sh env))")
	}
	id := strconv.FormatInt(time.Now().UnixNano(), 36)
	be := backends{
		dfs:   fmt.Sprintf("hdfs://%s/freeway-bench-%s", hdfs, id),
		store: fmt.Sprintf("hbase://%s/bench%s_", hbase, id),
		coord: fmt.Sprintf("zk://%s/freeway-bench-%s", zk, id),
	}
	if hbase == "embedded" {
		// The publishing path alone (HDFS and ZooKeeper), the store on
		// the local disk: FREEWAY_TEST_HBASE=embedded.
		be.store = ""
	}
	return be, nil
}

// removeEngineRoots deletes what a run on the real engines left there: its
// dfs root (0.5 to 2 GB of segments a run at 300 k entries/s) and Puma's
// table; left, a day of benches fills the NameNode's disk. ZooKeeper's
// few znodes a run are left. A failure is a note of the report, not a
// failed bench.
func removeEngineRoots(rep *report, be backends) {
	if be.dfs == "" {
		return
	}
	note := func(err error) {
		log.Printf("cleaning up after the run on %s: %v", be, err)
		rep.Notes = append(rep.Notes, fmt.Sprintf("not removed after its run: %v", err))
	}
	if err := fwbackends.RemoveDFS(be.dfs); err != nil {
		note(err)
	}
	if be.store == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := fwbackends.DropTables(ctx, be.store, puma.DefaultConfig().Table); err != nil {
		note(err)
	}
}

// matrixRun is B1 for one batch size and connection count.
type matrixRun struct {
	Batch      int             `json:"batch"`
	Conns      int             `json:"conns"`
	PerSec     float64         `json:"entries_per_second"`
	MBPerSec   float64         `json:"mb_per_second"`
	LogLatency loadgen.Latency `json:"log_latency_ms"`
	TryLater   int64           `json:"try_later"`
	Err        string          `json:"error,omitempty"`
}

// matrix measures what a writer alone (freeway calligraphus, embedded
// dfs) acknowledges durably, by batch size and connections (B1).
func matrix(ctx context.Context, o options) []matrixRun {
	dir := filepath.Join(o.work, "ingest")
	_ = os.RemoveAll(dir)                    // best effort: what an interrupted run left
	defer func() { _ = os.RemoveAll(dir) }() // best effort: work files only
	batches, conns := []int{1, 100, 1000}, []int{1, 8, 64}
	if o.mode == "smoke" {
		batches, conns = []int{100}, []int{2}
	}
	var out []matrixRun
	fw, err := startFreeway(o.freeway, dir, fwConfig{target: "calligraphus", apps: countSumApp("bench")}, nil)
	if err == nil {
		defer fw.kill()
		err = fw.waitReady(time.Minute, 50*time.Millisecond)
	}
	if err != nil {
		return []matrixRun{{Err: err.Error()}}
	}
	for _, b := range batches {
		for _, c := range conns {
			m := matrixRun{Batch: b, Conns: c}
			s, _, err := runLoad(ctx, o.freeway, "--addr", fw.writer, "--category", "bench", "--batch", strconv.Itoa(b),
				"--conns", strconv.Itoa(c), "--duration", o.matrixFor.String(), "--keys", strconv.Itoa(o.keys))
			if err != nil {
				m.Err = err.Error()
			}
			m.PerSec, m.MBPerSec, m.LogLatency, m.TryLater = s.PerSec, s.MBPerSec, s.LatencyMs, s.TryLater
			log.Printf("ingest by a writer, batch %d, %d connections: %.0f entries/s, %.1f MB/s, Log p50 %.2fms p99 %.2fms",
				b, c, m.PerSec, m.MBPerSec, m.LogLatency.P50, m.LogLatency.P99)
			out = append(out, m)
		}
	}
	if err := fw.stop(time.Minute); err != nil {
		log.Printf("stop freeway: %v", err) // the measurements are taken; the log says why it did not stop
	}
	return out
}

// freshnessRun is B5.
type freshnessRun struct {
	Backends   string  `json:"backends,omitempty"`
	SegmentAge string  `json:"segment_max_age"`
	Rate       float64 `json:"rate"`
	Achieved   float64 `json:"achieved_entries_per_second"`
	Seconds    float64 `json:"seconds"`
	Probes     int     `json:"probes"`
	Seen       int     `json:"seen"`
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
	MaxMs      float64 `json:"max_ms"`
	// Stages splits the probes' freshness (embedded backends only).
	Stages *freshStages `json:"stages,omitempty"`
	Err    string       `json:"error,omitempty"`
}

const probeApp = `  - name: probe
    category: bench
    format: json
    time: {field: ts, layout: unix_ms}
    window: 1m
    where: key >= "probe-" and key < "probe."
    group_by: [id]
    aggregates:
      - {name: n, fn: count}
`

// freshness sends a steady load at rate and, every 200ms, a probe line
// (its own id, its send time as event time) to the agent, and polls a
// query for the probes every 20ms: a probe's freshness is from just
// before its Log call to the first answer that holds it (B5).
func freshness(ctx context.Context, o options, rate float64, segmentAge time.Duration, be backends) (r freshnessRun) {
	r.Rate = rate
	r.Backends = be.String()
	if r.Backends != "" {
		r.Backends += "; " + o.batches()
	}
	// This build's default, until the binary's own says otherwise (below).
	r.SegmentAge = fmt.Sprintf("%v (default on a local disk)", calligraphus.LocalSegmentMaxAge)
	if be.dfs != "" {
		r.SegmentAge = "default (HDFS: every acknowledgement publishes)"
	}
	if segmentAge > 0 {
		r.SegmentAge = segmentAge.String()
	}
	dir := filepath.Join(o.work, "fresh")
	_ = os.RemoveAll(dir)                    // best effort: what an interrupted run left
	defer func() { _ = os.RemoveAll(dir) }() // best effort: work files only
	fw, err := startFreeway(o.freeway, dir, fwConfig{apps: countSumApp("bench") + probeApp, segmentAge: segmentAge, be: be,
		maxInFlight: o.inFlight, batchBytes: o.batchB, batchEntries: o.batchN, seqWindow: o.seqWindow}, nil)
	if err == nil {
		defer fw.kill()
		err = fw.waitReady(time.Minute, 50*time.Millisecond)
	}
	if err != nil {
		r.Err = err.Error()
		return r
	}
	if segmentAge == 0 && be.dfs == "" {
		// The age the binary under test chose (one before the metric
		// has none: this build's is said).
		if v, err := fw.metric("freeway_calligraphus_segment_max_age_seconds"); err == nil && v > 0 {
			r.SegmentAge = fmt.Sprintf("%v (default on a local disk)", time.Duration(v*float64(time.Second)).Round(time.Millisecond))
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	loadDone := make(chan loadgen.Summary, 1)
	go func() {
		s, _, err := runLoad(ctx, o.freeway, "--addr", fw.agent, "--category", "bench", "--rate", strconv.FormatFloat(rate, 'f', 0, 64),
			"--duration", o.fresh.String(), "--keys", strconv.Itoa(o.keys), "--conns", strconv.Itoa(o.conns), "--batch", strconv.Itoa(min(o.batch, max(1, int(rate/float64(o.conns)/100)))))
		if err != nil {
			log.Printf("freshness load: %v", err)
		}
		loadDone <- s
	}()
	samples, sendErr := probeLag(ctx, fw, 200*time.Millisecond, o.fresh, 10*time.Second)
	s := <-loadDone
	r.Achieved, r.Seconds = s.PerSec, s.Seconds
	r.Probes = len(samples)
	r.Seen, r.P50Ms, r.P99Ms, r.MaxMs = lagOf(samples)
	switch {
	case sendErr != nil:
		r.Err = sendErr.Error()
	case r.Seen < r.Probes:
		r.Err = fmt.Sprintf("%d of %d probes never seen in a query", r.Probes-r.Seen, r.Probes)
	}
	log.Printf("freshness, segment_max_age %s, at %.0f entries/s (achieved %.0f): p50 %.0fms p99 %.0fms max %.0fms over %d probes", r.SegmentAge, rate, r.Achieved, r.P50Ms, r.P99Ms, r.MaxMs, r.Seen)
	if be.dfs == "" {
		// Every probe is in a published segment by now (each was seen).
		published, created, err := probeSegments(filepath.Join(dir, "data", "dfs"))
		sent, acked, seen := probeTimes(samples)
		if err != nil {
			log.Printf("freshness stages: %v", err)
		} else if st := stages(sent, acked, seen, published, created); st.Probes > 0 {
			r.Stages = &st
			log.Printf("freshness stages (p50 / p99 ms, %d probes): Log call %.0f / %.0f, to the publish of its segment %.0f / %.0f, publish to seen %.0f / %.0f; segments that held a probe lived %.0f / %.0f",
				st.Probes, st.LogP50, st.LogP99, st.ToPublishP50, st.ToPublishP99, st.ToSeenP50, st.ToSeenP99, st.SegmentLifeP50, st.SegmentLifeP99)
		}
	}
	if err := fw.stop(time.Minute); err != nil {
		log.Printf("stop freeway: %v", err) // the measurements are taken; the log says why it did not stop
	}
	return r
}

// cellsResult is B8, B6 and B7 at many cells.
type cellsResult struct {
	Cells        int64          `json:"cells"`
	Interval     string         `json:"checkpoint_interval"`
	LoadSec      float64        `json:"load_seconds"`
	Checkpoints  []checkpoint   `json:"checkpoints"`
	HeapBytes    float64        `json:"heap_bytes_per_cell"`
	RSSBytes     float64        `json:"rss_bytes_per_cell"`
	RSSFileBytes float64        `json:"rss_file_bytes_per_cell"` // of RSSBytes, pages of mapped files
	RSSMiB       float64        `json:"rss_mib"`
	HeapMiB      float64        `json:"heap_mib"`
	StopSec      float64        `json:"stop_seconds"`
	RecoverySec  float64        `json:"recovery_seconds"`
	RecoveredRSS float64        `json:"recovered_rss_mib"`
	Queries      []queryLatency `json:"queries"`
	Exact        bool           `json:"exact"`
	Totals       string         `json:"totals"`
	Err          string         `json:"error,omitempty"`
}

type checkpoint struct {
	Cells   float64 `json:"cells"`
	Seconds float64 `json:"seconds"`
}

type queryLatency struct {
	Name  string  `json:"name"`
	Query string  `json:"query"`
	Rows  int     `json:"rows"`
	N     int     `json:"n"`
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
}

// cellsRun loads one line per key for o.cells keys into one shard, waits
// for the checkpoint that writes them, measures memory per cell and
// query latencies, then restarts freeway and times its recovery.
func cellsRun(ctx context.Context, o options) (r cellsResult) {
	r.Cells, r.Interval = o.cells, o.cellsCkpt.String()
	dir := filepath.Join(o.work, "cells")
	_ = os.RemoveAll(dir)                    // best effort: what an interrupted run left
	defer func() { _ = os.RemoveAll(dir) }() // best effort: work files only
	fw, err := startFreeway(o.freeway, dir, fwConfig{apps: countSumApp("cells"), categories: "  cells: {buckets: 1}\n", checkpoint: o.cellsCkpt, pprof: true}, nil)
	if err == nil {
		defer fw.kill()
		err = fw.waitReady(time.Minute, 50*time.Millisecond)
	}
	if err != nil {
		r.Err = err.Error()
		return r
	}
	fail := func(err error) cellsResult {
		r.Err = err.Error()
		return r
	}
	heap0, rss0, file0, err := liveHeap(fw)
	if err != nil {
		return fail(err)
	}
	m0, err := fw.metrics()
	if err != nil {
		return fail(err)
	}
	// One line per key; event times within a minute or two of now.
	start := time.Now().Truncate(time.Minute)
	spec := loadgen.Lines{Format: loadgen.JSON, Keys: int(o.cells), Sequential: true, Seed: 2, Start: start, Step: 10 * time.Microsecond}
	var total loadgen.Agg
	for i := range o.cells {
		rec := spec.Record(i, 0)
		total.Count++
		total.Sum += rec.Value
	}
	var profiles sync.WaitGroup
	defer profiles.Wait()
	profile := func(name string, d time.Duration) {
		if o.profile <= 0 {
			return
		}
		path := filepath.Join(o.work, name)
		profiles.Go(func() {
			if err := fetch(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", fw.http, int(d.Seconds())), path); err != nil {
				log.Printf("profile: %v", err)
			} else {
				log.Printf("profile: %s", path)
			}
		})
	}
	// The load, the aggregation and the first checkpoint.
	profile("cells-load-checkpoint.pprof", o.cellsCkpt+10*time.Second)
	t0 := time.Now()
	if _, _, err := runLoad(ctx, o.freeway, "--addr", fw.agent, "--category", "cells", "--count", strconv.FormatInt(o.cells, 10),
		"--keys", strconv.FormatInt(o.cells, 10), "--sequential-keys", "--size", "0", "--seed", "2",
		"--start", strconv.FormatInt(start.Unix(), 10), "--step", spec.Step.String(), "--conns", strconv.Itoa(o.conns), "--batch", strconv.Itoa(o.batch)); err != nil {
		return fail(err)
	}
	if _, err := fw.waitMetric("freeway_puma_entries_total", float64(o.cells), 10*time.Minute, 100*time.Millisecond, nil); err != nil {
		return fail(err)
	}
	r.LoadSec = time.Since(t0).Seconds()
	// Each checkpoint of the one shard is a step of the counters.
	last := m0
	deadline := time.Now().Add(3*o.cellsCkpt + time.Minute)
	var written float64
	for written < float64(o.cells) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		m, err := fw.metrics()
		if err != nil {
			return fail(err)
		}
		if m["freeway_puma_checkpoints_total"] > last["freeway_puma_checkpoints_total"] {
			c := checkpoint{Cells: m["freeway_puma_checkpoint_cells_total"] - last["freeway_puma_checkpoint_cells_total"],
				Seconds: m["freeway_puma_checkpoint_seconds_sum"] - last["freeway_puma_checkpoint_seconds_sum"]}
			if n := m["freeway_puma_checkpoints_total"] - last["freeway_puma_checkpoints_total"]; n > 1 {
				log.Printf("cells: %.0f checkpoints between two reads of the metrics; their sum is reported as one", n)
			}
			written += c.Cells
			r.Checkpoints = append(r.Checkpoints, c)
			log.Printf("cells: checkpoint of %.0f cells took %.3fs", c.Cells, c.Seconds)
			last = m
		}
	}
	if written < float64(o.cells) {
		return fail(fmt.Errorf("checkpoints wrote %.0f of %d cells within the wait", written, o.cells))
	}
	heap1, rss1, file1, err := liveHeap(fw)
	if err != nil {
		return fail(err)
	}
	r.HeapBytes, r.RSSBytes = (heap1-heap0)/float64(o.cells), (rss1-rss0)/float64(o.cells)
	r.RSSFileBytes = (file1 - file0) / float64(o.cells)
	r.HeapMiB, r.RSSMiB = heap1/(1<<20), rss1/(1<<20)
	log.Printf("cells: %.0f bytes of live heap and %.0f of RSS per cell, %.0f of it file-backed (heap %.0f MiB, RSS %.0f MiB)", r.HeapBytes, r.RSSBytes, r.RSSFileBytes, r.HeapMiB, r.RSSMiB)

	// Queries over the cells: a point query (one key, where=) and a
	// top-10 (order_by the sum, limit 10), then the merges.
	pointKey := loadgen.KeyName(spec.Record(o.cells/2, 0).Key, spec.Keys)
	to := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	from := strconv.FormatInt(start.Add(-time.Hour).Unix(), 10)
	base := url.Values{"app": {"cells"}, "from": {from}, "to": {to}}
	with := func(kv ...string) url.Values {
		v := url.Values{}
		for k, x := range base {
			v[k] = x
		}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v
	}
	smoke := o.mode == "smoke"
	qs := []struct {
		name   string
		params url.Values
		n      int
		budget time.Duration
	}{
		{"point query (where=key:" + pointKey + ")", with("where", "key:"+pointKey), 200, 20 * time.Second},
		{"top-10 (order_by=total, limit=10)", with("order_by", "total", "limit", "10"), 200, 20 * time.Second},
		{"all keys merged (group_by=, window=all): one row from every cell", with("group_by", "", "window", "all"), 50, 20 * time.Second},
		{"every cell (no limit)", base, 3, 30 * time.Second},
	}
	profile("cells-queries.pprof", 15*time.Second) // the point and top-10 queries
	for _, q := range qs {
		n := q.n
		if smoke {
			n = min(n, 5)
		}
		ql := queryLatency{Name: q.name, Query: q.params.Encode()}
		var lat []float64
		end := time.Now().Add(q.budget)
		for i := 0; i < n && (i < 3 || time.Now().Before(end)); i++ {
			t := time.Now()
			a, err := fw.query(ctx, q.params)
			if err != nil {
				return fail(err)
			}
			lat = append(lat, float64(time.Since(t))/1e6)
			ql.Rows = len(a.Rows)
			if q.name == qs[2].name && i == 0 {
				got := loadgen.Agg{}
				if len(a.Rows) == 1 {
					got = loadgen.Agg{Count: int64(a.Rows[0].Values["n"]), Sum: int64(a.Rows[0].Values["total"])}
				}
				r.Exact = got == total && len(a.Rows) == 1
				r.Totals = fmt.Sprintf("count %d sum %d (want %d and %d)", got.Count, got.Sum, total.Count, total.Sum)
			}
		}
		ql.N = len(lat)
		ql.P50Ms, ql.P99Ms, ql.MaxMs = quantile(lat, 0.5), quantile(lat, 0.99), quantile(lat, 1)
		log.Printf("query %s: %d rows, p50 %.1fms p99 %.1fms over %d", q.name, ql.Rows, ql.P50Ms, ql.P99Ms, ql.N)
		r.Queries = append(r.Queries, ql)
	}
	if rows := r.Queries[3].Rows; int64(rows) != o.cells {
		r.Exact = false
		r.Totals += fmt.Sprintf("; %d cells answered, want %d", rows, o.cells)
	}

	// Recovery: a clean stop (a final checkpoint of nothing new), then a
	// start on the same data; ready means every shard has recovered.
	t := time.Now()
	if err := fw.stop(2 * time.Minute); err != nil {
		return fail(err)
	}
	r.StopSec = time.Since(t).Seconds()
	if err := fw.restart(o.freeway); err != nil {
		return fail(err)
	}
	if err := fw.waitReady(5*time.Minute, 10*time.Millisecond); err != nil {
		return fail(err)
	}
	r.RecoverySec = time.Since(fw.started).Seconds()
	rss, _ := fw.status("VmRSS")
	r.RecoveredRSS = rss / (1 << 20)
	a, err := fw.query(ctx, with("group_by", "", "window", "all"))
	if err != nil {
		return fail(err)
	}
	if len(a.Rows) != 1 || int64(a.Rows[0].Values["n"]) != total.Count || int64(a.Rows[0].Values["total"]) != total.Sum {
		r.Exact = false
		r.Totals += "; after recovery the totals differ"
	} else {
		r.Totals += "; the same after recovery"
	}
	log.Printf("cells: stop %.2fs, restart to ready %.2fs (RSS %.0f MiB); %s", r.StopSec, r.RecoverySec, r.RecoveredRSS, r.Totals)
	if !r.Exact {
		r.Err = "totals not exact: " + r.Totals
	}
	if err := fw.stop(time.Minute); err != nil {
		log.Printf("stop freeway: %v", err) // the measurements are taken; the log says why it did not stop
	}
	return r
}

// liveHeap forces a GC (pprof's heap?gc=1) and reads the live heap and RSS.
func liveHeap(fw *fwProc) (heap, rss, file float64, err error) {
	if err := fetch("http://"+fw.http+"/debug/pprof/heap?gc=1", os.DevNull); err != nil {
		return 0, 0, 0, err
	}
	m, err := fw.metrics()
	if err != nil {
		return 0, 0, 0, err
	}
	if rss, err = fw.status("VmRSS"); err != nil {
		return 0, 0, 0, err
	}
	// RssFile: pages of mapped files (the embedded store's bbolt file),
	// page cache the kernel can take back, counted in RSS.
	file, err = fw.status("RssFile")
	return m["go_memstats_heap_alloc_bytes"], rss, file, err
}

func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[int(math.Round(q*float64(len(s)-1)))]
}

func median[T any](runs []T, f func(T) float64) float64 {
	var v []float64
	for _, r := range runs {
		if x := f(r); x > 0 && !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func spread[T any](runs []T, f func(T) float64) (lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, r := range runs {
		x := f(r)
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}
