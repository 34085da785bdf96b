package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

type report struct {
	Date         time.Time         `json:"date"`
	Commit       string            `json:"commit"`
	Command      string            `json:"command"`
	Mode         string            `json:"mode"`
	Machine      map[string]string `json:"machine"`
	LoadAvgStart string            `json:"load_average_start"`
	LoadAvgEnd   string            `json:"load_average_end"`
	Lines        int64             `json:"lines"`
	LineSpec     string            `json:"line_spec"`
	Keys         int               `json:"keys"`
	Cells        int               `json:"cells"`
	Conns        int               `json:"conns"`
	Batch        int               `json:"batch"`
	Runs         int               `json:"runs"`
	E2E          []e2eRun          `json:"freeway_end_to_end"`
	AgentAlone   []agentRun        `json:"agent_alone,omitempty"`
	Engines      *e2eRun           `json:"freeway_real_engines,omitempty"`
	Peers        []peerResult      `json:"peers"`
	Matrix       []matrixRun       `json:"ingest_by_batch_and_conns,omitempty"`
	Freshness    []freshnessRun    `json:"freshness,omitempty"`
	Sustained    *sustainedRun     `json:"sustained_real_engines,omitempty"`
	// The same two runs on the real engines with several writers.
	EnginesWriters   *e2eRun       `json:"freeway_real_engines_writers,omitempty"`
	SustainedWriters *sustainedRun `json:"sustained_real_engines_writers,omitempty"`
	CellsRun         *cellsResult  `json:"cells_run,omitempty"`
	Summary          summary       `json:"summary"`
	Notes            []string      `json:"notes,omitempty"`
	Failures         []string      `json:"failures,omitempty"`
}

type peerResult struct {
	Name    string    `json:"name"`
	Version string    `json:"version"`
	Note    string    `json:"note"`
	Runs    []peerRun `json:"runs"`
}

// summary holds the medians and ratios the report leads with.
type summary struct {
	E2EPerSec     float64 `json:"freeway_entries_per_second"`
	E2EPerCPUSec  float64 `json:"freeway_entries_per_cpu_second"`
	AckPerSec     float64 `json:"freeway_ack_entries_per_second"`
	AgentPerSec   float64 `json:"agent_alone_ack_entries_per_second,omitempty"`
	AgentCPUUs    float64 `json:"agent_alone_cpu_us_per_entry,omitempty"`
	LimitPerSec   float64 `json:"limit_entries_per_second,omitempty"`
	DuckDBPerSec  float64 `json:"duckdb_entries_per_second,omitempty"`
	FlinkPerCPU   float64 `json:"flink_entries_per_cpu_second,omitempty"`
	VsLimit       float64 `json:"freeway_over_limit,omitempty"`
	VsDuckDB      float64 `json:"freeway_over_duckdb,omitempty"`
	VsFlinkPerCPU float64 `json:"freeway_over_flink_per_cpu_second,omitempty"`
}

func (r *report) summarize() {
	s := &r.Summary
	s.E2EPerSec = median(r.E2E, func(e e2eRun) float64 { return e.PerSec })
	s.E2EPerCPUSec = median(r.E2E, func(e e2eRun) float64 { return e.PerCPUSec })
	s.AckPerSec = median(r.E2E, func(e e2eRun) float64 { return e.AckPerSec })
	s.AgentPerSec = median(r.AgentAlone, func(a agentRun) float64 { return a.PerSec })
	s.AgentCPUUs = median(r.AgentAlone, func(a agentRun) float64 { return a.CPUMicros })
	for _, p := range r.Peers {
		rate := median(p.Runs, func(x peerRun) float64 { return x.PerSec })
		perCPU := median(p.Runs, func(x peerRun) float64 { return x.PerCPUSec })
		switch p.Name {
		case "hand-written limit":
			s.LimitPerSec = rate
		case "DuckDB":
			s.DuckDBPerSec = rate
		case "Flink":
			s.FlinkPerCPU = perCPU
		}
	}
	ratio := func(a, b float64) float64 {
		if a <= 0 || b <= 0 {
			return 0
		}
		return a / b
	}
	s.VsLimit = ratio(s.E2EPerSec, s.LimitPerSec)
	s.VsDuckDB = ratio(s.E2EPerSec, s.DuckDBPerSec)
	s.VsFlinkPerCPU = ratio(s.E2EPerCPUSec, s.FlinkPerCPU)
}

func (r *report) write(o options) (string, error) {
	r.summarize()
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return "", err
	}
	name := r.Date.Format("2006-01-02")
	if r.Mode == "smoke" {
		name += "-smoke"
	}
	base := filepath.Join(o.out, name)
	j, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(base+".json", append(j, '\n'), 0o644); err != nil {
		return "", err
	}
	return base + ".md", os.WriteFile(base+".md", []byte(r.markdown()), 0o644)
}

func k(v float64) string {
	switch {
	case math.IsNaN(v) || v == 0:
		return "–"
	case v >= 1e6:
		return fmt.Sprintf("%.2f M", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.0f k", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

func rangeOf[T any](runs []T, f func(T) float64) string {
	if len(runs) < 2 {
		return ""
	}
	lo, hi := spread(runs, f)
	return fmt.Sprintf(" (%s–%s)", k(lo), k(hi))
}

func exactOf(ok []bool) string {
	if len(ok) == 0 {
		return "–"
	}
	for _, x := range ok {
		if !x {
			return "**NOT exact**"
		}
	}
	return "exact"
}

func (r *report) markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	title := "Benchmarks"
	if r.Mode == "smoke" {
		title = "Benchmark smoke run (tiny sizes: figures mean nothing)"
	}
	w("# %s, %s\n\n", title, r.Date.Format("2006-01-02 15:04 MST"))
	verdict := "All totals exact."
	if len(r.Failures) > 0 {
		verdict = "FAILURES: " + strings.Join(r.Failures, "; ")
	}
	w("**%s**\n\n", verdict)
	w("- Command: `%s`\n", r.Command)
	w("- Freeway commit: %s\n", r.Commit)
	m := r.Machine
	w("- Machine: nproc %s, %s (%s CPUs, %s thread(s) per core, hypervisor %s), %s, %s, %s\n",
		m["nproc"], m["Model name"], m["CPU(s)"], m["Thread(s) per core"], orDash(m["Hypervisor vendor"]), m["memory"], m["go"], orDash(m["java"]))
	w("- Load average (1, 5, 15 min) at the start: %s; at the end: %s. The machine is shared: other work ran beside the bench.\n", r.LoadAvgStart, r.LoadAvgEnd)
	w("- Lines: %d JSON lines of 176 bytes over %d keys (%d cells of key × minute), made once from a seed (`%s`); every system read the very same lines and its totals were checked cell by cell against the generator's count and sum.\n", r.Lines, r.Keys, r.Cells, r.LineSpec)
	w("- Rounds: %d; each round runs every system once, one after the other, so that the machine's noise falls on all alike. Figures are medians, ranges in brackets.\n\n", r.Runs)

	s := r.Summary
	w("## Side by side: count and sum per key per minute\n\n")
	w("| system | entries/s | CPU-seconds | entries per CPU-second | peak RSS | totals |\n|---|---|---|---|---|---|\n")
	w("| Freeway end to end (agent → writer → dfs → Puma → query; `freeway all`, embedded backends) | %s%s | %.1f (+ %.1f of the generator) | %s%s | %.0f MiB | %s |\n",
		k(s.E2EPerSec), rangeOf(r.E2E, func(e e2eRun) float64 { return e.PerSec }),
		median(r.E2E, func(e e2eRun) float64 { return e.CPUSec }), median(r.E2E, func(e e2eRun) float64 { return e.LoadCPUSec }),
		k(s.E2EPerCPUSec), rangeOf(r.E2E, func(e e2eRun) float64 { return e.PerCPUSec }),
		median(r.E2E, func(e e2eRun) float64 { return e.PeakRSSMiB }), exactOf(mapSlice(r.E2E, func(e e2eRun) bool { return e.Exact && e.Err == "" })))
	w("| Freeway durable acknowledgement (the agent's OK, fsynced; same runs, shipping beside the Log calls) | %s%s | | | | |\n",
		k(s.AckPerSec), rangeOf(r.E2E, func(e e2eRun) float64 { return e.AckPerSec }))
	if len(r.AgentAlone) > 0 {
		perCPU := 0.0
		if s.AgentCPUUs > 0 {
			perCPU = 1e6 / s.AgentCPUUs
		}
		w("| B2: Freeway durable acknowledgement by an agent alone (`freeway agent`, nothing ships) | %s%s | %.2f (+ %.2f of the generator) | %s | | %s |\n",
			k(s.AgentPerSec), rangeOf(r.AgentAlone, func(a agentRun) float64 { return a.PerSec }),
			median(r.AgentAlone, func(a agentRun) float64 { return a.CPUSec }), median(r.AgentAlone, func(a agentRun) float64 { return a.LoadCPUSec }),
			k(perCPU), exactOf(mapSlice(r.AgentAlone, func(a agentRun) bool { return a.Err == "" })))
	}
	for _, p := range r.Peers {
		w("| %s (%s) | %s%s | %.1f | %s%s | %.0f MiB | %s |\n", p.Name, p.Version,
			k(median(p.Runs, func(x peerRun) float64 { return x.PerSec })), rangeOf(p.Runs, func(x peerRun) float64 { return x.PerSec }),
			median(p.Runs, func(x peerRun) float64 { return x.CPUSec }),
			k(median(p.Runs, func(x peerRun) float64 { return x.PerCPUSec })), rangeOf(p.Runs, func(x peerRun) float64 { return x.PerCPUSec }),
			median(p.Runs, func(x peerRun) float64 { return x.PeakRSSMiB }), exactOf(mapSlice(p.Runs, func(x peerRun) bool { return x.Exact && x.Err == "" })))
	}
	w("\nFreeway's entries/s run from the first line sent to the moment Puma had aggregated the last one (queryable: `freeway all` answers from Puma's memory); its CPU-seconds are the freeway process's over that time (from /proc), the generator's (`freeway load`, a separate process on the same two cores) apart. ")
	for _, p := range r.Peers {
		w("%s: %s. ", p.Name, p.Note)
	}
	w("\n\n")
	if r.Engines != nil {
		e := r.Engines
		w("On the real engines (%s): acknowledged %s/s, end to end %s/s (%s per CPU-second of freeway), %s.\n\n", e.Backends, k(e.AckPerSec), k(e.PerSec), k(e.PerCPUSec), e.Totals)
	}
	if e := r.EnginesWriters; e != nil {
		w("On the real engines with %d writers (`freeway all` and %d `freeway calligraphus` on the same engines and settings, the agent's upstream their ZooKeeper URL): acknowledged %s/s, end to end %s/s (%s per CPU-second of the freeway processes), %s entries forwarded between writers, %s%s.\n\n",
			e.Writers, e.Writers-1, k(e.AckPerSec), k(e.PerSec), k(e.PerCPUSec), k(e.Forwarded), e.Totals, errSuffix(e.Err))
	}

	w("Ratios in this run: Freeway end to end / hand-written limit **%s**, Freeway / DuckDB **%s**, Freeway per CPU-second / Flink per CPU-second **%.2f×**.\n\n", pct(s.VsLimit), pct(s.VsDuckDB), s.VsFlinkPerCPU)
	w("## Against the goals of issue 10\n\n| goal | measured | |\n|---|---|---|\n")
	goal := func(name, measured string, met bool, known bool) {
		st := "not met"
		switch {
		case !known:
			st = "not measured"
		case met:
			st = "met"
		}
		w("| %s | %s | %s |\n", name, measured, st)
	}
	goal("end to end ≥ 1 M entries/s", k(s.E2EPerSec)+"/s", s.E2EPerSec >= 1e6, s.E2EPerSec > 0)
	goal("≥ 40 % of the hand-written limit", pct(s.VsLimit), s.VsLimit >= 0.4, s.VsLimit > 0)
	goal("≥ 30 % of DuckDB's batch GROUP BY", pct(s.VsDuckDB), s.VsDuckDB >= 0.3, s.VsDuckDB > 0)
	goal("≥ 5× Flink per CPU-second", fmt.Sprintf("%.2f×", s.VsFlinkPerCPU), s.VsFlinkPerCPU >= 5, s.VsFlinkPerCPU > 0)
	if e := r.Engines; e != nil {
		goal("on the real engines ≥ 300 k/s end to end", k(e.PerSec)+"/s (one run, not sustained: lag not followed)", e.PerSec >= 3e5, e.PerSec > 0)
	}
	if u := r.Sustained; u != nil {
		ok, _ := u.bounded()
		goal("on the real engines ≥ 300 k/s end to end sustained with bounded lag (one agent, one writer)", u.measured(),
			ok && u.Rate >= sustainGoal && u.Achieved >= heldRate*sustainGoal, u.Probes > 0)
	}
	if e := r.EnginesWriters; e != nil {
		one := "one writer not run"
		if r.Engines != nil {
			one = fmt.Sprintf("one writer %s/s", k(r.Engines.PerSec))
		}
		measured := fmt.Sprintf("end to end flat out: %d writers %s/s, %s (one run each)", e.Writers, k(e.PerSec), one)
		if u := r.SustainedWriters; u != nil {
			measured += fmt.Sprintf("; sustained, %d writers: %s", u.Writers, u.measured())
		}
		goal("on the real engines, more with more writers (one agent)", measured,
			r.Engines != nil && e.PerSec > r.Engines.PerSec && e.Exact, e.PerSec > 0 && r.Engines != nil && r.Engines.PerSec > 0)
	}
	if len(r.AgentAlone) > 0 {
		goal("durable acknowledgement ≥ 1.5 M/s", fmt.Sprintf("%s/s by an agent alone (B2), %.2f µs of its CPU per entry; %s/s in the end-to-end runs, shipping beside it", k(s.AgentPerSec), s.AgentCPUUs, k(s.AckPerSec)),
			s.AgentPerSec >= 1.5e6, s.AgentPerSec > 0)
	} else {
		goal("durable acknowledgement ≥ 1.5 M/s", k(s.AckPerSec)+"/s (in the end-to-end runs, shipping beside it; B2 not run)", s.AckPerSec >= 1.5e6, s.AckPerSec > 0)
	}
	if len(r.Freshness) > 0 {
		f := r.Freshness[0]
		goal("freshness p99 ≤ 300 ms embedded at half the maximum", fmt.Sprintf("p99 %.0f ms at %s/s", f.P99Ms, k(f.Achieved)), f.P99Ms <= 300, f.Seen > 0)
	}
	for _, f := range r.Freshness {
		if f.Backends != "" {
			goal("freshness p99 ≤ 2 s on HDFS at half the maximum", fmt.Sprintf("p99 %.0f ms at %s/s", f.P99Ms, k(f.Achieved)), f.P99Ms <= 2000, f.Seen > 0)
		}
	}
	if c := r.CellsRun; c != nil {
		ck := maxCheckpoint(c.Checkpoints)
		goal(fmt.Sprintf("checkpoint of %s changed cells ≤ 1 s", k(float64(c.Cells))), fmt.Sprintf("%.2f s (%s cells)", ck.Seconds, k(ck.Cells)), ck.Seconds <= 1, ck.Cells > 0)
		goal(fmt.Sprintf("recovery of %s cells ≤ 3 s", k(float64(c.Cells))), fmt.Sprintf("%.2f s", c.RecoverySec), c.RecoverySec <= 3, c.RecoverySec > 0)
		goal("≤ 100 bytes of memory per count+sum cell", fmt.Sprintf("%.0f B live heap, %.0f B RSS (%.0f B of it the store's mapped file)", c.HeapBytes, c.RSSBytes, c.RSSFileBytes), c.RSSBytes <= 100 && c.HeapBytes <= 100, c.HeapBytes > 0)
		if len(c.Queries) >= 2 {
			goal("point query p99 ≤ 10 ms over 1 M cells", fmt.Sprintf("%.1f ms (%d rows)", c.Queries[0].P99Ms, c.Queries[0].Rows), c.Queries[0].P99Ms <= 10, true)
			goal("top-10 query p99 ≤ 50 ms over 1 M cells", fmt.Sprintf("%.1f ms (%d rows)", c.Queries[1].P99Ms, c.Queries[1].Rows), c.Queries[1].P99Ms <= 50, true)
		}
	}
	w("\n")

	if len(r.E2E) > 0 {
		w("## Freeway end to end, each run\n\nWhere the entries waited: the backlog is the most entries acknowledged to the generator and not yet aggregated at one scrape of `/metrics` (every 100 ms), of them at most so many still in the agent's queue (not yet acknowledged by a writer; the rest written and not yet read by Puma); a batch's round trip is the agent's mean from sending a batch upstream to its OK (`freeway_agent_ship_seconds`), `agent.max_in_flight` of them at once.\n\n")
		w("| run | acknowledged/s | MB/s | Log p50 / p99 ms | TRY_LATER | end to end/s | CPU-s | per CPU-s | generator CPU-s | peak RSS | backlog at most (at the agent) | batch round trip ms | totals |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for i, e := range r.E2E {
			w("| %d | %s | %.1f | %.1f / %.1f | %d | %s | %.1f | %s | %.1f | %.0f MiB | %s (%s) | %.1f | %s %s |\n", i+1, k(e.AckPerSec), e.AckMBPerS, e.LogLatency.P50, e.LogLatency.P99, e.TryLater,
				k(e.PerSec), e.CPUSec, k(e.PerCPUSec), e.LoadCPUSec, e.PeakRSSMiB, k(e.BacklogMax), k(e.AtAgentMax), e.ShipMs, e.Totals, e.Err)
		}
		w("\n")
	}
	if len(r.AgentAlone) > 0 {
		w("## B2: durable acknowledgement by an agent alone, each run\n\n`freeway agent` whose upstream is an address where nothing listens (nothing ships: the queue only grows, and no shipping shares the cores with the Log calls), fed the same lines by `freeway load` with the same connections and batches; an entry is acknowledged once fsynced in the agent's disk queue. The agent's CPU is from /proc over the load. A run counts only if the agent's queue afterwards holds every acknowledged entry (`freeway_agent_queue_entries`), and, read back once the agent stopped, exactly the lines sent, each once. Queue MB are the bytes on disk (compressed with `agent.queue_compress`).\n\n")
		w("| run | acknowledged/s | MB/s | Log p50 / p99 ms | TRY_LATER | agent CPU-s | agent µs per entry | generator CPU-s | queue entries | queue MB | entries per fsync |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
		for i, a := range r.AgentAlone {
			perSync := 0.0
			if a.Syncs > 0 {
				perSync = a.QueueEntries / a.Syncs
			}
			w("| %d | %s | %.1f | %.1f / %.1f | %d | %.2f | %.3f | %.2f | %.0f | %.1f | %.0f %s |\n", i+1, k(a.PerSec), a.MBPerSec, a.LogLatency.P50, a.LogLatency.P99, a.TryLater,
				a.CPUSec, a.CPUMicros, a.LoadCPUSec, a.QueueEntries, a.QueueBytes/1e6, perSync, a.Err)
		}
		w("\n")
	}
	if len(r.Matrix) > 0 {
		w("## B1: durable ingest by a writer alone, by batch and connections\n\n`freeway calligraphus` (embedded dfs: an entry is acknowledged once fsynced in its segment) fed by `freeway load` for a few seconds per cell, 176-byte lines.\n\n| batch | connections | entries/s | MB/s | Log p50 ms | Log p99 ms | TRY_LATER |\n|---|---|---|---|---|---|---|\n")
		for _, m := range r.Matrix {
			w("| %d | %d | %s | %.1f | %.2f | %.2f | %d %s |\n", m.Batch, m.Conns, k(m.PerSec), m.MBPerSec, m.LogLatency.P50, m.LogLatency.P99, m.TryLater, m.Err)
		}
		w("\n")
	}
	if len(r.Freshness) > 0 {
		f := r.Freshness[0]
		w("## B5: freshness\n\nA steady load at half the median end-to-end rate (%s/s asked, live event times) for %.0f s; every 200 ms a probe line carrying its own id and send time goes to the agent in the same category (its shard key in each bucket in turn), and a query for the probes is polled every 20 ms. Freshness is from just before the probe's Log call to the first answer holding it (so it includes up to 20 ms of polling). A writer publishes a segment when it is `calligraphus.segment_max_age` old; Puma reads what is published.\n\n", k(f.Rate), f.Seconds)
		w("| segment_max_age | achieved load | probes seen | p50 | p99 | max |\n|---|---|---|---|---|---|\n")
		for _, f := range r.Freshness {
			age := f.SegmentAge
			if f.Backends != "" {
				age += " on " + f.Backends
			}
			w("| %s | %s/s | %d of %d | %.0f ms | %.0f ms | %.0f ms |\n", age, k(f.Achieved), f.Seen, f.Probes, f.P50Ms, f.P99Ms, f.MaxMs)
		}
		w("\n")
		for _, f := range r.Freshness {
			if st := f.Stages; st != nil {
				w("Where the time went (%s; p50 / p99 over %d probes): the Log call %.0f / %.0f ms, from its answer to the publish of the probe's segment %.0f / %.0f ms, from the publish to the first answer holding it %.0f / %.0f ms; the segments that held a probe lived %.0f / %.0f ms.\n\n",
					f.SegmentAge, st.Probes, st.LogP50, st.LogP99, st.ToPublishP50, st.ToPublishP99, st.ToSeenP50, st.ToSeenP99, st.SegmentLifeP50, st.SegmentLifeP99)
			}
		}
		for _, f := range r.Freshness {
			if f.Err != "" {
				w("Error (%s): %s\n\n", f.SegmentAge, f.Err)
			}
		}
	}
	if u := r.Sustained; u != nil {
		w("%s", u.markdown())
	}
	if u := r.SustainedWriters; u != nil {
		w("%s", u.markdown())
	}
	if c := r.CellsRun; c != nil {
		w("## B8, B7, B6: %s cells in one shard\n\nOne line per key for %d keys (sequential keys, count + sum, one-minute windows) into a category of one bucket, so one Puma shard holds them all; `puma.checkpoint_interval` %s (5s by default) so that the first checkpoint finds them all changed. Loading took %.1f s end to end.\n\n", k(float64(c.Cells)), c.Cells, c.Interval, c.LoadSec)
		w("- Checkpoints (Freeway's `freeway_puma_checkpoint_seconds` and `_cells_total`):")
		for _, ck := range c.Checkpoints {
			w(" %.0f cells in %.3f s;", ck.Cells, ck.Seconds)
		}
		w("\n- Memory with the cells (after a forced GC): live heap %.0f MiB, RSS %.0f MiB; per cell %.0f bytes of live heap, %.0f bytes of RSS, %.0f of them pages of mapped files (the embedded store's bbolt file: page cache the kernel can take back) (differences from before the load).\n", c.HeapMiB, c.RSSMiB, c.HeapBytes, c.RSSBytes, c.RSSFileBytes)
		w("- Recovery: a clean stop took %.2f s; a start on the same data was ready (every shard recovered from the store) %.2f s after exec, at %.0f MiB RSS.\n", c.StopSec, c.RecoverySec, c.RecoveredRSS)
		w("- Totals: %s.\n\n", c.Totals)
		if c.Err != "" {
			w("Error: %s\n\n", c.Err)
		}
		if len(c.Queries) > 0 {
			w("Query latency over HTTP (one client, one query at a time, the answer read and decoded):\n\n| query | rows | n | p50 | p99 | max |\n|---|---|---|---|---|---|\n")
			for _, q := range c.Queries {
				w("| %s | %d | %d | %.1f ms | %.1f ms | %.1f ms |\n", q.Name, q.Rows, q.N, q.P50Ms, q.P99Ms, q.MaxMs)
			}
			w("\n")
		}
	}
	if len(r.Notes) > 0 {
		w("## Notes\n\n")
		for _, n := range r.Notes {
			w("- %s\n", n)
		}
		w("\n")
	}
	w("The figures of every run are in the JSON file beside this one.\n")
	return b.String()
}

func maxCheckpoint(cs []checkpoint) checkpoint {
	var best checkpoint
	for _, c := range cs {
		if c.Cells > best.Cells {
			best = c
		}
	}
	return best
}

func pct(v float64) string {
	if v == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f %%", v*100)
}

// errSuffix is "; error: err", or nothing.
func errSuffix(err string) string {
	if err == "" {
		return ""
	}
	return "; error: " + err
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func mapSlice[T, U any](in []T, f func(T) U) []U {
	out := make([]U, 0, len(in))
	for _, x := range in {
		out = append(out, f(x))
	}
	return out
}
