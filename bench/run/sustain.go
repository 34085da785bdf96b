package main

import (
	"context"
	"fmt"
	"log"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/freeway-dev/freeway/calligraphus"
	"github.com/freeway-dev/freeway/internal/freeway"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// The sustained run on the real engines: issue 10's goal is 300 k
// entries/s end to end *sustained with bounded lag* on one agent and one
// writer. A flat-out run tells the rate but not whether the lag grows:
// this one holds a fixed rate for a while and follows the lag (the
// freshness of probe lines, as B5) slice by slice, so that a lag that
// grows without bound shows as later slices worse than the first.

// lagTolerance states what "bounded" allows: the last slice's p99 may
// exceed the first's by this factor, or by lagSlackMs, whichever is more
// (the first slice of a run on a shared machine is itself noisy; a lag
// that grows with time grows by far more over 30–60 s of overload).
const (
	lagTolerance = 0.5
	lagSlackMs   = 500.0
	// heldRate is the share of the asked rate a run must achieve for the
	// rate to count as held (the generator paces per connection).
	heldRate = 0.97
)

// probeSample is one probe: when it was sent (from the start of the
// run) and, if a query showed it, after how long.
type probeSample struct {
	AtSec float64 `json:"at_s"`
	LagMs float64 `json:"lag_ms"`
	Seen  bool    `json:"seen"`
	// The probe's id and when it was sent, answered and first seen in a
	// query (zero if not), for the freshness run's stages.
	ID                  string    `json:"-"`
	Sent, Acked, SeenAt time.Time `json:"-"`
}

// backlogSample is, at one moment of a run, the entries the agent had
// acknowledged to the generator that Puma had not yet aggregated.
type backlogSample struct {
	AtSec   float64 `json:"at_s"`
	Entries float64 `json:"entries"`
	// InFlight is the agent's batches sent and not yet answered.
	InFlight float64 `json:"batches_in_flight"`
	// AtAgent is the part of Entries still in the agent's queue (not yet
	// acknowledged by a writer; the rest is written and not yet
	// aggregated): which side a growing backlog is on.
	AtAgent float64 `json:"at_agent"`
}

// backlogOf reads the backlog from a scrape of freeway all (its agent
// and its Puma); AtSec is left to the caller.
func backlogOf(m map[string]float64) backlogSample {
	recv := m[`freeway_agent_entries_received_total{source="scribe"}`] + m[`freeway_agent_entries_received_total{source="tail"}`]
	return backlogSample{Entries: recv - m["freeway_puma_entries_total"], InFlight: m["freeway_agent_batches_in_flight"],
		AtAgent: m["freeway_agent_queue_entries"]}
}

// lagSlice is the lag over one slice of a run.
type lagSlice struct {
	FromSec    float64 `json:"from_s"`
	ToSec      float64 `json:"to_s"`
	Probes     int     `json:"probes"`
	Seen       int     `json:"seen"`
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
	MaxMs      float64 `json:"max_ms"`
	BacklogMax float64 `json:"backlog_max_entries"`
	// AtAgentMax is the most of the backlog in the agent's queue.
	AtAgentMax float64 `json:"backlog_at_agent_max_entries"`
}

// sustainedRun is a fixed rate held on the real engines, its lag slice
// by slice.
type sustainedRun struct {
	Backends   string          `json:"backends"`
	Writers    int             `json:"writers"`
	Rate       float64         `json:"rate"`
	Achieved   float64         `json:"achieved_entries_per_second"`
	Seconds    float64         `json:"seconds"`
	SliceSec   float64         `json:"slice_seconds"`
	Probes     int             `json:"probes"`
	Seen       int             `json:"seen"`
	P50Ms      float64         `json:"p50_ms"`
	P99Ms      float64         `json:"p99_ms"`
	MaxMs      float64         `json:"max_ms"`
	Slices     []lagSlice      `json:"slices"`
	Samples    []probeSample   `json:"probe_samples,omitempty"`
	Backlog    []backlogSample `json:"backlog_samples,omitempty"`
	BelowWin   float64         `json:"dedup_below_window"`
	AckP50Ms   float64         `json:"agent_ack_p50_ms,omitempty"`
	AckP99Ms   float64         `json:"agent_ack_p99_ms,omitempty"`
	InFlightMx float64         `json:"batches_in_flight_max"`
	LogP50Ms   float64         `json:"log_p50_ms"` // the generator's Log calls to the agent
	LogP99Ms   float64         `json:"log_p99_ms"`
	CPUSec     float64         `json:"cpu_seconds"`
	Forwarded  float64         `json:"entries_forwarded,omitempty"` // between writers
	// Steps is where the writers' acknowledgements waited
	// (freeway_calligraphus_publish_step_seconds), p50 / p99 ms by step.
	Steps []stepLatency `json:"publish_steps,omitempty"`
	Err   string        `json:"error,omitempty"`
}

// slices cuts a run of total seconds into slices of d seconds (the last
// one shorter if it does not divide) and gives each the lag of the
// probes sent in it and the largest backlog sampled in it. A probe never
// seen counts in Probes, not in the percentiles.
func slicesOf(samples []probeSample, backlog []backlogSample, total, d float64) []lagSlice {
	if d <= 0 || total <= 0 {
		return nil
	}
	n := int(math.Ceil(total/d - 1e-9))
	out := make([]lagSlice, n)
	lat := make([][]float64, n)
	idx := func(at float64) int { return min(n-1, max(0, int(at/d))) }
	for i := range out {
		out[i].FromSec, out[i].ToSec = float64(i)*d, math.Min(float64(i+1)*d, total)
	}
	for _, s := range samples {
		i := idx(s.AtSec)
		out[i].Probes++
		if s.Seen {
			out[i].Seen++
			lat[i] = append(lat[i], s.LagMs)
		}
	}
	for _, b := range backlog {
		if b.AtSec > total {
			continue // the drain after the load, not part of it
		}
		i := idx(b.AtSec)
		out[i].BacklogMax = math.Max(out[i].BacklogMax, b.Entries)
		out[i].AtAgentMax = math.Max(out[i].AtAgentMax, b.AtAgent)
	}
	for i := range out {
		if len(lat[i]) > 0 { // else 0: Seen says none was (JSON has no NaN)
			out[i].P50Ms, out[i].P99Ms, out[i].MaxMs = quantile(lat[i], 0.5), quantile(lat[i], 0.99), quantile(lat[i], 1)
		}
	}
	return out
}

// bounded says whether the run's lag was bounded, and why not: every
// probe seen, the asked rate held, and the last slice's p99 within the
// tolerance of the first's.
func (r sustainedRun) bounded() (bool, string) {
	switch {
	case r.Err != "":
		return false, r.Err
	case len(r.Slices) < 2:
		return false, "fewer than two slices: too short to tell"
	case r.Seen < r.Probes:
		return false, fmt.Sprintf("%d of %d probes never seen", r.Probes-r.Seen, r.Probes)
	case r.Achieved < heldRate*r.Rate:
		return false, fmt.Sprintf("the rate was not held: %s/s of %s/s asked", k(r.Achieved), k(r.Rate))
	}
	first, last := r.Slices[0], r.Slices[len(r.Slices)-1]
	if first.Seen == 0 || last.Seen == 0 {
		return false, "a slice without a probe seen"
	}
	allow := math.Max(first.P99Ms*(1+lagTolerance), first.P99Ms+lagSlackMs)
	if last.P99Ms > allow {
		return false, fmt.Sprintf("lag grew: last slice p99 %.0f ms against the first's %.0f ms (at most %.0f ms allowed)", last.P99Ms, first.P99Ms, allow)
	}
	return true, fmt.Sprintf("last slice p99 %.0f ms, first %.0f ms (at most %.0f ms allowed)", last.P99Ms, first.P99Ms, allow)
}

// probeKeys are the probes' shard keys, one in each of the bench
// category's buckets (freeway's default count: the harness declares none),
// taken in turn: a lag is then every bucket's, not the one bucket a
// single key lands in (with two writers, whichever of them holds it).
func probeKeys(buckets int) []string {
	keys := make([]string, buckets)
	for i, found := 0, 0; found < buckets; i++ {
		k := fmt.Sprintf("probe-%d", i)
		if b := calligraphus.BucketOf(k, buckets); keys[b] == "" {
			keys[b] = k
			found++
		}
	}
	return keys
}

// probeLag sends a probe line (its own id, its send time as event time)
// to the agent every `every` for d, and polls a query for the probes
// every 20ms until each was seen or wait after the last (the probes'
// keys in each bucket in turn: probeKeys); a probe's lag is from just
// before its Log call to the first answer that holds it.
func probeLag(ctx context.Context, fw *fwProc, every, d, wait time.Duration) ([]probeSample, error) {
	var mu sync.Mutex
	type probe struct {
		at, acked, seenAt time.Time
		lag               time.Duration
		seen              bool
	}
	var order []string
	sent := map[string]*probe{}
	var wg sync.WaitGroup
	probeCtx, stopProbes := context.WithTimeout(ctx, d)
	defer stopProbes()
	start := time.Now()
	var sendErr error
	keys := probeKeys(freeway.DefaultConfig().Buckets)
	wg.Go(func() {
		c, err := scribeapi.Dial(fw.agent, thriftsrv.Limits{}, 10*time.Second)
		if err != nil {
			sendErr = err
			return
		}
		defer func() { _ = c.Close() }() // every probe was answered or is the error
		t := time.NewTicker(every)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-probeCtx.Done():
				return
			case <-t.C:
			}
			id := fmt.Sprintf("p%05d", i)
			now := time.Now()
			mu.Lock()
			sent[id] = &probe{at: now}
			order = append(order, id)
			mu.Unlock()
			msg := fmt.Sprintf(`{"ts":%d,"key":"%s","id":"%s","value":0}`, now.UnixMilli(), keys[i%len(keys)], id)
			rc, err := c.Log(ctx, []*scribe.LogEntry{{Category: "bench", Message: []byte(msg)}})
			if err != nil {
				sendErr = fmt.Errorf("probe %s: %w", id, err)
				return
			}
			if rc != scribe.ResultCode_OK {
				sendErr = fmt.Errorf("probe %s: %v", id, rc)
				return
			}
			mu.Lock()
			sent[id].acked = time.Now()
			mu.Unlock()
		}
	})
	pollEnd := start.Add(d + wait)
	for seen := 0; time.Now().Before(pollEnd); time.Sleep(20 * time.Millisecond) {
		a, err := fw.query(ctx, url.Values{"app": {"probe"}, "window": {"all"}, "group_by": {"id"}})
		now := time.Now()
		if err != nil {
			continue
		}
		mu.Lock()
		for _, row := range a.Rows {
			if p := sent[row.Key["id"]]; p != nil && !p.seen {
				p.seen, p.seenAt, p.lag = true, now, now.Sub(p.at)
				seen++
			}
		}
		all := probeCtx.Err() != nil && seen == len(sent)
		mu.Unlock()
		if all {
			break
		}
	}
	wg.Wait()
	out := make([]probeSample, 0, len(order))
	for _, id := range order {
		p := sent[id]
		out = append(out, probeSample{AtSec: p.at.Sub(start).Seconds(), LagMs: float64(p.lag) / 1e6, Seen: p.seen,
			ID: id, Sent: p.at, Acked: p.acked, SeenAt: p.seenAt})
	}
	return out, sendErr
}

// probeTimes is, by probe id, when each probe was sent, answered (if it
// was) and first seen (if it was).
func probeTimes(samples []probeSample) (sent, acked, seen map[string]time.Time) {
	sent, acked, seen = map[string]time.Time{}, map[string]time.Time{}, map[string]time.Time{}
	for _, p := range samples {
		sent[p.ID] = p.Sent
		if !p.Acked.IsZero() {
			acked[p.ID] = p.Acked
		}
		if p.Seen {
			seen[p.ID] = p.SeenAt
		}
	}
	return sent, acked, seen
}

// lagOf is the percentiles of the probes seen (0 if none was: JSON has
// no NaN).
func lagOf(samples []probeSample) (seen int, p50, p99, maxMs float64) {
	var lat []float64
	for _, s := range samples {
		if s.Seen {
			lat = append(lat, s.LagMs)
		}
	}
	if len(lat) == 0 {
		return 0, 0, 0, 0
	}
	return len(lat), quantile(lat, 0.5), quantile(lat, 0.99), quantile(lat, 1)
}

// sustained holds rate on be for o.sustain with one agent and one
// writer (freeway all), probes every 100ms, samples the backlog and the
// agent's batches in flight every second, and cuts the lag into slices
// of o.sustainSlice.
func sustained(ctx context.Context, o options, rate float64, be backends) (r sustainedRun) {
	r.Rate, r.Writers, r.SliceSec = rate, max(1, o.writers), o.sustainSlice.Seconds()
	r.Backends = be.String() + "; " + o.batches()
	dir := filepath.Join(o.work, "sustain")
	_ = os.RemoveAll(dir)                    // best effort: what an interrupted run left
	defer func() { _ = os.RemoveAll(dir) }() // best effort: work files only
	apps := countSumApp("bench") + probeApp
	fw, err := startFreeway(o.freeway, dir, fwConfig{apps: apps, be: be, pprof: o.profile > 0,
		maxInFlight: o.inFlight, batchBytes: o.batchB, batchEntries: o.batchN, seqWindow: o.seqWindow, upstream: upstreamFor(o, be)}, nil)
	if err == nil {
		defer fw.kill()
		err = fw.waitReady(2*time.Minute, 50*time.Millisecond)
	}
	var extra writerSet
	if err == nil {
		extra, err = startExtraWriters(o, dir, be, apps, fw)
		defer extra.kill()
	}
	if err != nil {
		r.Err = err.Error()
		return r
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cpu0, _ := fw.cpu()
	cpu0 += extra.cpu()
	start := time.Now()
	loadDone := make(chan error, 1)
	var sum struct {
		perSec, seconds, logP50, logP99 float64
	}
	go func() {
		// The bench's batches (-batch, 1,000): at 300 k/s over 8
		// connections a call every 27 ms on each, room for the agent's
		// fsync (B5's 100 calls a second per connection would leave 10
		// ms, less than a Log call takes here under load).
		s, _, err := runLoad(ctx, o.freeway, "--addr", fw.agent, "--category", "bench", "--rate", strconv.FormatFloat(rate, 'f', 0, 64),
			"--duration", o.sustain.String(), "--keys", strconv.Itoa(o.keys), "--conns", strconv.Itoa(o.conns),
			"--batch", strconv.Itoa(o.batch))
		sum.logP50, sum.logP99 = s.LatencyMs.P50, s.LatencyMs.P99
		sum.perSec, sum.seconds = s.PerSec, s.Seconds
		loadDone <- err
	}()
	// The backlog: what the agent acknowledged and Puma has not applied.
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var sampler sync.WaitGroup
	sampler.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-sampleCtx.Done():
				return
			case <-t.C:
			}
			m, err := fw.metrics()
			if err != nil {
				continue
			}
			b := backlogOf(m)
			b.AtSec = time.Since(start).Seconds()
			r.Backlog = append(r.Backlog, b)
		}
	})
	// With -profile, a CPU profile and an execution trace (its blocking
	// profiles: go tool trace -pprof=sync) of freeway all under the load,
	// from a few seconds in.
	var profiles sync.WaitGroup
	if o.profile > 0 {
		tag := fmt.Sprintf("sustain-%dw", r.Writers)
		for _, p := range []struct{ kind, file string }{{"profile", tag + "-cpu.pprof"}, {"trace", tag + ".trace"}} {
			profiles.Go(func() {
				time.Sleep(5 * time.Second)
				path := filepath.Join(o.work, p.file)
				if err := fetch(fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", fw.http, p.kind, int(o.profile.Seconds())), path); err != nil {
					log.Printf("%s: %v", p.kind, err)
				} else {
					log.Printf("%s: %s", p.kind, path)
				}
			})
		}
	}
	r.Samples, err = probeLag(ctx, fw, 100*time.Millisecond, o.sustain, 30*time.Second)
	profiles.Wait()
	stopSampling()
	sampler.Wait()
	if lerr := <-loadDone; lerr != nil && err == nil {
		err = lerr
	}
	cpu1, _ := fw.cpu()
	cpu1 += extra.cpu()
	r.CPUSec = (cpu1 - cpu0).Seconds()
	r.Achieved, r.Seconds = sum.perSec, sum.seconds
	r.LogP50Ms, r.LogP99Ms = sum.logP50, sum.logP99
	r.Probes = len(r.Samples)
	r.Seen, r.P50Ms, r.P99Ms, r.MaxMs = lagOf(r.Samples)
	r.Slices = slicesOf(r.Samples, r.Backlog, o.sustain.Seconds(), r.SliceSec)
	for _, b := range r.Backlog {
		r.InFlightMx = math.Max(r.InFlightMx, b.InFlight)
	}
	if len(extra) > 0 {
		r.Forwarded = extra.sum(fw, `freeway_calligraphus_entries_forwarded_total{direction="out"}`)
	}
	r.Steps = publishSteps(append(writerSet{fw}, extra...))
	if m, merr := fw.metrics(); merr == nil {
		r.BelowWin = m["freeway_puma_dedup_below_window_total"]
		if q := histQuantile(m, "freeway_agent_ship_seconds", 0.5); !math.IsNaN(q) { // NaN: a binary without it
			r.AckP50Ms, r.AckP99Ms = q*1e3, histQuantile(m, "freeway_agent_ship_seconds", 0.99)*1e3
		}
	}
	switch {
	case err != nil:
		r.Err = err.Error()
	case r.BelowWin > 0:
		r.Err = fmt.Sprintf("%.0f entries taken as repeats below Puma's seen-window (lost)", r.BelowWin)
	}
	ok, why := r.bounded()
	if len(r.Steps) > 0 {
		log.Printf("writers' acknowledgement steps (p50 / p99): %s", stepsText(r.Steps))
	}
	log.Printf("sustained on the engines (writers: %d) at %.0f/s (achieved %.0f/s, Log p50 %.0fms p99 %.0fms) for %v: lag p50 %.0fms p99 %.0fms over %d of %d probes; agent's batches acknowledged p50 %.0fms p99 %.0fms, at most %.0f in flight; bounded %v: %s",
		r.Writers, rate, r.Achieved, r.LogP50Ms, r.LogP99Ms, o.sustain, r.P50Ms, r.P99Ms, r.Seen, r.Probes, r.AckP50Ms, r.AckP99Ms, r.InFlightMx, ok, why)
	for _, s := range r.Slices {
		log.Printf("  %2.0f–%2.0fs: p50 %.0fms p99 %.0fms max %.0fms (%d of %d probes), backlog at most %.0f entries (%.0f at the agent)", s.FromSec, s.ToSec, s.P50Ms, s.P99Ms, s.MaxMs, s.Seen, s.Probes, s.BacklogMax, s.AtAgentMax)
	}
	if err := extra.stop(time.Minute); err != nil {
		log.Printf("stop the other writers: %v", err) // the measurements are taken; their logs say why
	}
	if err := fw.stop(time.Minute); err != nil {
		log.Printf("stop freeway: %v", err) // the measurements are taken; the log says why it did not stop
	}
	return r
}

// histQuantile estimates the q-quantile of the Prometheus histogram
// name from its cumulative buckets in m (linear within a bucket, as
// Prometheus' histogram_quantile); NaN without observations.
func histQuantile(m map[string]float64, name string, q float64) float64 {
	return bucketsQuantile(m, name+`_bucket{le="`, q)
}

// bucketsQuantile is histQuantile over the buckets whose series start
// with prefix, which ends where the bound begins (`…,le="`).
func bucketsQuantile(m map[string]float64, prefix string, q float64) float64 {
	type bucket struct{ le, n float64 }
	var bs []bucket
	for series, n := range m {
		rest, ok := strings.CutPrefix(series, prefix)
		if !ok {
			continue
		}
		le, err := strconv.ParseFloat(strings.TrimSuffix(rest, `"}`), 64)
		if err != nil {
			continue
		}
		bs = append(bs, bucket{le, n})
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	if len(bs) == 0 || bs[len(bs)-1].n == 0 {
		return math.NaN()
	}
	rank := q * bs[len(bs)-1].n
	lo, below := 0.0, 0.0
	for _, b := range bs {
		if b.n >= rank {
			if math.IsInf(b.le, 1) {
				return lo // above the last finite bucket: its bound
			}
			if b.n == below {
				return b.le
			}
			return lo + (b.le-lo)*(rank-below)/(b.n-below)
		}
		lo, below = b.le, b.n
	}
	return lo
}

// sustainGoal is issue 10's rate on the real engines.
const sustainGoal = 300_000

// measured is the goal row's figure: the rate held, the lag overall
// and per slice, and the verdict on its bound.
func (r sustainedRun) measured() string {
	ok, why := r.bounded()
	var ps []string
	for _, s := range r.Slices {
		ps = append(ps, msOrDash(s.Seen, s.P99Ms))
	}
	verdict := "lag bounded"
	if !ok {
		verdict = "lag NOT bounded"
	}
	return fmt.Sprintf("%s/s asked, %s/s held for %.0f s: lag p50 %.0f ms, p99 %.0f ms; p99 per %.0f s slice %s ms; %s (%s)",
		k(r.Rate), k(r.Achieved), r.Seconds, r.P50Ms, r.P99Ms, r.SliceSec, strings.Join(ps, ", "), verdict, why)
}

// markdown is the report's section on the sustained run.
func (r sustainedRun) markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	if r.Writers > 1 {
		w("## Sustained on the real engines, %d writers\n\n", r.Writers)
		w("`freeway all` (one agent, its writer) and %s, the agent's upstream their ZooKeeper URL (each batch to the next live writer, the entries of buckets another writer holds forwarded to it), on %s", plural(r.Writers-1, "more writer (`freeway calligraphus`)", "more writers (`freeway calligraphus` processes)"), r.Backends)
	} else {
		w("## Sustained on the real engines\n\n")
		w("`freeway all` (one agent, one writer) on %s", r.Backends)
	}
	w(", fed by `freeway load` at a fixed %s entries/s (live event times) for %.0f s; a probe line every 100 ms as in B5, its lag from just before its Log call to the first query answer holding it. ", k(r.Rate), r.Seconds)
	w("The lag is bounded if every probe was seen, the rate was held (at least %.0f %% of it) and the last slice's p99 is at most %.0f %% above the first's or %.0f ms above it, whichever allows more. ", heldRate*100, lagTolerance*100, lagSlackMs)
	w("Backlog: entries the agent had acknowledged that Puma had not yet applied, sampled every second; at the agent: the most of them still in its queue, not yet acknowledged by a writer.\n\n")
	ok, why := r.bounded()
	w("Achieved %s/s (the generator's Log calls p50 %.1f ms, p99 %.1f ms); lag p50 %.0f ms, p99 %.0f ms, max %.0f ms over %d of %d probes; agent's acknowledgement from the writer p50 %.0f ms, p99 %.0f ms; at most %.0f batches in flight; freeway CPU %.1f s; **lag bounded: %v** (%s).\n\n",
		k(r.Achieved), r.LogP50Ms, r.LogP99Ms, r.P50Ms, r.P99Ms, r.MaxMs, r.Seen, r.Probes, r.AckP50Ms, r.AckP99Ms, r.InFlightMx, r.CPUSec, ok, why)
	if r.Writers > 1 {
		w("Entries forwarded between writers: %s.\n\n", k(r.Forwarded))
	}
	if len(r.Steps) > 0 {
		w("Where the writers' acknowledgements waited (`freeway_calligraphus_publish_step_seconds`, p50 / p99): %s.\n\n", stepsText(r.Steps))
	}
	w("| slice | probes seen | p50 | p99 | max | backlog at most | at the agent at most |\n|---|---|---|---|---|---|---|\n")
	for _, s := range r.Slices {
		w("| %.0f–%.0f s | %d of %d | %s ms | %s ms | %s ms | %s entries | %s entries |\n", s.FromSec, s.ToSec, s.Seen, s.Probes,
			msOrDash(s.Seen, s.P50Ms), msOrDash(s.Seen, s.P99Ms), msOrDash(s.Seen, s.MaxMs), k(s.BacklogMax), k(s.AtAgentMax))
	}
	w("\n")
	if r.Err != "" {
		w("Error: %s\n\n", r.Err)
	}
	return b.String()
}

// msOrDash is ms, or a dash when no probe was seen.
func msOrDash(seen int, ms float64) string {
	if seen == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", ms)
}

// stepLatency is one step of the writers' acknowledgements on HDFS.
type stepLatency struct {
	Step  string  `json:"step"`
	Count float64 `json:"count"`
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
}

// publishSteps reads freeway_calligraphus_publish_step_seconds from
// every process of ps (their buckets summed) and gives each step's
// p50 and p99; nil from a binary without it.
func publishSteps(ps writerSet) []stepLatency {
	sum := map[string]float64{}
	for _, p := range ps {
		m, err := p.metrics()
		if err != nil {
			continue
		}
		for k, v := range m {
			if strings.HasPrefix(k, "freeway_calligraphus_publish_step_seconds") {
				sum[k] += v
			}
		}
	}
	var out []stepLatency
	for _, step := range []string{"queue", "close", "wait", "rename", "fence"} {
		prefix := `freeway_calligraphus_publish_step_seconds_bucket{step="` + step + `",le="`
		p50 := bucketsQuantile(sum, prefix, 0.5)
		if math.IsNaN(p50) {
			continue
		}
		out = append(out, stepLatency{Step: step, Count: sum[`freeway_calligraphus_publish_step_seconds_count{step="`+step+`"}`],
			P50Ms: p50 * 1e3, P99Ms: bucketsQuantile(sum, prefix, 0.99) * 1e3})
	}
	return out
}

// stepsText is the steps as one line: "queue 3 / 40 ms, close …".
func stepsText(steps []stepLatency) string {
	var parts []string
	for _, s := range steps {
		parts = append(parts, fmt.Sprintf("%s %.0f / %.0f ms", s.Step, s.P50Ms, s.P99Ms))
	}
	return strings.Join(parts, ", ")
}

// plural is n and one or many, as n asks.
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
