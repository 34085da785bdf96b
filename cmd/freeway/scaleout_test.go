//go:build linux

package main

// The scale-out proof (issue 9): a split deployment on the real engines,
// every component a process of the real binary, as exact as `freeway
// all` while processes die and stall. It reuses the chaos harness
// (chaosharness_test.go): its generator and ground truth, settling and
// check, with a fixed fault plan instead of a random one.
//
// The tests need ZooKeeper, HDFS and HBase (FREEWAY_TEST_ZK, _HDFS,
// _HBASE; skipped without them unless FREEWAY_REQUIRE_ENGINES=1).

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/enginetest"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// deployment is agents, writers, Puma nodes and one serving node, each a
// process, on fresh roots of the real engines.
type deployment struct {
	h        *harness
	coordURL string // the agents' upstream too
	agents   []*chaosProc
	writers  []*chaosProc
	pumas    []*chaosProc
	serving  *chaosProc
}

// shape is a deployment's processes.
type shape struct {
	agents, writers, pumas, buckets int
	// static: the agents' upstream is the writers' addresses, not the
	// coord URL.
	static bool
	// apps is YAML added to the apps: list of the harness's config.
	apps string
}

// newDeployment lays the processes out (nothing runs yet).
func newDeployment(t *testing.T, name string, sh shape, faults time.Duration) *deployment {
	t.Helper()
	zk, hdfsAddr, hbase := enginetest.Addr(t, enginetest.ZK), enginetest.Addr(t, enginetest.HDFS), enginetest.Addr(t, enginetest.HBase)
	s := chaosSettings{mode: name, seed: uint64(time.Now().UnixNano()), duration: faults}
	h := newHarness(t, s, "engines-"+name)
	h.buckets = sh.buckets
	suffix := fmt.Sprintf("%08x", rand.Uint32())
	d := &deployment{h: h}
	h.dfsURL = fmt.Sprintf("hdfs://%s/freeway-test/%s-%s", hdfsAddr, name, suffix)
	h.hbase, h.prefix = hbase, name+"_"+suffix+"_"
	d.coordURL = fmt.Sprintf("zk://%s/freeway-test/%s-%s?session_timeout=%s", zk, name, suffix, sessionTimeout)
	h.writeConfig(fmt.Sprintf("dfs: %s\nstore: hbase://%s/%s\ncoord: %s\n", h.dfsURL, hbase, h.prefix, d.coordURL))
	if sh.apps != "" {
		// apps: is the last key of the harness's file.
		f, err := os.OpenFile(h.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
		if err == nil {
			_, err = f.WriteString(sh.apps)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	h.logf("backends: %s, hbase://%s/%s, %s", h.dfsURL, hbase, h.prefix, d.coordURL)

	help := d.targetHelp("puma")
	ports := freePorts(t, 2*sh.agents+2*sh.writers+2*sh.pumas+1)
	next := func() string {
		p := ports[0]
		ports = ports[1:]
		return fmt.Sprintf("127.0.0.1:%d", p)
	}
	var writerAddrs []string
	for i := range sh.writers {
		name := fmt.Sprintf("writer-%d", i)
		scribe, admin := next(), next()
		writerAddrs = append(writerAddrs, scribe)
		d.writers = append(d.writers, h.addProc(name, "calligraphus", admin, scribe,
			"--data-dir", filepath.Join(h.dir, name), "--calligraphus.listen", scribe, "--admin-listen", admin))
	}
	for i := range sh.pumas {
		name := fmt.Sprintf("puma-%d", i)
		query, admin := next(), next()
		args := []string{"--data-dir", filepath.Join(h.dir, name), "--admin-listen", admin}
		if strings.Contains(help, "--puma.listen") {
			args = append(args, "--puma.listen", query)
		}
		d.pumas = append(d.pumas, h.addProc(name, "puma", admin, "", args...))
	}
	upstream := d.coordURL
	if sh.static {
		upstream = strings.Join(writerAddrs, ",")
	}
	for i := range sh.agents {
		name := fmt.Sprintf("agent-%d", i)
		scribe, admin := next(), next()
		a := h.addProc(name, "agent", admin, scribe,
			"--data-dir", filepath.Join(h.dir, name), "--agent.listen", scribe, "--agent.upstream", upstream, "--admin-listen", admin)
		d.agents = append(d.agents, a)
		h.agents = append(h.agents, a)
	}
	q := next()
	d.serving = h.addProc("serving", "serving", q, "", "--data-dir", filepath.Join(h.dir, "serving"), "--serving.listen", q)
	h.queryAddr = q
	return d
}

// targetHelp is `freeway TARGET --help`: which flags the binary has.
func (d *deployment) targetHelp(target string) string {
	out, err := exec.Command(d.h.bin, target, "--help").CombinedOutput()
	if err != nil {
		d.h.t.Fatalf("freeway %s --help: %v\n%s", target, err, out)
	}
	return string(out)
}

// start starts every process and waits until each is ready.
func (d *deployment) start() bool {
	for _, p := range d.h.procs {
		p.op.Lock()
		ok := d.h.restart(p)
		p.op.Unlock()
		if !ok {
			return false
		}
	}
	return true
}

// TestScaleOutEngines is the proof of issue 9: 2 agents (upstream: the
// writers' ZooKeeper URL), 3 writers, 3 Puma nodes and 1 serving node on
// the real engines. Both agents take the generator's calls; one writer
// and one Puma node are SIGKILLed mid-stream and restarted, one writer
// and one Puma node are SIGSTOPped past twice their session timeout and
// resumed. At the end every agent queue is empty and serving's answer is
// exactly the input: every call was acknowledged (no agent is faulted; a
// call whose answer the app timed out waiting for must still be counted
// whole) and each is counted once, nothing else.
func TestScaleOutEngines(t *testing.T) {
	d := newDeployment(t, "scaleout", shape{agents: 2, writers: 3, pumas: 3, buckets: 6}, 30*time.Second)
	h := d.h
	defer h.finish()
	long := 2*sessionTimeout + 500*time.Millisecond
	plan := []fault{
		{at: 4 * time.Second, kind: faultKill, target: "writer-0", d: time.Second, required: true},
		{at: 7 * time.Second, kind: faultKill, target: "puma-0", d: time.Second, required: true},
		{at: 11 * time.Second, kind: faultLong, target: "writer-1", d: long, required: true},
		{at: 14 * time.Second, kind: faultLong, target: "puma-1", d: long, required: true},
	}
	if !h.run(plan) {
		return
	}
	var acks, other, entries int
	for _, cs := range h.calls {
		for _, c := range cs {
			switch c.state {
			case acked:
				acks++
				entries += c.size
			case unsent:
			case inDoubt:
				// The app's Log call outlived its 5 s client timeout: on a
				// saturated machine (nine processes and three JVMs on two
				// cores) an agent's fsync can take that long, with no
				// agent faulted. What the proof needs is that the agent
				// took it and the pipeline counted it exactly once.
				v := h.final[c.key]
				if v.n == float64(c.size) && v.s == float64(uint64(1)<<c.size-1) {
					h.logf("call %s was in doubt at the app (%s) and is counted exactly once", c.key, c.err)
					entries += c.size
					continue
				}
				other++
				h.failf("call %s was in doubt (%s) and is not counted exactly once (n=%g of %d): the agents were never faulted", c.key, c.err, v.n, c.size)
			default:
				other++
				h.failf("call %s was %s (%s): the agents were never faulted, every call must be acknowledged", c.key, c.state, c.err)
			}
		}
	}
	if other == 0 {
		h.logf("PROOF: %d calls (%d entries) through 2 agents, 3 writers and 3 Puma nodes, each counted exactly once by serving", acks, entries)
	}
}

// held counts, per process, the buckets it holds: writers by
// freeway_calligraphus_buckets_held (per category), Puma nodes by their
// running shards (a freeway_puma_segment_lag series each).
func (d *deployment) held(ps []*chaosProc, writers bool) (map[string]int, error) {
	out := map[string]int{}
	for _, p := range ps {
		if !p.running() {
			continue
		}
		m, err := d.h.scrape(p.http)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		if writers {
			out[p.name] = int(m.sum("freeway_calligraphus_buckets_held"))
		} else {
			out[p.name] = len(m.series("freeway_puma_segment_lag"))
		}
	}
	return out, nil
}

// waitHeld waits until the processes hold every bucket between them,
// none more than most; it returns how long that took.
func (d *deployment) waitHeld(what string, ps []*chaosProc, writers bool, most int, limit time.Duration) (time.Duration, bool) {
	t0 := time.Now()
	var last map[string]int
	var lastErr error
	for time.Since(t0) < limit {
		last, lastErr = d.held(ps, writers)
		if lastErr == nil {
			total, over := 0, false
			for _, n := range last {
				total += n
				over = over || n > most
			}
			if total == d.h.nBuckets() && !over {
				return time.Since(t0), true
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	d.h.failf("%s: not every one of %d buckets held once with at most %d each within %s: %v (%v)", what, d.h.nBuckets(), most, limit, sortedCounts(last), lastErr)
	return 0, false
}

func sortedCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%d ", k, m[k])
	}
	return strings.TrimSpace(b.String())
}

// TestScaleOutBalance: 3 writers and 3 Puma nodes over 12 buckets hold
// at most 5 each; after one of each is SIGKILLed the other two hold all
// 12, within the session timeout and a few seconds (the failover time,
// logged).
func TestScaleOutBalance(t *testing.T) {
	const buckets = 12
	d := newDeployment(t, "balance", shape{agents: 1, writers: 3, pumas: 3, buckets: buckets}, 0)
	h := d.h
	defer h.finish()
	if !d.start() {
		return
	}
	// Entries for every bucket, should a writer take a bucket only once
	// it has some.
	if err := d.trickle(400); err != nil {
		h.failf("send: %v", err)
		return
	}
	limit := 2 * time.Minute
	groups := []struct {
		what    string
		ps      []*chaosProc
		writers bool
	}{{"writers", d.writers, true}, {"puma nodes", d.pumas, false}}
	for _, g := range groups {
		if _, ok := d.waitHeld(g.what, g.ps, g.writers, 5, limit); !ok {
			continue
		}
		held, _ := d.held(g.ps, g.writers)
		h.logf("balanced: %s %s", g.what, sortedCounts(held))
		victim := g.ps[0]
		victim.op.Lock()
		pid := h.kill(victim)
		victim.op.Unlock()
		h.logf("SIGKILL %s (pid %d)", victim.name, pid)
		took, ok := d.waitHeld("after SIGKILL "+victim.name, g.ps[1:], g.writers, buckets, sessionTimeout+time.Minute)
		if !ok {
			continue
		}
		after, _ := d.held(g.ps[1:], g.writers)
		h.logf("FAILOVER: %s's buckets held by the others %.1fs after its SIGKILL (session timeout %s): %s", victim.name, took.Seconds(), sessionTimeout, sortedCounts(after))
	}
}

// loadApp counts and sums the lines of `freeway load` (category load).
const loadApp = `  - name: load
    category: load
    format: json
    time: {field: ts, layout: unix_ms}
    window: 1m
    group_by: [key]
    aggregates:
      - {name: n, fn: count}
      - {name: total, fn: sum, field: value}
`

// TestScaleOutThroughput measures the figures of the README's scale-out
// section on the real engines: end-to-end entries/s (from the first line
// sent until the Puma nodes have read every one) of a split deployment
// with 1 and with 3 writers, 2 agents each fed by a `freeway load`
// process, 3 Puma nodes. FREEWAY_SCALEOUT_BENCH=1 runs it (minutes, both
// cores); FREEWAY_SCALEOUT_COUNT sets the lines (default 300k). With 1
// writer the agents list its address; with 3, the coord URL (which needs
// the writers to join the coord group and forward).
func TestScaleOutThroughput(t *testing.T) {
	if os.Getenv("FREEWAY_SCALEOUT_BENCH") != "1" {
		t.Skip("scale-out figures: set FREEWAY_SCALEOUT_BENCH=1")
	}
	count := int64(300_000)
	if v := os.Getenv("FREEWAY_SCALEOUT_COUNT"); v != "" {
		if _, err := fmt.Sscan(v, &count); err != nil {
			t.Fatalf("FREEWAY_SCALEOUT_COUNT=%q: %v", v, err)
		}
	}
	writers := []int{1, 3}
	if v := os.Getenv("FREEWAY_SCALEOUT_WRITERS"); v != "" {
		writers = nil
		for _, f := range strings.Split(v, ",") {
			var n int
			if _, err := fmt.Sscan(f, &n); err != nil {
				t.Fatalf("FREEWAY_SCALEOUT_WRITERS=%q: %v", v, err)
			}
			writers = append(writers, n)
		}
	}
	for _, w := range writers {
		t.Run(fmt.Sprintf("writers=%d", w), func(t *testing.T) {
			d := newDeployment(t, fmt.Sprintf("tput%d", w), shape{agents: 2, writers: w, pumas: 3, buckets: 6, static: w == 1, apps: loadApp}, 0)
			defer d.h.finish()
			if !d.start() {
				return
			}
			d.throughput(count)
		})
	}
}

// throughput sends count lines through the agents with `freeway load`
// and logs the end-to-end rate.
func (d *deployment) throughput(count int64) {
	h := d.h
	per := count / int64(len(d.agents))
	roles := map[string][]*chaosProc{"agents": d.agents, "writers": d.writers, "puma nodes": d.pumas}
	cpu0 := map[string]float64{}
	for role, ps := range roles {
		cpu0[role] = cpuSeconds(ps)
	}
	t0 := time.Now()
	errs := make(chan error, len(d.agents))
	for i, a := range d.agents {
		go func() {
			cmd := exec.Command(h.bin, "load", "--addr", a.scribe, "--category", "load", "--count", fmt.Sprint(per),
				"--conns", "4", "--batch", "1000", "--seed", fmt.Sprint(i+1))
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			out, err := cmd.CombinedOutput()
			if err != nil {
				err = fmt.Errorf("freeway load to %s: %w\n%s", a.name, err, out)
			} else {
				h.logf("%s: %s", a.name, strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0]))
			}
			errs <- err
		}()
	}
	total := per * int64(len(d.agents))
	var read float64
	deadline := time.Now().Add(15 * time.Minute)
	for time.Now().Before(deadline) {
		read = 0
		for _, p := range d.pumas {
			m, err := h.scrape(p.http)
			if err == nil {
				read += m.sum("freeway_puma_entries_total")
			}
		}
		if read >= float64(total) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(t0)
	for range d.agents {
		if err := <-errs; err != nil {
			h.failf("%v", err)
		}
	}
	if read < float64(total) {
		h.failf("the Puma nodes read %.0f of %d entries within 15m", read, total)
		return
	}
	h.logf("THROUGHPUT: %d writers, %d agents, %d Puma nodes: %d entries end to end in %.1fs: %.0f entries/s",
		len(d.writers), len(d.agents), len(d.pumas), total, took.Seconds(), float64(total)/took.Seconds())
	// What each kind of process spent: the rate one of them would carry
	// with a core of its own.
	for _, role := range []string{"agents", "writers", "puma nodes"} {
		cpu := cpuSeconds(roles[role]) - cpu0[role]
		h.logf("CPU: %s %.1f CPU-seconds in all: %.0f entries (%.1f MB of %d-byte lines) per CPU-second",
			role, cpu, float64(total)/cpu, float64(total)*loadLineBytes/cpu/1e6, loadLineBytes)
	}
}

// loadLineBytes is the size of `freeway load`'s lines (its --size default).
const loadLineBytes = 176

// cpuSeconds is the user and system CPU time the running processes have
// used, from /proc (clock ticks of 1/100 s, Linux's USER_HZ).
func cpuSeconds(ps []*chaosProc) float64 {
	var total float64
	for _, p := range ps {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid()))
		if err != nil {
			continue
		}
		// The fields after the command's closing parenthesis: utime and
		// stime are the 12th and 13th.
		f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
		if len(f) > 12 {
			var u, st float64
			_, _ = fmt.Sscan(f[11], &u)
			_, _ = fmt.Sscan(f[12], &st)
			total += (u + st) / 100
		}
	}
	return total
}

// trickle sends n entries of distinct keys (so of every bucket) through
// the first agent.
func (d *deployment) trickle(n int) error {
	c, err := dialScribe(d.agents[0].scribe)
	if err != nil {
		return err
	}
	defer c.trans.Close()
	es := make([]*scribethrift.LogEntry, n)
	for i := range es {
		es[i] = &scribethrift.LogEntry{Category: chaosCategory, Message: fmt.Appendf(nil, `{"ts":%d,"k":"t%d","v":1}`, chaosBaseTS, i)}
	}
	rc, err := c.Log(context.Background(), es)
	if err == nil && rc != scribethrift.ResultCode_OK {
		err = fmt.Errorf("answered %v", rc)
	}
	return err
}
