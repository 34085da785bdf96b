package main

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

// The goal of 1.5 M/s durable acknowledgement is judged by the agent
// alone (B2) when it ran, with the end-to-end runs' rate still shown,
// and by the end-to-end runs when it did not.
func TestAckGoalJudgedByAgentAlone(t *testing.T) {
	goalLine := func(md string) string {
		for l := range strings.SplitSeq(md, "\n") {
			if strings.HasPrefix(l, "| durable acknowledgement ≥ 1.5 M/s |") {
				return l
			}
		}
		t.Fatalf("no acknowledgement goal in:\n%s", md)
		return ""
	}
	r := &report{
		E2E:        []e2eRun{{AckPerSec: 300e3, Exact: true}, {AckPerSec: 320e3, Exact: true}},
		AgentAlone: []agentRun{{PerSec: 1.6e6, CPUMicros: 0.5, Entries: 10}, {PerSec: 1.7e6, CPUMicros: 0.4, Entries: 10}},
	}
	r.summarize()
	l := goalLine(r.markdown())
	for _, want := range []string{"1.65 M/s by an agent alone", "0.45 µs", "310 k/s in the end-to-end runs", "| met |"} {
		if !strings.Contains(l, want) {
			t.Errorf("goal line %q lacks %q", l, want)
		}
	}

	r.AgentAlone = []agentRun{{PerSec: 1.2e6, CPUMicros: 0.5}}
	r.summarize()
	if l := goalLine(r.markdown()); !strings.Contains(l, "| not met |") {
		t.Errorf("1.2 M/s alone: goal line %q, want not met", l)
	}

	r.AgentAlone = nil
	r.E2E = []e2eRun{{AckPerSec: 1.6e6}}
	r.summarize()
	if l := goalLine(r.markdown()); !strings.Contains(l, "B2 not run") || !strings.Contains(l, "| met |") {
		t.Errorf("without B2: goal line %q, want the end-to-end rate judged and B2 named as not run", l)
	}
}

// goalRow is the row of the goals table that starts with name.
func goalRow(t *testing.T, md, name string) string {
	t.Helper()
	for l := range strings.SplitSeq(md, "\n") {
		if strings.HasPrefix(l, "| "+name+" |") {
			return l
		}
	}
	t.Fatalf("no goal row %q in:\n%s", name, md)
	return ""
}

const sustainedGoal = "on the real engines ≥ 300 k/s end to end sustained with bounded lag (one agent, one writer)"

// steady makes a run of 40 s at rate with a probe every 100 ms whose
// lag is lag(at).
func steady(rate, achieved float64, lag func(at float64) float64) sustainedRun {
	r := sustainedRun{Rate: rate, Achieved: achieved, Seconds: 40, SliceSec: 10}
	for i := range 400 {
		at := float64(i) / 10
		r.Samples = append(r.Samples, probeSample{AtSec: at, LagMs: lag(at), Seen: true})
	}
	r.Probes = len(r.Samples)
	r.Seen, r.P50Ms, r.P99Ms, r.MaxMs = lagOf(r.Samples)
	r.Slices = slicesOf(r.Samples, nil, 40, 10)
	return r
}

// The sustained run is its own goal row, judged by the rate held and by
// the lag's slices: a flat lag is bounded, one that grows with time is
// not, even when the overall p99 alone would look fine; the flat-out
// engines row stays as it was.
func TestSustainedGoalJudgedBySlices(t *testing.T) {
	flat := steady(300e3, 299e3, func(float64) float64 { return 400 })
	r := &report{Engines: &e2eRun{PerSec: 310e3, Exact: true}, Sustained: &flat}
	r.summarize()
	md := r.markdown()
	l := goalRow(t, md, sustainedGoal)
	for _, want := range []string{"300 k/s asked, 299 k/s held for 40 s", "p99 per 10 s slice 400, 400, 400, 400 ms", "lag bounded", "| met |"} {
		if !strings.Contains(l, want) {
			t.Errorf("flat lag: goal row %q lacks %q", l, want)
		}
	}
	if l := goalRow(t, md, "on the real engines ≥ 300 k/s end to end"); !strings.Contains(l, "310 k/s (one run, not sustained: lag not followed) | met |") {
		t.Errorf("the flat-out engines row changed: %q", l)
	}
	if !strings.Contains(md, "## Sustained on the real engines") || !strings.Contains(md, "| 30–40 s | 100 of 100 | 400 ms | 400 ms | 400 ms |") {
		t.Errorf("no slice table in:\n%s", md)
	}

	// Lag growing by 100 ms a second: 0.4 s in the first slice, 4 s in
	// the last.
	growing := steady(300e3, 299e3, func(at float64) float64 { return 400 + 100*at })
	r.Sustained = &growing
	if l := goalRow(t, r.markdown(), sustainedGoal); !strings.Contains(l, "lag NOT bounded") || !strings.Contains(l, "lag grew") || !strings.HasSuffix(l, "| not met |") {
		t.Errorf("growing lag: goal row %q, want not bounded and not met", l)
	}

	// Within the tolerance: 400 → 850 ms is less than 400 + 500.
	mild := steady(300e3, 299e3, func(at float64) float64 { return 400 + 450*at/40 })
	r.Sustained = &mild
	if l := goalRow(t, r.markdown(), sustainedGoal); !strings.HasSuffix(l, "| met |") {
		t.Errorf("lag within the tolerance: goal row %q, want met", l)
	}

	// The rate not held, a probe never seen, a rate below the goal.
	slow := steady(300e3, 250e3, func(float64) float64 { return 400 })
	lost := steady(300e3, 299e3, func(float64) float64 { return 400 })
	lost.Samples[395].Seen = false
	lost.Seen--
	low := steady(200e3, 200e3, func(float64) float64 { return 400 })
	behind := steady(350e3, 310e3, func(float64) float64 { return 400 }) // above the goal, but not what was asked
	for name, u := range map[string]sustainedRun{"rate not held": slow, "probe lost": lost, "below the goal": low, "asked rate not held": behind} {
		r.Sustained = &u
		if l := goalRow(t, r.markdown(), sustainedGoal); !strings.HasSuffix(l, "| not met |") {
			t.Errorf("%s: goal row %q, want not met", name, l)
		}
	}
}

// slicesOf puts each probe and backlog sample in the slice of its time,
// the last slice shorter when the run does not divide, and leaves out
// backlog samples after the run (the drain).
func TestSlicesOf(t *testing.T) {
	samples := []probeSample{{AtSec: 0.1, LagMs: 10, Seen: true}, {AtSec: 9.9, LagMs: 30, Seen: true}, {AtSec: 10, LagMs: 50, Seen: true},
		{AtSec: 24.9, LagMs: 70, Seen: false}, {AtSec: 25, LagMs: 90, Seen: true}}
	backlog := []backlogSample{{AtSec: 1, Entries: 5, AtAgent: 4}, {AtSec: 9, Entries: 7, AtAgent: 2}, {AtSec: 21, Entries: 3}, {AtSec: 26, Entries: 99, AtAgent: 99}}
	got := slicesOf(samples, backlog, 25, 10)
	if len(got) != 3 {
		t.Fatalf("%d slices of 25 s by 10, want 3: %+v", len(got), got)
	}
	want := []lagSlice{
		{FromSec: 0, ToSec: 10, Probes: 2, Seen: 2, P50Ms: 30, P99Ms: 30, MaxMs: 30, BacklogMax: 7, AtAgentMax: 4},
		{FromSec: 10, ToSec: 20, Probes: 1, Seen: 1, P50Ms: 50, P99Ms: 50, MaxMs: 50},
		{FromSec: 20, ToSec: 25, Probes: 2, Seen: 1, P50Ms: 90, P99Ms: 90, MaxMs: 90, BacklogMax: 3},
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("slice %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

// histQuantile reads a Prometheus histogram's buckets as
// histogram_quantile does.
func TestHistQuantile(t *testing.T) {
	m := map[string]float64{
		`x_seconds_bucket{le="0.1"}`:  10,
		`x_seconds_bucket{le="0.2"}`:  90,
		`x_seconds_bucket{le="0.4"}`:  100,
		`x_seconds_bucket{le="+Inf"}`: 100,
		`x_seconds_sum`:               15,
		`y_seconds_bucket{le="0.1"}`:  1000,
	}
	for _, c := range []struct{ q, want float64 }{{0.05, 0.05}, {0.5, 0.15}, {0.9, 0.2}, {0.99, 0.38}} {
		if got := histQuantile(m, "x_seconds", c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("q %v: %v, want %v", c.q, got, c.want)
		}
	}
	if got := histQuantile(m, "z_seconds", 0.5); !math.IsNaN(got) {
		t.Errorf("no such histogram: %v, want NaN", got)
	}
}

// A slice where no probe was seen (the lag outgrew the run) has no
// percentiles but writes as JSON, and the run is not bounded.
func TestSustainedSliceUnseen(t *testing.T) {
	r := steady(300e3, 299e3, func(float64) float64 { return 400 })
	for i := 300; i < 400; i++ {
		r.Samples[i].Seen = false
	}
	r.Seen, r.P50Ms, r.P99Ms, r.MaxMs = lagOf(r.Samples)
	r.Slices = slicesOf(r.Samples, nil, 40, 10)
	if _, err := json.Marshal(r); err != nil {
		t.Fatalf("marshal: %v", err)
	}
	if ok, why := r.bounded(); ok {
		t.Errorf("bounded with the last slice unseen: %s", why)
	}
	if _, err := json.Marshal(steady(300e3, 0, func(float64) float64 { return 0 })); err != nil {
		t.Fatalf("marshal: %v", err)
	}
}

// The runs with several writers are reported beside the one-writer
// runs: a goal row that compares their flat-out rates (met only if more
// writers carried more), the sentence on the flat-out run, and a
// section of their own for the sustained run, with the acknowledgement's
// steps; the one-writer rows stay as they were.
func TestSeveralWritersBesideOne(t *testing.T) {
	const row = "on the real engines, more with more writers (one agent)"
	one := steady(300e3, 240e3, func(float64) float64 { return 900 })
	two := steady(300e3, 280e3, func(float64) float64 { return 700 })
	two.Writers, two.Forwarded = 2, 5e6
	two.Steps = []stepLatency{{Step: "queue", P50Ms: 12, P99Ms: 80}, {Step: "close", P50Ms: 60, P99Ms: 300}}
	r := &report{Engines: &e2eRun{PerSec: 221e3, Exact: true}, Sustained: &one,
		EnginesWriters: &e2eRun{Writers: 2, PerSec: 260e3, AckPerSec: 270e3, Forwarded: 1e6, Exact: true, Totals: "exact"}, SustainedWriters: &two}
	r.summarize()
	md := r.markdown()
	l := goalRow(t, md, row)
	for _, want := range []string{"2 writers 260 k/s, one writer 221 k/s", "sustained, 2 writers: 300 k/s asked, 280 k/s held", "| met |"} {
		if !strings.Contains(l, want) {
			t.Errorf("goal row %q lacks %q", l, want)
		}
	}
	for _, want := range []string{
		"On the real engines with 2 writers (`freeway all` and 1 `freeway calligraphus`",
		"end to end 260 k/s", "1.00 M entries forwarded between writers",
		"## Sustained on the real engines, 2 writers", "and 1 more writer (`freeway calligraphus`)",
		"Entries forwarded between writers: 5.00 M.", "p50 / p99): queue 12 / 80 ms, close 60 / 300 ms.",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if !strings.Contains(md, "## Sustained on the real engines\n\n`freeway all` (one agent, one writer)") {
		t.Errorf("the one-writer sustained section changed:\n%s", md)
	}
	if l := goalRow(t, md, sustainedGoal); !strings.Contains(l, "240 k/s held") {
		t.Errorf("the one-writer sustained row is not the one-writer run's: %q", l)
	}

	// Two writers slower than one: not met; no one-writer run: not measured.
	r.EnginesWriters.PerSec = 150e3
	if l := goalRow(t, r.markdown(), row); !strings.HasSuffix(l, "| not met |") {
		t.Errorf("two writers slower: %q, want not met", l)
	}
	r.Engines = nil
	if l := goalRow(t, r.markdown(), row); !strings.Contains(l, "one writer not run") || !strings.HasSuffix(l, "| not measured |") {
		t.Errorf("no one-writer run: %q, want not measured", l)
	}
}

// An end-to-end run's backlog is read from each scrape of freeway all
// (what the agent received less what Puma applied, and the agent's
// queue), and the report's each-run table says where it stood at most
// and the batches' round trip.
func TestE2EBacklogInReport(t *testing.T) {
	b := backlogOf(map[string]float64{
		`freeway_agent_entries_received_total{source="scribe"}`: 900,
		`freeway_agent_entries_received_total{source="tail"}`:   100,
		"freeway_puma_entries_total":                            250,
		"freeway_agent_queue_entries":                           600,
		"freeway_agent_batches_in_flight":                       4,
	})
	if b.Entries != 750 || b.AtAgent != 600 || b.InFlight != 4 {
		t.Fatalf("backlogOf = %+v, want 750 entries, 600 at the agent, 4 in flight", b)
	}
	r := &report{E2E: []e2eRun{{PerSec: 700e3, BacklogMax: 440e3, AtAgentMax: 420e3, ShipMs: 26.04, Exact: true}}}
	r.summarize()
	md := r.markdown()
	var row string
	for l := range strings.SplitSeq(md, "\n") {
		if strings.HasPrefix(l, "| 1 |") {
			row = l
		}
	}
	for _, want := range []string{"| 440 k (420 k) |", "| 26.0 |"} {
		if !strings.Contains(row, want) {
			t.Errorf("each-run row %q lacks %q", row, want)
		}
	}
	if !strings.Contains(md, "backlog at most (at the agent) | batch round trip ms |") {
		t.Errorf("each-run table lacks the backlog and round-trip columns:\n%s", md)
	}
}
