// Command soak runs `freeway all` (embedded backends) under a steady
// Scribe load for a long time, samples the process's resident memory,
// heap, goroutines and open file descriptors, checks at the end that the
// aggregates count exactly what the agent acknowledged, and writes a
// report. bench/soak.sh runs it (make soak); it is a bench, not a CI test.
//
// The load is internal/loadgen's (as `freeway load`): Scribe Log calls
// from several connections, each a batch of short JSON lines
// ({"ts":...,"key":"k0001234","value":57}) over a few thousand keys,
// paced to a rate.
// Without -rate it first finds the maximum: a short flat-out run, whose
// sustained rate is the lower of what the agent acknowledged and what
// Puma aggregated; the soak then runs at -fraction of it.
//
// Two apps read the lines (a count and a sum by key, and a filtered
// count), in windows of a day, so that the data held in memory does not
// grow with the run: whatever grows is the process's own.
package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/freeway-dev/freeway/internal/admin"
	"github.com/freeway-dev/freeway/internal/loadgen"
)

type options struct {
	binary    string
	duration  time.Duration
	calibrate time.Duration
	fraction  float64
	rate      float64
	conns     int
	batch     int
	keys      int
	sample    time.Duration
	warmup    time.Duration
	out       string
	keep      bool
}

func main() {
	var o options
	flag.StringVar(&o.binary, "binary", "bin/freeway", "the freeway binary to run")
	flag.DurationVar(&o.duration, "duration", time.Hour, "how long the soak runs at its rate")
	flag.DurationVar(&o.calibrate, "calibrate", 45*time.Second, "how long the flat-out run that finds the maximum load lasts")
	flag.Float64Var(&o.fraction, "fraction", 0.5, "the soak's rate as a fraction of the maximum found")
	flag.Float64Var(&o.rate, "rate", 0, "entries a second for the soak; 0: -fraction of the maximum, found first")
	flag.IntVar(&o.conns, "conns", 4, "Scribe connections of the load")
	flag.IntVar(&o.batch, "batch", 100, "entries per Log call")
	flag.IntVar(&o.keys, "keys", 3000, "distinct group keys")
	flag.DurationVar(&o.sample, "sample", 5*time.Second, "sampling interval")
	flag.DurationVar(&o.warmup, "warmup", 0, "samples left out of the flatness verdict (default: a tenth of -duration, between 1m and 5m)")
	flag.StringVar(&o.out, "out", "bench/results", "where the report goes")
	flag.BoolVar(&o.keep, "keep", false, "keep the data directory")
	flag.Parse()
	if o.warmup == 0 {
		o.warmup = min(max(o.duration/10, time.Minute), 5*time.Minute)
	}
	log.SetFlags(log.Ltime)
	log.SetPrefix("soak: ")
	ok, err := run(o)
	if err != nil {
		log.Fatal(err)
	}
	if !ok {
		os.Exit(1)
	}
}

// freeway is the process under test.
type freeway struct {
	cmd      *exec.Cmd
	dir      string
	logPath  string
	agent    string // Scribe address
	http     string // serving address
	exited   chan struct{}
	exitErr  error
	exitOnce sync.Once
}

func run(o options) (bool, error) {
	dir, err := os.MkdirTemp("", "freeway-soak-")
	if err != nil {
		return false, err
	}
	if !o.keep {
		defer os.RemoveAll(dir) //nolint:errcheck // best effort: a leftover is in the temporary directory
	}
	fw, err := start(o.binary, dir)
	if err != nil {
		return false, err
	}
	defer fw.kill()
	log.Printf("freeway pid %d, agent %s, http %s, data %s", fw.cmd.Process.Pid, fw.agent, fw.http, dir)
	if err := fw.waitReady(time.Minute); err != nil {
		return false, err
	}
	ld := &loader{addr: fw.agent, batch: o.batch, keys: o.keys}
	rep := &report{opts: o, args: os.Args, started: time.Now(), machine: machine()}

	rate := o.rate
	if rate <= 0 {
		cal, err := calibrate(fw, ld, o)
		if err != nil {
			return false, err
		}
		rep.cal = cal
		rate = o.fraction * cal.max
	}
	rep.rate = rate
	log.Printf("soak at %.0f entries/s for %v", rate, o.duration)

	ctx, cancel := context.WithTimeout(context.Background(), o.duration)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { ld.run(ctx, rate, o.conns) })
	soakStart := time.Now()
	ackedAtStart := ld.acked.Load()
	tick := time.NewTicker(o.sample)
	sampleOnce := func() error {
		s, err := fw.sample()
		if err != nil {
			return err
		}
		s.at = time.Since(soakStart)
		s.acked = ld.acked.Load()
		rep.samples = append(rep.samples, s)
		return nil
	}
	if err := sampleOnce(); err != nil {
		return false, err
	}
	var died error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-fw.exited:
			died = fmt.Errorf("freeway exited during the soak: %w", fw.exitErr)
			cancel()
			break loop
		case <-tick.C:
			if err := sampleOnce(); err != nil {
				died = err
				cancel()
				break loop
			}
			if n := len(rep.samples); n%12 == 0 {
				s := rep.samples[n-1]
				log.Printf("%v: rss %s heap %s goroutines %.0f fds %.0f, %d entries acked (%.0f/s), queue %.0f",
					s.at.Round(time.Second), mib(s.rss), mib(s.heap), s.goroutines, s.fds, s.acked,
					float64(s.acked-ackedAtStart)/s.at.Seconds(), s.queue)
			}
		}
	}
	tick.Stop()
	wg.Wait()
	rep.soaked = time.Since(soakStart)
	rep.achieved = float64(ld.acked.Load()-ackedAtStart) / rep.soaked.Seconds()
	if died != nil {
		rep.failures = append(rep.failures, died.Error())
	} else {
		rep.totals = checkTotals(fw, ld, o.keys)
		if !rep.totals.exact {
			rep.failures = append(rep.failures, "totals are not exact: "+rep.totals.detail)
		}
		rep.errorLines = countErrors(fw.logPath)
		if err := fw.stop(time.Minute); err != nil {
			rep.failures = append(rep.failures, err.Error())
		}
	}
	rep.load = ld.summary()
	rep.verdicts = flatness(rep.samples, o.warmup)
	for _, v := range rep.verdicts {
		if !v.flat {
			rep.failures = append(rep.failures, fmt.Sprintf("%s is not flat: %s", v.name, v.why))
		}
	}
	if du, err := diskUsage(dir); err == nil {
		rep.diskBytes = du
	}
	path, err := rep.write()
	if err != nil {
		return false, err
	}
	log.Printf("report: %s", path)
	for _, f := range rep.failures {
		log.Printf("FAIL: %s", f)
	}
	return len(rep.failures) == 0, nil
}

func start(binary, dir string) (*freeway, error) {
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	fw := &freeway{dir: dir, logPath: filepath.Join(dir, "freeway.log"), exited: make(chan struct{}),
		agent: fmt.Sprintf("127.0.0.1:%d", ports[0]), http: fmt.Sprintf("127.0.0.1:%d", ports[2])}
	cfg := fmt.Sprintf(`# written by bench/soak
data_dir: %s
log: {level: warn}
agent:
  listen: %s
  upstream: [127.0.0.1:%d]
calligraphus:
  listen: 127.0.0.1:%d
serving:
  listen: %s
  thrift_listen: ""
apps:
  - name: soak_count
    category: soak
    format: json
    window: 1d
    group_by: [key]
    aggregates:
      - {name: n, fn: count}
      - {name: total, fn: sum, field: value}
  - name: soak_big
    category: soak
    format: json
    window: 1d
    where: value >= 500
    aggregates:
      - {name: n, fn: count}
`, filepath.Join(dir, "data"), fw.agent, ports[1], ports[1], fw.http)
	cfgPath := filepath.Join(dir, "freeway.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(fw.logPath)
	if err != nil {
		return nil, err
	}
	fw.cmd = exec.Command(binary, "all", "--config", cfgPath)
	fw.cmd.Stdout, fw.cmd.Stderr = logf, logf
	if err := fw.cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	go func() {
		err := fw.cmd.Wait()
		_ = logf.Close() // freeway has exited; its log is complete
		fw.exitOnce.Do(func() { fw.exitErr = err; close(fw.exited) })
	}()
	return fw, nil
}

// freePorts returns n ports free now on the loopback.
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			_ = l.Close() // only held to pick free ports
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (fw *freeway) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-fw.exited:
			return fmt.Errorf("freeway exited at start: %w (log: %s)", fw.exitErr, fw.logPath)
		default:
		}
		resp, err := http.Get("http://" + fw.http + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("freeway not ready within %v (log: %s)", limit, fw.logPath)
}

// stop asks freeway to stop (SIGTERM) and waits for a clean exit.
func (fw *freeway) stop(limit time.Duration) error {
	_ = fw.cmd.Process.Signal(syscall.SIGTERM) // it may have exited already; the wait below tells
	select {
	case <-fw.exited:
		if fw.exitErr != nil {
			return fmt.Errorf("freeway did not stop cleanly: %w", fw.exitErr)
		}
		return nil
	case <-time.After(limit):
		return fmt.Errorf("freeway did not stop within %v of SIGTERM", limit)
	}
}

// kill ends the process started, if it still runs.
func (fw *freeway) kill() {
	select {
	case <-fw.exited:
	default:
		_ = fw.cmd.Process.Kill() // it may have exited already
		<-fw.exited
	}
}

// sample is one reading of the process.
type sample struct {
	at         time.Duration
	rss        float64 // bytes, /proc/PID/status VmRSS
	heap       float64 // go_memstats_heap_inuse_bytes
	goroutines float64
	fds        float64
	received   float64 // freeway_agent_entries_received_total (Scribe)
	applied    float64 // freeway_puma_entries_total
	queue      float64 // freeway_agent_queue_entries
	acked      int64   // entries the load got OK for
}

func (fw *freeway) sample() (sample, error) {
	var s sample
	m, err := fw.metrics()
	if err != nil {
		return s, err
	}
	s.heap, s.goroutines, s.fds = m["go_memstats_heap_inuse_bytes"], m["go_goroutines"], m["process_open_fds"]
	s.received, s.applied, s.queue = m[`freeway_agent_entries_received_total{source="scribe"}`], m["freeway_puma_entries_total"], m["freeway_agent_queue_entries"]
	s.rss, err = rss(fw.cmd.Process.Pid)
	return s, err
}

// metrics reads /metrics: series name (with its labels, as written) to value.
func (fw *freeway) metrics() (map[string]float64, error) {
	return admin.Scrape(http.DefaultClient, fw.http)
}

func rss(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

// loader sends the soak's load with internal/loadgen (short JSON lines,
// live event times) and keeps the totals of what was acknowledged over
// every run: the calibration and the soak.
type loader struct {
	addr  string
	batch int
	keys  int

	acked atomic.Int64 // entries answered OK
	sum   atomic.Int64 // of value, over acked entries
	big   atomic.Int64 // acked entries with value >= 500
	// Entries of calls that failed without an answer: the agent may or
	// may not have taken them (none on a healthy loopback).
	uncertain, uncertainSum, uncertainBig atomic.Int64

	mu   sync.Mutex
	runs []loadgen.Summary
}

// run sends at rate entries a second over conns connections (flat out
// if rate is 0) until ctx ends.
func (l *loader) run(ctx context.Context, rate float64, conns int) {
	count := func(acked, sum, big *atomic.Int64) func([]loadgen.Record) {
		return func(rs []loadgen.Record) {
			var s, b int64
			for _, r := range rs {
				s += r.Value
				if r.Value >= 500 {
					b++
				}
			}
			acked.Add(int64(len(rs)))
			sum.Add(s)
			big.Add(b)
		}
	}
	ld, err := loadgen.New(loadgen.Options{
		Addr: l.addr, Category: "soak", Conns: conns, Batch: l.batch, Rate: rate,
		Lines:     loadgen.Lines{Format: loadgen.JSON, Keys: l.keys, Seed: uint64(time.Now().UnixNano())},
		OnAck:     count(&l.acked, &l.sum, &l.big),
		OnUnknown: count(&l.uncertain, &l.uncertainSum, &l.uncertainBig),
	})
	if err != nil {
		log.Fatal(err)
	}
	s, _ := ld.Run(ctx)
	l.mu.Lock()
	l.runs = append(l.runs, s)
	l.mu.Unlock()
}

func (l *loader) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var calls, later, errs, behind int64
	for _, s := range l.runs {
		calls, later, errs, behind = calls+s.Calls, later+s.TryLater, errs+s.Errors, behind+s.Behind
	}
	last := l.runs[len(l.runs)-1].LatencyMs
	return fmt.Sprintf("%d entries acknowledged in %d Log calls of %d; %d TRY_LATER answers (retried); %d errors (%d entries of unknown fate); a connection fell a second behind its pace %d times; Log latency at the soak's rate p50 %.2fms p99 %.2fms max %.2fms",
		l.acked.Load(), calls, l.batch, later, errs, l.uncertain.Load(), behind, last.P50, last.P99, last.Max)
}

// calibration is the flat-out run.
type calibration struct {
	took              time.Duration
	ingest, aggregate float64 // entries a second, measured after the first third
	max               float64
}

func calibrate(fw *freeway, ld *loader, o options) (*calibration, error) {
	log.Printf("finding the maximum load: flat out for %v", o.calibrate)
	ctx, cancel := context.WithTimeout(context.Background(), o.calibrate)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { ld.run(ctx, 0, o.conns) })
	select {
	case <-time.After(o.calibrate / 3):
	case <-fw.exited:
		return nil, fmt.Errorf("freeway exited: %w", fw.exitErr)
	}
	a, err := fw.sample()
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	<-ctx.Done()
	b, err := fw.sample()
	if err != nil {
		return nil, err
	}
	dt := time.Since(t0).Seconds()
	wg.Wait()
	c := &calibration{took: o.calibrate, ingest: (b.received - a.received) / dt, aggregate: (b.applied - a.applied) / dt}
	c.max = min(c.ingest, c.aggregate)
	log.Printf("flat out: the agent acknowledged %.0f entries/s, Puma aggregated %.0f/s: maximum %.0f/s", c.ingest, c.aggregate, c.max)
	// Let the backlog drain before the soak starts.
	if err := waitApplied(fw, float64(ld.acked.Load()), 10*time.Minute); err != nil {
		return nil, err
	}
	return c, nil
}

// waitApplied waits until Puma has aggregated n entries.
func waitApplied(fw *freeway, n float64, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		s, err := fw.sample()
		if err != nil {
			return err
		}
		if s.applied >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("puma aggregated %.0f of %.0f entries within %v", s.applied, n, limit)
		}
		time.Sleep(time.Second)
	}
}

type totals struct {
	exact  bool
	detail string
}

// checkTotals waits for Puma to aggregate every acknowledged entry, then
// queries both apps over all time and compares with what the load counted.
func checkTotals(fw *freeway, ld *loader, keys int) totals {
	acked, sum, big := ld.acked.Load(), ld.sum.Load(), ld.big.Load()
	unc, uncSum, uncBig := ld.uncertain.Load(), ld.uncertainSum.Load(), ld.uncertainBig.Load()
	if err := waitApplied(fw, float64(acked), 5*time.Minute); err != nil {
		return totals{detail: err.Error()}
	}
	// A checkpoint or two later, nothing more may arrive: read twice.
	time.Sleep(2 * time.Second)
	q := func(app, groupBy string) (map[string]any, error) {
		from, to := time.Now().Add(-30*24*time.Hour).Unix(), time.Now().Add(30*24*time.Hour).Unix()
		u := fmt.Sprintf("http://%s/api/v1/query?app=%s&window=all&group_by=%s&from=%d&to=%d&limit=100000", fw.http, app, groupBy, from, to)
		resp, err := http.Get(u)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close() //nolint:errcheck // read to the end below
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("query %s: %s: %s", app, resp.Status, b)
		}
		var m map[string]any
		return m, json.Unmarshal(b, &m)
	}
	value := func(m map[string]any, name string) (float64, int) {
		rows, _ := m["rows"].([]any)
		var v float64
		for _, r := range rows {
			vals, _ := r.(map[string]any)["values"].(map[string]any)
			f, _ := vals[name].(float64)
			v += f
		}
		return v, len(rows)
	}
	all, err := q("soak_count", "")
	if err != nil {
		return totals{detail: err.Error()}
	}
	byKey, err := q("soak_count", "key")
	if err != nil {
		return totals{detail: err.Error()}
	}
	bigs, err := q("soak_big", "")
	if err != nil {
		return totals{detail: err.Error()}
	}
	n, _ := value(all, "n")
	total, _ := value(all, "total")
	nKeys, rows := value(byKey, "n")
	nBig, _ := value(bigs, "n")
	within := func(got float64, want, slack int64) bool {
		return got >= float64(want) && got <= float64(want+slack)
	}
	exact := within(n, acked, unc) && within(total, sum, uncSum) && within(nBig, big, uncBig) && nKeys == n && rows <= keys
	detail := fmt.Sprintf("count %.0f (acknowledged %d), sum %.0f (sent %d), filtered count %.0f (sent %d), %d keys summing to %.0f",
		n, acked, total, sum, nBig, big, rows, nKeys)
	if unc > 0 {
		detail += fmt.Sprintf("; %d entries of unknown fate allowed", unc)
	}
	return totals{exact: exact, detail: detail}
}

// countErrors counts the error lines freeway logged.
func countErrors(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return -1
	}
	return strings.Count(string(b), "level=ERROR")
}

func diskUsage(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return nil //nolint:nilerr // files come and go while freeway runs; count what is there
		}
		if info, err := d.Info(); err == nil && !d.IsDir() {
			n += info.Size()
		}
		return nil
	})
	return n, err
}

// verdict says whether a series stayed flat after the warm-up.
type verdict struct {
	name                    string
	first, last, minv, maxv float64
	early, late             float64 // means of the first and last quarter after the warm-up
	flat                    bool
	why                     string
	bytes                   bool
}

// flatness judges each series over the samples after warmup by the
// means of their first and last quarters: a leak grows, noise does not.
// Goroutines and descriptors may end 5 or 10% higher (connections and
// checkpoints come and go); memory 15% and 16 MiB higher (the GC's target
// moves with what each cycle found live).
func flatness(samples []sample, warmup time.Duration) []verdict {
	var post []sample
	for _, s := range samples {
		if s.at >= warmup {
			post = append(post, s)
		}
	}
	series := []struct {
		name  string
		get   func(sample) float64
		bytes bool
	}{
		{"RSS", func(s sample) float64 { return s.rss }, true},
		{"heap in use", func(s sample) float64 { return s.heap }, true},
		{"goroutines", func(s sample) float64 { return s.goroutines }, false},
		{"open fds", func(s sample) float64 { return s.fds }, false},
	}
	var out []verdict
	for _, sr := range series {
		v := verdict{name: sr.name, bytes: sr.bytes}
		if len(post) < 4 {
			v.why = fmt.Sprintf("%d samples after the warm-up: too few to judge", len(post))
			out = append(out, v)
			continue
		}
		vals := make([]float64, len(post))
		for i, s := range post {
			vals[i] = sr.get(s)
		}
		v.first, v.last, v.minv, v.maxv = vals[0], vals[len(vals)-1], slices.Min(vals), slices.Max(vals)
		q := len(vals) / 4
		v.early, v.late = mean(vals[:q]), mean(vals[len(vals)-q:])
		if sr.bytes {
			limit := v.early*1.15 + 16<<20
			v.flat = v.late <= limit
			v.why = fmt.Sprintf("late mean at most %s", mib(limit))
		} else {
			limit := v.early + math.Max(5, 0.1*v.early)
			v.flat = v.late <= limit
			v.why = fmt.Sprintf("late mean at most %.1f", limit)
		}
		out = append(out, v)
	}
	return out
}

func mean(v []float64) float64 {
	var s float64
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }

// report is what the run writes to bench/results.
type report struct {
	opts       options
	args       []string
	machine    string
	started    time.Time
	cal        *calibration
	rate       float64
	achieved   float64
	soaked     time.Duration
	samples    []sample
	verdicts   []verdict
	totals     totals
	load       string
	errorLines int
	diskBytes  int64
	failures   []string
}

func (r *report) write() (string, error) {
	if err := os.MkdirAll(r.opts.out, 0o755); err != nil {
		return "", err
	}
	base := filepath.Join(r.opts.out, r.started.Format("2006-01-02")+"-soak")
	if err := r.writeCSV(base + ".csv"); err != nil {
		return "", err
	}
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# Soak: `freeway all` at %.0f%% of its maximum load, %s\n\n", r.opts.fraction*100, r.started.Format("2006-01-02 15:04 MST"))
	verdict := "PASS"
	if len(r.failures) > 0 {
		verdict = "FAIL: " + strings.Join(r.failures, "; ")
	}
	w("**%s.** %v at %.0f entries/s (achieved %.0f/s).\n\n", verdict, r.soaked.Round(time.Second), r.rate, r.achieved)
	if c := os.Getenv("SOAK_COMMAND"); c != "" {
		w("Command: `%s`, which ran `%s`\n\n", c, strings.Join(r.args, " "))
	} else {
		w("Command: `%s`\n\n", strings.Join(r.args, " "))
	}
	w("Machine: %s\n\n", r.machine)
	w("Freeway %s, embedded backends (local dfs, bbolt, in-process coord), one process (`freeway all`).\n", gitRev())
	w("Load: %d Scribe connections, Log calls of %d JSON lines (internal/loadgen, `{\"ts\":1764612345678,\"key\":\"k0001234\",\"value\":57}`) over %d keys, category `soak`, read by two apps (count and sum by key; a filtered count) in 1-day windows, so that the aggregates held do not grow with the run.\n\n",
		r.opts.conns, r.opts.batch, r.opts.keys)
	if c := r.cal; c != nil {
		w("## Maximum load\n\nFlat out for %v: the agent acknowledged %.0f entries/s and Puma aggregated %.0f entries/s (measured over the last two thirds); the maximum is the lower, %.0f entries/s. The soak ran at %.0f%% of it.\n\n",
			c.took, c.ingest, c.aggregate, c.max, r.opts.fraction*100)
	}
	w("## Result\n\n")
	w("- Totals: %s — %s.\n", map[bool]string{true: "exact", false: "NOT exact"}[r.totals.exact], r.totals.detail)
	w("- Load: %s.\n", r.load)
	w("- Error lines in freeway's log: %d. Data written (dfs, store, queue): %.1f GiB.\n\n", r.errorLines, float64(r.diskBytes)/(1<<30))
	w("Series after a warm-up of %v (%d samples every %v; all samples in `%s`):\n\n", r.opts.warmup, r.postCount(), r.opts.sample, filepath.Base(base+".csv"))
	w("| series | first | last | min | max | early mean | late mean | flat |\n|---|---|---|---|---|---|---|---|\n")
	for _, v := range r.verdicts {
		f := func(x float64) string {
			if v.bytes {
				return mib(x)
			}
			return strconv.FormatFloat(x, 'f', 1, 64)
		}
		w("| %s | %s | %s | %s | %s | %s | %s | %s (%s) |\n", v.name, f(v.first), f(v.last), f(v.minv), f(v.maxv), f(v.early), f(v.late),
			map[bool]string{true: "yes", false: "NO"}[v.flat], v.why)
	}
	w("\nEarly and late means are those of the first and last quarter of the samples after the warm-up; a series is flat when its late mean is at most its early mean plus 5 (or 10%%) for goroutines and open fds, plus 15%% and 16 MiB for RSS and heap.\n\n")
	w("## Samples\n\n| time | RSS | heap in use | goroutines | open fds | acknowledged | aggregated | agent queue |\n|---|---|---|---|---|---|---|---|\n")
	step := max(1, len(r.samples)/15)
	for i, s := range r.samples {
		if i%step != 0 && i != len(r.samples)-1 {
			continue
		}
		w("| %v | %s | %s | %.0f | %.0f | %d | %.0f | %.0f |\n", s.at.Round(time.Second), mib(s.rss), mib(s.heap), s.goroutines, s.fds, s.acked, s.applied, s.queue)
	}
	path := base + ".md"
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}

func (r *report) postCount() int {
	n := 0
	for _, s := range r.samples {
		if s.at >= r.opts.warmup {
			n++
		}
	}
	return n
}

func (r *report) writeCSV(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	cw := csv.NewWriter(f)
	_ = cw.Write([]string{"seconds", "rss_bytes", "heap_inuse_bytes", "goroutines", "open_fds", "acknowledged", "received", "aggregated", "agent_queue_entries"}) // errors are sticky: cw.Error below
	for _, s := range r.samples {
		_ = cw.Write([]string{strconv.FormatFloat(s.at.Seconds(), 'f', 1, 64), ff(s.rss), ff(s.heap), ff(s.goroutines), ff(s.fds),
			strconv.FormatInt(s.acked, 10), ff(s.received), ff(s.applied), ff(s.queue)})
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		_ = f.Close() // the csv error is the one to report
		return err
	}
	return f.Close()
}

func ff(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// machine describes the host: nproc, lscpu's model, memory, Go.
func machine() string {
	parts := []string{fmt.Sprintf("nproc %d", runtime.NumCPU())}
	if out, err := exec.Command("lscpu").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			switch strings.TrimSpace(k) {
			case "Model name", "CPU(s)", "Thread(s) per core", "CPU max MHz", "Hypervisor vendor":
				parts = append(parts, strings.TrimSpace(k)+" "+strings.TrimSpace(v))
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
				parts = append(parts, fmt.Sprintf("memory %.1f GiB", kb/(1<<20)))
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		parts = append(parts, "load average at start "+strings.Join(strings.Fields(string(b))[:3], " "))
	}
	parts = append(parts, runtime.Version())
	return strings.Join(parts, ", ")
}

func gitRev() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return "(unknown commit)"
	}
	return strings.TrimSpace(string(out))
}
