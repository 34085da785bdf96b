//go:build linux

package main

// The machinery of the chaos test (chaos_test.go): processes of the real
// binary, the fault schedule, the generator and its ground truth,
// settling, and the check.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/admin"
	"github.com/freeway-dev/freeway/internal/backends"
	"github.com/freeway-dev/freeway/internal/backoff"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/thrift/gen/hbase"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

const (
	chaosApp      = "chaos"
	chaosCategory = "chaos"
	chaosBuckets  = 4
	chaosBaseTS   = 1_700_000_000 // event times are in [chaosBaseTS, +chaosSpanTS)
	chaosSpanTS   = 600
	// chaosMaxSize bounds the entries of one call, with values 1 .. 2^31:
	// sums stay exact in float64.
	chaosMaxSize = 32
	chaosWorkers = 4
	// callPause is the most a worker waits between calls (half of it on
	// average): about 200 calls and 3,000 entries a second in all, so that
	// a long run's answer (one row per call) stays quick to query from
	// HBase, and the machine has CPU left for the faults to bite.
	callPause = 30 * time.Millisecond

	// sessionTimeout is the ZooKeeper session timeout of the engine
	// processes; a long stop lasts more than twice it, and more than the
	// agents' upstream_timeout and callTimeout (5s).
	sessionTimeout = 4 * time.Second
	// callTimeout bounds one Log call; a call that takes longer is in doubt.
	callTimeout = 5 * time.Second
	// tryLaterGrace: how long a call answered TRY_LATER is retried after
	// the generator was told to stop, before it is given up (refused).
	tryLaterGrace = 30 * time.Second
	readyTimeout  = 3 * time.Minute
	settleTimeout = 4 * time.Minute
	// quietWindow: how long the pipeline's counters must stay unchanged,
	// and how far apart the two agreeing answers must be, to call it
	// settled; several checkpoint intervals and segment ages.
	quietWindow = 5 * time.Second
	// queryTimeout bounds the query of the whole answer (about 10s for
	// 100,000 keys from HBase here).
	queryTimeout = 2 * time.Minute
)

// harness runs one chaos test.
type harness struct {
	t       *testing.T
	s       chaosSettings
	backend string
	dir     string // configs, logs, data; kept when the test fails
	bin     string
	cfgPath string
	start   time.Time
	rng     *rand.Rand // the schedule's; the generator has its own
	http    *http.Client

	procs     []*chaosProc
	agents    []*chaosProc // where the generator sends
	queryAddr string       // host:port of the query API
	engines   string       // engines.sh, on the real engines
	dfsURL    string       // removed after a successful run on the engines
	hbase     string       // the Thrift2 gateway, and the prefix of the tables
	prefix    string       // dropped after a successful run

	buckets int // of the chaos category; 0: chaosBuckets

	calls [][]*call            // per generator worker
	final map[string]cellValue // the settled answer

	engineMu  sync.Mutex // one engines.sh restart at a time
	watchStop chan struct{}
	watchDone chan struct{}

	mu           sync.Mutex
	supervise    bool           // restart processes that exit on their own
	sup          sync.WaitGroup // supervisor restarts
	done         map[string]int // faults carried out, by kind
	selfExits    int
	engineDeaths int
}

// chaosProc is one process of the freeway binary, restarted with the same
// arguments.
type chaosProc struct {
	name    string
	args    []string
	logPath string
	http    string // host:port of its /metrics and /readyz
	scribe  string // Scribe address, for agents

	// op is held by whatever acts on the process (a fault, a restart), so
	// that faults on one process do not overlap.
	op sync.Mutex

	mu         sync.Mutex
	cmd        *exec.Cmd
	exited     chan struct{}
	expectExit bool
	starts     int
}

func (p *chaosProc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *chaosProc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

func (p *chaosProc) signal(sig syscall.Signal) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	_ = p.cmd.Process.Signal(sig) // it may have exited already; the harness checks what it finds
	return p.cmd.Process.Pid
}

func newHarness(t *testing.T, s chaosSettings, backend string) *harness {
	dir, err := os.MkdirTemp("", "freeway-chaos-"+backend+"-")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{
		t: t, s: s, backend: backend, dir: dir, start: time.Now(),
		rng:  rand.New(rand.NewPCG(s.seed, 0x6368616f73)),
		http: &http.Client{Timeout: 5 * time.Second},
		done: map[string]int{}, supervise: true,
	}
	h.bin = filepath.Join(dir, "freeway")
	args := []string{"build", "-o", h.bin}
	if s.race {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		os.RemoveAll(dir)
		t.Fatalf("build: %v", err)
	}
	h.logf("chaos %s on the %s backends: seed %d (FREEWAY_CHAOS_SEED=%d replays it), %s of faults; logs in %s",
		s.mode, backend, s.seed, s.seed, s.duration, dir)
	return h
}

// logf adds a line to the timeline, with the time since the start.
func (h *harness) logf(format string, args ...any) {
	h.t.Helper()
	h.t.Logf("+%6.1fs %s", time.Since(h.start).Seconds(), fmt.Sprintf(format, args...))
}

// failf records a failure on the timeline; the test fails at its end.
func (h *harness) failf(format string, args ...any) {
	h.t.Helper()
	h.t.Errorf("+%6.1fs FAIL: %s", time.Since(h.start).Seconds(), fmt.Sprintf(format, args...))
}

// writeConfig writes the configuration every process reads; backends is
// YAML naming the dfs, store and coord, or "" for the embedded ones.
func (h *harness) writeConfig(backends string) {
	h.cfgPath = filepath.Join(h.dir, "freeway.yaml")
	cfg := backends + fmt.Sprintf(`buckets: %d
log: {level: info}
agent: {retry_max: 1s, upstream_timeout: 5s}
calligraphus: {segment_max_age: 300ms, forward_timeout: 3s}
puma: {checkpoint_interval: 1s}
serving: {thrift_listen: "", max_rows: 1000000, query_timeout: 2m}
apps:
  - name: %s
    category: %s
    format: json
    time: {field: ts, layout: unix}
    window: 1m
    allowed_lateness: 1h
    group_by: [k]
    aggregates:
      - {name: n, fn: count}
      - {name: s, fn: sum, field: v}
`, h.nBuckets(), chaosApp, chaosCategory)
	if err := os.WriteFile(h.cfgPath, []byte(cfg), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// nBuckets is the bucket count of the chaos category.
func (h *harness) nBuckets() int {
	if h.buckets > 0 {
		return h.buckets
	}
	return chaosBuckets
}

func (h *harness) addProc(name, target, httpAddr, scribeAddr string, args ...string) *chaosProc {
	p := &chaosProc{
		name: name, http: httpAddr, scribe: scribeAddr,
		logPath: filepath.Join(h.dir, name+".log"),
		args:    append([]string{target, "--config", h.cfgPath}, args...),
	}
	h.procs = append(h.procs, p)
	return p
}

func (h *harness) byName(name string) *chaosProc {
	for _, p := range h.procs {
		if p.name == name {
			return p
		}
	}
	h.t.Fatalf("no process %s", name)
	return nil
}

// launch starts p, appending its output to its log file.
func (h *harness) launch(p *chaosProc) error {
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close() // the child has its own descriptor
	p.mu.Lock()
	p.starts++
	n := p.starts
	p.mu.Unlock()
	_, _ = fmt.Fprintf(f, "==== chaos: start %d at +%.1fs: freeway %s\n", n, time.Since(h.start).Seconds(), strings.Join(p.args, " "))
	cmd := exec.Command(h.bin, p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Should the test binary die (a panic, go test's -timeout), its
	// processes die with it rather than run on, stopped or not.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	exited := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.exited, p.expectExit = cmd, exited, false
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		expected := p.expectExit
		p.mu.Unlock()
		if !expected {
			h.selfExit(p, cmd.Process.Pid, err)
		}
		close(exited)
	}()
	return nil
}

// selfExit handles a process that exited without being killed: it is
// shown and counted, and restarted as a supervisor would.
func (h *harness) selfExit(p *chaosProc, pid int, err error) {
	h.logf("%s (pid %d) exited on its own: %v; its last lines:\n%s", p.name, pid, err, tail(p.logPath, 8))
	h.mu.Lock()
	defer h.mu.Unlock()
	h.selfExits++
	if !h.supervise {
		return
	}
	h.sup.Add(1)
	go func() {
		defer h.sup.Done()
		p.op.Lock()
		defer p.op.Unlock()
		time.Sleep(time.Second)
		h.mu.Lock()
		on := h.supervise
		h.mu.Unlock()
		if on && !p.running() {
			h.logf("restart %s, which exited on its own", p.name)
			h.restart(p)
		}
	}()
}

// kill SIGKILLs p and waits for it to exit; it returns the pid, or 0 if
// p was not running.
func (h *harness) kill(p *chaosProc) int {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.expectExit = true
	p.mu.Unlock()
	if cmd == nil {
		return 0
	}
	select {
	case <-exited:
		return 0
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGKILL) // it may have exited already
	<-exited
	return cmd.Process.Pid
}

// restart starts p and waits until it is ready; the caller holds p.op.
func (h *harness) restart(p *chaosProc) bool {
	if err := h.launch(p); err != nil {
		h.failf("%v", err)
		return false
	}
	h.logf("start %s (pid %d)", p.name, p.pid())
	t0 := time.Now()
	if err := h.waitReady(p); err != nil {
		h.failf("%s cannot restart: %v", p.name, err)
		return false
	}
	h.logf("%s ready after %.1fs", p.name, time.Since(t0).Seconds())
	return true
}

// waitReady waits until p answers /readyz with 200.
func (h *harness) waitReady(p *chaosProc) error {
	deadline := time.Now().Add(readyTimeout)
	var last string
	for time.Now().Before(deadline) {
		if !p.running() {
			return fmt.Errorf("it exited while starting; its last lines:\n%s", tail(p.logPath, 15))
		}
		resp, err := h.http.Get("http://" + p.http + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("not ready within %s (last /readyz: %s); its last lines:\n%s", readyTimeout, last, tail(p.logPath, 15))
}

// ---------------------------------------------------------------- faults

type faultKind string

const (
	faultKill   faultKind = "kill"   // SIGKILL, pause, restart
	faultStop   faultKind = "stop"   // SIGSTOP, pause, SIGCONT
	faultLong   faultKind = "long"   // SIGSTOP past the session, upstream and call timeouts
	faultEngine faultKind = "engine" // engines.sh restart
)

type fault struct {
	at     time.Duration // after the start of the fault phase
	kind   faultKind
	target string        // a process, or an engine for faultEngine
	d      time.Duration // the pause after a kill, or how long a stop lasts
	kill   bool          // engines.sh restart --kill
	// required faults are never skipped: the fault phase lasts until they
	// are done.
	required bool
}

// engineSpacing is the least time between two engine restarts of the
// random part of the plan: a restart takes 5 to 50s here, and a queue of
// them would only be skipped.
const engineSpacing = 25 * time.Second

func pick[T any](rng *rand.Rand, xs []T) T { return xs[rng.IntN(len(xs))] }

// plan is the fault schedule: the required faults in random order, then
// random ones (kinds in proportion to weights) until the phase ends.
func (h *harness) plan(required []fault, weights map[faultKind]int, targets map[faultKind][]string) []fault {
	rng := h.rng
	rng.Shuffle(len(required), func(i, j int) { required[i], required[j] = required[j], required[i] })
	kinds := make([]faultKind, 0, len(weights))
	total := 0
	for k, w := range weights {
		kinds = append(kinds, k)
		total += w
	}
	sort.Slice(kinds, func(i, j int) bool { return kinds[i] < kinds[j] })
	var plan []fault
	at := 2 * time.Second
	lastEngine := -engineSpacing
	for i := 0; ; i++ {
		var f fault
		if i < len(required) {
			f = required[i]
			f.required = true
		} else {
			if at > h.s.duration-2*time.Second {
				break
			}
			for f.kind == "" || f.kind == faultEngine && at-lastEngine < engineSpacing {
				n := rng.IntN(total)
				for _, k := range kinds {
					if n -= weights[k]; n < 0 {
						f.kind = k
						break
					}
				}
			}
			f.target = pick(rng, targets[f.kind])
			f.kill = rng.IntN(2) == 0
		}
		if f.kind == faultEngine {
			lastEngine = at
		}
		switch f.kind {
		case faultKill:
			f.d = 200*time.Millisecond + time.Duration(rng.Int64N(int64(1800*time.Millisecond)))
		case faultStop:
			f.d = 300*time.Millisecond + time.Duration(rng.Int64N(int64(2700*time.Millisecond)))
		case faultLong:
			f.d = 2*sessionTimeout + time.Duration(rng.Int64N(int64(time.Second)))
		}
		f.at = at
		plan = append(plan, f)
		at += time.Second + time.Duration(rng.Int64N(int64(2500*time.Millisecond)))
	}
	return plan
}

// runFaults carries out the plan until ctx ends; faults on one target
// wait for the one before to finish; a fault that could not start before
// ctx ended is skipped, unless it is required (ctx does not end before
// the required faults are done: required.Done is called for each).
func (h *harness) runFaults(ctx context.Context, phase time.Time, plan []fault, wg, required *sync.WaitGroup) {
	for _, f := range plan {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(phase.Add(f.at))):
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if f.required {
				defer required.Done()
			}
			var lock *sync.Mutex
			if f.kind == faultEngine {
				lock = &h.engineMu
			} else {
				lock = &h.byName(f.target).op
			}
			for !lock.TryLock() {
				select {
				case <-ctx.Done():
					h.logf("skipped %s %s: still busy when the fault phase ended", f.kind, f.target)
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
			defer lock.Unlock()
			h.doFault(f)
		}()
	}
}

func (h *harness) doFault(f fault) {
	h.mu.Lock()
	h.done[string(f.kind)]++
	h.mu.Unlock()
	switch f.kind {
	case faultKill:
		p := h.byName(f.target)
		pid := h.kill(p)
		h.logf("SIGKILL %s (pid %d); restart in %.1fs", p.name, pid, f.d.Seconds())
		time.Sleep(f.d)
		h.restart(p)
	case faultStop, faultLong:
		p := h.byName(f.target)
		if !p.running() {
			h.logf("skipped SIGSTOP %s: not running", p.name)
			return
		}
		what := ""
		if f.kind == faultLong {
			what = fmt.Sprintf(", past the %s call and upstream timeouts", callTimeout)
			if strings.HasPrefix(h.backend, "engines") {
				what += fmt.Sprintf(" and the %s ZooKeeper session timeout", sessionTimeout)
			}
		}
		pid := p.signal(syscall.SIGSTOP)
		h.logf("SIGSTOP %s (pid %d) for %.1fs%s", p.name, pid, f.d.Seconds(), what)
		time.Sleep(f.d)
		p.signal(syscall.SIGCONT)
		h.logf("SIGCONT %s (pid %d)", p.name, pid)
	case faultEngine:
		args := []string{"restart", f.target}
		if f.kill {
			args = append(args, "--kill")
		}
		h.logf("engines.sh %s", strings.Join(args, " "))
		t0 := time.Now()
		out, err := h.runEngines(args...)
		if err != nil {
			h.failf("engines.sh %s: %v\n%s", strings.Join(args, " "), err, out)
			// Bring it back, so that the run can still settle and tell
			// what the pipeline did.
			if out, err := h.runEngines("up"); err != nil {
				h.failf("engines.sh up: %v\n%s", err, out)
			}
			return
		}
		h.logf("%s back after %.1fs", f.target, time.Since(t0).Seconds())
	}
}

// runEngines runs engines.sh, appending its output to engines.log (but
// for a status that is all up).
func (h *harness) runEngines(args ...string) (string, error) {
	t0 := time.Since(h.start)
	out, err := exec.Command(h.engines, args...).CombinedOutput()
	if args[0] == "status" && err == nil {
		return string(out), nil
	}
	if f, ferr := os.OpenFile(filepath.Join(h.dir, "engines.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); ferr == nil {
		_, _ = fmt.Fprintf(f, "==== +%.1fs to +%.1fs: engines.sh %s (%v)\n%s", t0.Seconds(), time.Since(h.start).Seconds(), strings.Join(args, " "), err, out)
		f.Close()
	}
	return string(out), err
}

// watchEngines brings back an engine that went down without a fault, from
// the start of the run until finish: on this shared 2-core machine the
// whole host has stalled for 8s under load, which expired HBase's own
// ZooKeeper session and made it abort. That is outside the fault model
// and not Freeway's doing; it is shown and counted, and the engines are
// started again so that the run still tells whether Freeway recovers.
func (h *harness) watchEngines() {
	h.watchStop, h.watchDone = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(h.watchDone)
		for {
			select {
			case <-h.watchStop:
				return
			case <-time.After(5 * time.Second):
			}
			if !h.engineMu.TryLock() {
				continue // a restart is in progress
			}
			if out, err := h.runEngines("status"); err != nil {
				h.mu.Lock()
				h.engineDeaths++
				h.mu.Unlock()
				h.logf("an engine is down without a fault (outside the fault model):\n%s\nengines.sh up", strings.TrimRight(out, "\n"))
				t0 := time.Now()
				if out, err := h.runEngines("up"); err != nil {
					h.failf("engines.sh up: %v\n%s", err, out)
				} else {
					h.logf("engines up again after %.1fs", time.Since(t0).Seconds())
				}
			}
			h.engineMu.Unlock()
		}
	}()
}

// ---------------------------------------------------------------- generator

type callState int

const (
	unsent  callState = iota // never reached an agent
	acked                    // answered OK
	inDoubt                  // the connection failed before an answer
	refused                  // answered only TRY_LATER, then given up
)

func (s callState) String() string {
	return [...]string{"unsent", "acked", "in doubt", "refused"}[s]
}

// call is one Log call of the generator: key gets size entries with
// values 1, 2, 4, ...
type call struct {
	key      string
	size     int
	agent    string        // the agent it was last sent to
	at       time.Duration // when it was first sent
	state    callState
	tryLater int
	err      string
}

type scribeConn struct {
	agent string // the name of the agent it is connected to
	trans thrift.TTransport
	*scribethrift.ScribeClient
}

// dialScribe connects as a stock Scribe client does: framed transport,
// binary protocol.
func dialScribe(addr string) (*scribeConn, error) {
	cfg := &thrift.TConfiguration{ConnectTimeout: 2 * time.Second, SocketTimeout: callTimeout}
	trans := thrift.NewTFramedTransportConf(thrift.NewTSocketConf(addr, cfg), cfg)
	if err := trans.Open(); err != nil {
		return nil, err
	}
	pf := thrift.NewTBinaryProtocolFactoryConf(cfg)
	return &scribeConn{trans: trans, ScribeClient: scribethrift.NewScribeClient(thrift.NewTStandardClient(pf.GetProtocol(trans), pf.GetProtocol(trans)))}, nil
}

// generate sends calls until ctx ends; hard ends the retries of a call
// answered TRY_LATER.
func (h *harness) generate(ctx, hard context.Context, w int) []*call {
	rng := rand.New(rand.NewPCG(h.s.seed, uint64(w)+1))
	var calls []*call
	var conn *scribeConn
	defer func() {
		if conn != nil {
			conn.trans.Close()
		}
	}()
	ai := w % len(h.agents)
	for n := 0; ctx.Err() == nil; n++ {
		c := &call{key: fmt.Sprintf("w%d-%06d", w, n), size: 1 + rng.IntN(chaosMaxSize)}
		// Event times within a minute of each other: a key spans at most
		// two windows, which bounds Puma's cells.
		ts := chaosBaseTS + rng.IntN(chaosSpanTS-60)
		entries := make([]*scribethrift.LogEntry, c.size)
		for i := range entries {
			msg := fmt.Sprintf(`{"ts":%d,"k":%q,"v":%d}`, ts+rng.IntN(60), c.key, 1<<i)
			entries[i] = &scribethrift.LogEntry{Category: chaosCategory, Message: []byte(msg)}
		}
		calls = append(calls, c)
	send:
		for {
			if conn == nil {
				if ctx.Err() != nil {
					break send // unsent, or refused after TRY_LATER
				}
				a := h.agents[ai]
				var err error
				if conn, err = dialScribe(a.scribe); err != nil {
					conn = nil
					ai = (ai + 1) % len(h.agents)
					backoff.Sleep(ctx, 100*time.Millisecond)
					continue
				}
				conn.agent = a.name
			}
			c.agent = conn.agent
			if c.at == 0 {
				c.at = time.Since(h.start)
			}
			rc, err := conn.Log(context.Background(), entries)
			switch {
			case err != nil:
				// It may have been made durable before the failure: in
				// doubt, and never resent (that would be at-least-once).
				c.state, c.err = inDoubt, err.Error()
				conn.trans.Close()
				conn = nil
				ai = (ai + 1) % len(h.agents)
				break send
			case rc == scribethrift.ResultCode_OK:
				c.state = acked
				break send
			}
			c.state = refused
			c.tryLater++
			if hard.Err() != nil {
				break send
			}
			backoff.Sleep(hard, 50*time.Millisecond)
		}
		backoff.Sleep(ctx, time.Duration(rng.Int64N(int64(callPause))))
	}
	return calls
}

// ---------------------------------------------------------------- the run

// run starts every process, runs the generator and the faults for the
// phase, settles, and checks. It reports whether the check passed.
func (h *harness) run(plan []fault) bool {
	if h.engines != "" {
		h.watchEngines()
	}
	for _, p := range h.procs {
		p.op.Lock()
		ok := h.restart(p)
		p.op.Unlock()
		if !ok {
			return false
		}
	}
	h.logf("%d processes up; %d faults planned over %s", len(h.procs), len(plan), h.s.duration)

	phase := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hard, cancelHard := context.WithCancel(context.Background())
	defer cancelHard()
	go func() {
		<-ctx.Done()
		time.AfterFunc(tryLaterGrace, cancelHard)
	}()
	h.calls = make([][]*call, chaosWorkers)
	var gen, faults sync.WaitGroup
	for w := range chaosWorkers {
		gen.Add(1)
		go func() {
			defer gen.Done()
			h.calls[w] = h.generate(ctx, hard, w)
		}()
	}
	var required sync.WaitGroup
	for _, f := range plan {
		if f.required {
			required.Add(1)
		}
	}
	faults.Add(1)
	go func() {
		defer faults.Done()
		h.runFaults(ctx, phase, plan, &faults, &required)
	}()
	time.Sleep(h.s.duration)
	waited := time.Now()
	required.Wait()
	if time.Since(waited) > time.Second {
		h.logf("fault phase extended by %.1fs, until every required fault was done", time.Since(waited).Seconds())
	}
	cancel()
	h.logf("fault phase over; waiting for the generator and the faults in progress")
	gen.Wait()
	faults.Wait()
	var sent, acks int
	for _, cs := range h.calls {
		sent += len(cs)
		for _, c := range cs {
			if c.state == acked {
				acks++
			}
		}
	}
	h.logf("generator stopped: %d calls, %d acknowledged", sent, acks)

	ans, ok := h.settle()
	if !ok {
		return false
	}
	h.final = ans
	return h.check(ans)
}

// ensureUp makes every process run, not stopped, and ready.
func (h *harness) ensureUp() bool {
	for _, p := range h.procs {
		p.op.Lock()
		ok := true
		if !p.running() {
			h.logf("%s is down; restart it", p.name)
			ok = h.restart(p)
		} else {
			p.signal(syscall.SIGCONT) // no fault is running: harmless
			if err := h.waitReady(p); err != nil {
				h.failf("%s is not ready: %v", p.name, err)
				ok = false
			}
		}
		p.op.Unlock()
		if !ok {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------- metrics

// metricSet is a scrape: series ("name" or "name{labels}") to value.
type metricSet map[string]float64

func (h *harness) scrape(addr string) (metricSet, error) {
	return admin.Scrape(h.http, addr)
}

// sum adds every series of the metric name.
func (m metricSet) sum(name string) float64 {
	var s float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}

// series lists the series of name, by their labels.
func (m metricSet) series(name string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if labels, ok := strings.CutPrefix(k, name+"{"); ok {
			out[strings.TrimSuffix(labels, "}")] = v
		}
	}
	return out
}

// observation is what settling looks at.
type observation struct {
	quiet       bool
	why         string  // why not quiet
	fingerprint string  // the pipeline's counters; unchanged while nothing moves
	ckptAge     float64 // the oldest last commit over the Puma nodes, in seconds
}

func (h *harness) observe() observation {
	var ob observation
	var fp strings.Builder
	var queued, pending, uncommitted float64
	shards := map[string]int{}
	var lag float64
	for _, p := range h.procs {
		m, err := h.scrape(p.http)
		if err != nil {
			ob.why = fmt.Sprintf("%s: %v", p.name, err)
			return ob
		}
		queued += m.sum("freeway_agent_queue_entries") + m.sum("freeway_agent_batches_in_flight")
		pending += m.sum("freeway_calligraphus_pending_bytes")
		uncommitted += m.sum("freeway_puma_shards_uncommitted")
		for labels, v := range m.series("freeway_puma_segment_lag") {
			shards[labels]++
			lag += v
		}
		if age, ok := m["freeway_puma_checkpoint_age_seconds"]; ok {
			ob.ckptAge = max(ob.ckptAge, age)
		}
		fmt.Fprintf(&fp, "%s/%d:", p.name, p.pid())
		for _, name := range []string{
			"freeway_agent_entries_received_total", "freeway_agent_entries_shipped_total",
			"freeway_calligraphus_entries_written_total", "freeway_calligraphus_segments_published_total",
			"freeway_puma_entries_total", "freeway_puma_duplicates_total",
		} {
			fmt.Fprintf(&fp, " %g", m.sum(name))
		}
		fp.WriteString(";")
	}
	ob.fingerprint = fp.String()
	multi := 0
	for _, n := range shards {
		if n > 1 {
			multi++
		}
	}
	switch {
	case queued > 0:
		ob.why = fmt.Sprintf("%g entries still in agent queues or in flight", queued)
	case pending > 0:
		ob.why = fmt.Sprintf("%g bytes pending in the writer", pending)
	case len(shards) != h.nBuckets() || multi > 0:
		ob.why = fmt.Sprintf("shards running: %v (want each of %d once)", shards, h.nBuckets())
	case lag > 0:
		ob.why = fmt.Sprintf("segment lag %g", lag)
	case uncommitted > 0:
		ob.why = fmt.Sprintf("%g shards read past their last commit", uncommitted)
	default:
		ob.quiet = true
	}
	return ob
}

// settle waits until the pipeline has shipped, read and committed
// everything and two answers agree; it returns that answer.
func (h *harness) settle() (map[string]cellValue, bool) {
	t0 := time.Now()
	if !h.ensureUp() {
		return nil, false
	}
	deadline := t0.Add(settleTimeout)
	var stableSince, firstAt time.Time
	var fp, why string
	var first map[string]cellValue
	lastReport := time.Now()
	for ; time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if time.Since(lastReport) >= 10*time.Second && why != "" {
			h.logf("settling: %s", why)
			lastReport = time.Now()
		}
		ob := h.observe()
		now := time.Now()
		if !ob.quiet || ob.fingerprint != fp {
			why = ob.why
			if ob.quiet {
				why = "counters still moving"
			}
			fp, stableSince, first = ob.fingerprint, now, nil
			continue
		}
		quiet := now.Sub(stableSince)
		if quiet < quietWindow || ob.ckptAge >= quiet.Seconds() {
			why = fmt.Sprintf("quiet for %.1fs, last checkpoint %.1fs ago", quiet.Seconds(), ob.ckptAge)
			continue
		}
		ans, err := h.answer()
		if err != nil {
			why = err.Error()
			continue
		}
		if first == nil || !sameAnswer(first, ans) {
			first, firstAt = ans, now
			why = "waiting for a second answer"
			continue
		}
		if now.Sub(firstAt) < quietWindow {
			continue
		}
		h.logf("settled after %.1fs: queues empty, all shards read and committed, the answer stable (%d keys)", time.Since(t0).Seconds(), len(ans))
		return ans, true
	}
	h.failf("the pipeline did not settle within %s: %s", settleTimeout, why)
	return nil, false
}

// ---------------------------------------------------------------- the check

// cellValue is a key's count and sum.
type cellValue struct{ n, s float64 }

func (h *harness) answer() (map[string]cellValue, error) {
	url := fmt.Sprintf("http://%s/api/v1/query?app=%s&from=%d&to=%d&group_by=k&window=all",
		h.queryAddr, chaosApp, chaosBaseTS-1000, chaosBaseTS+chaosSpanTS+1000)
	resp, err := (&http.Client{Timeout: queryTimeout}).Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("query: %s %s", resp.Status, body)
	}
	var a struct {
		Rows []struct {
			Key    map[string]string   `json:"key"`
			Values map[string]*float64 `json:"values"`
		} `json:"rows"`
		Truncated     bool            `json:"truncated"`
		Partial       bool            `json:"partial"`
		MissingShards json.RawMessage `json:"missing_shards"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, fmt.Errorf("query answer: %w", err)
	}
	if a.Truncated {
		return nil, errors.New("query answer truncated")
	}
	if a.Partial {
		return nil, fmt.Errorf("query answer partial, missing shards %s", a.MissingShards)
	}
	out := make(map[string]cellValue, len(a.Rows))
	for _, r := range a.Rows {
		var v cellValue
		if p := r.Values["n"]; p != nil {
			v.n = *p
		}
		if p := r.Values["s"]; p != nil {
			v.s = *p
		}
		out[r.Key["k"]] = v
	}
	return out, nil
}

func sameAnswer(a, b map[string]cellValue) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func diffAnswers(a, b map[string]cellValue) string {
	var lines []string
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			lines = append(lines, fmt.Sprintf("  %s: before n=%g s=%g, after n=%g s=%g", k, v.n, v.s, w.n, w.s))
		}
	}
	for k, w := range b {
		if _, ok := a[k]; !ok {
			lines = append(lines, fmt.Sprintf("  %s: before absent, after n=%g s=%g", k, w.n, w.s))
		}
	}
	sort.Strings(lines)
	if len(lines) > 30 {
		lines = append(lines[:30], fmt.Sprintf("  ... and %d more", len(lines)-30))
	}
	return strings.Join(lines, "\n")
}

// check compares the answer with the ground truth and prints the totals.
func (h *harness) check(ans map[string]cellValue) bool {
	var problems []string
	var byState [4]struct{ calls, entries int }
	var doubtWhole, doubtPart, doubtNone, tryLater int
	var lost, doubled int
	var counted float64
	sent := map[string]bool{}
	for _, cs := range h.calls {
		for _, c := range cs {
			sent[c.key] = true
			byState[c.state].calls++
			byState[c.state].entries += c.size
			tryLater += c.tryLater
			v := ans[c.key]
			full := float64(uint64(1)<<c.size - 1)
			bad := ""
			switch c.state {
			case acked:
				switch {
				case v.n == float64(c.size) && v.s == full:
				case v.n < float64(c.size) && subset(v, c.size):
					bad = fmt.Sprintf("LOST %g of %d acknowledged entries", float64(c.size)-v.n, c.size)
					lost += c.size - int(v.n)
				default:
					bad = fmt.Sprintf("DOUBLED: acknowledged %d entries, counted n=%g s=%g (want s=%g)", c.size, v.n, v.s, full)
					doubled++
				}
			case inDoubt:
				switch {
				case !subset(v, c.size):
					bad = fmt.Sprintf("DOUBLED: in-doubt call of %d entries counted n=%g s=%g, more than once each", c.size, v.n, v.s)
					doubled++
				case v.n == float64(c.size):
					doubtWhole++
				case v.n > 0:
					doubtPart++
				default:
					doubtNone++
				}
			default:
				if v.n != 0 {
					bad = fmt.Sprintf("COUNTED a call that was %s (%d TRY_LATER answers): n=%g s=%g", c.state, c.tryLater, v.n, v.s)
				}
			}
			counted += v.n
			if bad != "" {
				problems = append(problems, fmt.Sprintf("%s: %s; sent to %s at +%.1fs%s", c.key, bad, c.agent, c.at.Seconds(), errSuffix(c.err)))
			}
		}
	}
	for k, v := range ans {
		if !sent[k] {
			problems = append(problems, fmt.Sprintf("%s: PHANTOM key nobody sent, n=%g s=%g", k, v.n, v.s))
		}
	}
	total := 0
	for _, st := range byState {
		total += st.entries
	}
	if counted > float64(total) {
		problems = append(problems, fmt.Sprintf("counted %g entries, more than the %d sent", counted, total))
	}
	h.mu.Lock()
	faults := fmt.Sprint(h.done)
	self, deaths := h.selfExits, h.engineDeaths
	h.mu.Unlock()
	h.logf("faults done: %s; processes that exited on their own: %d; engines found down without a fault: %d", faults, self, deaths)
	h.logf("calls: %d acknowledged (%d entries); %d in doubt (%d entries: %d counted whole, %d in part, %d not at all); %d refused after TRY_LATER; %d unsent; %d TRY_LATER answers",
		byState[acked].calls, byState[acked].entries, byState[inDoubt].calls, byState[inDoubt].entries,
		doubtWhole, doubtPart, doubtNone, byState[refused].calls, byState[unsent].calls, tryLater)
	h.logf("answer: %d keys, %.0f entries counted of %d sent; acknowledged entries lost: %d; keys counted more than once: %d",
		len(ans), counted, total, lost, doubled)
	h.logf("counters of note (since each process's last start):\n%s", h.notableCounters())
	h.logf("events in the process logs:\n%s", h.logEvents())
	if len(problems) == 0 {
		h.logf("PASS: every acknowledged call counted exactly once, nothing counted twice")
		return true
	}
	sort.Strings(problems)
	shown := problems
	if len(shown) > 40 {
		shown = append(shown[:40:40], fmt.Sprintf("... and %d more", len(problems)-40))
	}
	h.failf("%d keys differ from the ground truth:\n  %s", len(problems), strings.Join(shown, "\n  "))
	return false
}

func errSuffix(err string) string {
	if err == "" {
		return ""
	}
	return " (" + err + ")"
}

// subset reports whether (n, s) is some set of distinct entries of a
// call of size entries (values 1, 2, 4, ...): s has n bits, all below
// 2^size. A repeated entry carries into another bit, leaving fewer bits
// than entries counted.
func subset(v cellValue, size int) bool {
	if v.s < 0 || v.s != math.Trunc(v.s) || v.s >= float64(uint64(1)<<size) {
		return false
	}
	return float64(bits.OnesCount64(uint64(v.s))) == v.n
}

// notableCounters lists, per process, the non-zero counters that tell
// what the faults did (since each process's last start).
func (h *harness) notableCounters() string {
	names := []string{
		"freeway_agent_ship_errors_total", "freeway_agent_try_later_received_total",
		"freeway_agent_queue_lost_entries_total", "freeway_agent_entries_rejected_total",
		"freeway_calligraphus_try_later_total", "freeway_calligraphus_segments_salvaged_total",
		"freeway_calligraphus_entries_rejected_total",
		"freeway_puma_duplicates_total", "freeway_puma_sequence_regressions_total",
		"freeway_puma_checkpoint_errors_total", "freeway_puma_read_errors_total",
		"freeway_puma_records_dropped_total", "freeway_puma_dedup_keys_forgotten_total",
		"freeway_ptail_damaged_blocks_total", "freeway_ptail_damaged_entries_total",
	}
	var b strings.Builder
	for _, p := range h.procs {
		m, err := h.scrape(p.http)
		if err != nil {
			fmt.Fprintf(&b, "  %s: %v\n", p.name, err)
			continue
		}
		var parts []string
		for _, name := range names {
			for k, v := range m {
				if (k == name || strings.HasPrefix(k, name+"{")) && v != 0 {
					parts = append(parts, fmt.Sprintf("%s=%g", strings.TrimPrefix(k, "freeway_"), v))
				}
			}
		}
		sort.Strings(parts)
		p.mu.Lock()
		starts := p.starts
		p.mu.Unlock()
		fmt.Fprintf(&b, "  %s (started %d times): %s\n", p.name, starts, strings.Join(parts, " "))
	}
	return strings.TrimRight(b.String(), "\n")
}

// logEvents counts, per process, the log lines that show what the faults
// made Freeway do: that sessions really expired and leases moved.
func (h *harness) logEvents() string {
	events := []struct{ label, text string }{
		{"session expiries", `msg="zookeeper session expired"`},
		{"leases given up while disconnected", `msg="no zookeeper server reachable for a session timeout`},
		{"leases lost", `lease lost`},
		{"fenced commits", `another owner committed`},
		{"upstream retries", `msg="shipping upstream failed, retrying"`},
	}
	var b strings.Builder
	for _, p := range h.procs {
		data, _ := os.ReadFile(p.logPath)
		var parts []string
		for _, e := range events {
			if n := strings.Count(string(data), e.text); n > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", n, e.label))
			}
		}
		fmt.Fprintf(&b, "  %s: %s\n", p.name, strings.Join(parts, ", "))
	}
	return strings.TrimRight(b.String(), "\n")
}

// ---------------------------------------------------------------- the end

// finish stops every process, makes sure the engines are up, looks for
// races and panics in the logs, and keeps the directory (with the tails
// of the logs printed) when the test failed.
func (h *harness) finish() {
	h.mu.Lock()
	h.supervise = false
	h.mu.Unlock()
	h.sup.Wait()
	for _, p := range h.procs {
		p.mu.Lock()
		p.expectExit = true
		p.mu.Unlock()
		p.signal(syscall.SIGCONT)
		p.signal(syscall.SIGTERM)
	}
	for _, p := range h.procs {
		p.mu.Lock()
		cmd, exited := p.cmd, p.exited
		p.mu.Unlock()
		if cmd == nil {
			continue
		}
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			h.logf("%s did not stop on SIGTERM within 15s; SIGKILL", p.name)
			h.kill(p)
		}
	}
	if h.watchStop != nil {
		close(h.watchStop)
		<-h.watchDone
	}
	if h.engines != "" {
		if out, err := h.runEngines("status"); err != nil {
			h.logf("engines not all up at the end:\n%s; engines.sh up", out)
			if out, err := h.runEngines("up"); err != nil {
				h.failf("engines.sh up: %v\n%s", err, out)
			}
		}
	}
	for _, p := range h.procs {
		data, _ := os.ReadFile(p.logPath)
		if strings.Contains(string(data), "WARNING: DATA RACE") {
			h.failf("%s reported a data race (see %s)", p.name, p.logPath)
		}
		if strings.Contains(string(data), "\npanic: ") || strings.Contains(string(data), "\nfatal error: ") {
			h.failf("%s panicked (see %s)", p.name, p.logPath)
		}
	}
	if h.t.Failed() {
		var b strings.Builder
		for _, p := range h.procs {
			fmt.Fprintf(&b, "\n----- last lines of %s -----\n%s", p.logPath, tail(p.logPath, 30))
		}
		h.t.Logf("tails of the process logs:%s", b.String())
		kept := "logs, configs and data kept in " + h.dir
		if h.dfsURL != "" {
			kept += "; segments kept in " + h.dfsURL
		}
		h.t.Logf("%s; FREEWAY_CHAOS=%s FREEWAY_CHAOS_SEED=%d replays the schedule", kept, h.s.mode, h.s.seed)
		return
	}
	if os.Getenv("FREEWAY_CHAOS_KEEP") == "1" {
		h.t.Logf("FREEWAY_CHAOS_KEEP=1: logs, configs and data kept in %s, segments in %s", h.dir, h.dfsURL)
		return
	}
	if h.dfsURL != "" {
		removeDFSTree(h.t, h.dfsURL)
	}
	if h.hbase != "" {
		// A long run leaves a few hundred thousand cells in the shared HBase.
		dropHBaseTables(h.t, h.hbase, h.prefix+"puma", h.prefix+"copier")
	}
	os.RemoveAll(h.dir)
}

// tail returns the last n lines of a file, each clipped.
func tail(file string, n int) string {
	data, err := os.ReadFile(file)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i, l := range lines {
		if len(l) > 400 {
			lines[i] = l[:400] + "..."
		}
	}
	return strings.Join(lines, "\n")
}

// dropHBaseTables disables and deletes the tables that exist of names.
func dropHBaseTables(t *testing.T, addr string, names ...string) {
	cfg := &thrift.TConfiguration{ConnectTimeout: 10 * time.Second, SocketTimeout: time.Minute}
	trans := thrift.NewTFramedTransportConf(thrift.NewTSocketConf(addr, cfg), cfg)
	if err := trans.Open(); err != nil {
		t.Logf("cleanup: hbase %s: %v", addr, err)
		return
	}
	defer trans.Close()
	pf := thrift.NewTBinaryProtocolFactoryConf(cfg)
	c := hbase.NewTHBaseServiceClient(thrift.NewTStandardClient(pf.GetProtocol(trans), pf.GetProtocol(trans)))
	ctx := context.Background()
	for _, name := range names {
		tn := &hbase.TTableName{Qualifier: []byte(name)}
		ok, err := c.TableExists(ctx, tn)
		if err == nil && ok {
			if err = c.DisableTable(ctx, tn); err == nil {
				err = c.DeleteTable(ctx, tn)
			}
		}
		if err != nil {
			t.Logf("cleanup: drop hbase table %s: %v", name, err)
		}
	}
}

// removeDFSTree deletes a test root in the dfs.
func removeDFSTree(t *testing.T, url string) {
	fsys, err := backends.OpenDFS(url)
	if err != nil {
		t.Logf("cleanup %s: %v", url, err)
		return
	}
	defer fsys.Close()
	if err := dfstest.RemoveAll(fsys, ""); err != nil {
		t.Logf("cleanup %s: %v", url, err)
	}
}
