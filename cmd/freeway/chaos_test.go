//go:build linux

package main

// The chaos test: the proof that Freeway never loses, wipes or
// double-counts acknowledged data (issue 6). A generator sends known
// records through several agents while a seeded schedule of faults hits
// the processes (and, on the real engines, the engines); then the faults
// stop, everything settles, and the query answer is compared with the
// generator's ground truth.
//
// It runs on Linux only when FREEWAY_CHAOS is set: "short" (about a minute of
// faults per backend; `make test` runs it after the other tests) or "long"
// (minutes; `make chaos`). FREEWAY_CHAOS_SEED=N replays a run's schedule
// of faults and the generator's records (timing still varies);
// FREEWAY_CHAOS_DURATION (a Go duration) sets the length of the fault
// phase; FREEWAY_CHAOS_RACE=1 builds the processes with -race and fails on
// any race they report. Logs, configs and data are kept in a temporary
// directory, printed, when the test fails (always with
// FREEWAY_CHAOS_KEEP=1).
//
// Fault model. Every fault hits a real process of the `freeway` binary:
//
//   - SIGKILL at any moment, then a restart after a pause of up to 2s with
//     the same flags, ports and data directory: no clean shutdown, no final
//     checkpoint, acknowledged entries still in an agent's queue, open
//     segments. Targets: agents and the core process (embedded); agents,
//     the writer, Puma nodes and the serving node (engines).
//   - SIGSTOP, then SIGCONT up to 3s later: the process holds its
//     connections, leases and half-done calls while doing nothing (a long
//     GC pause, a stalled disk).
//   - A long SIGSTOP, 8 to 9s: past twice the ZooKeeper session timeout (4s
//     here), so that the session of a Puma node or the writer expires, its
//     leases move (to the other Puma node), and it wakes up as a stale
//     owner that must notice and be fenced; and past the agents' 5s
//     upstream timeout and the generator's 5s call timeout, so that a
//     batch the stopped writer (embedded: the core) finishes after its
//     agent gave up is sent again, and a stopped agent finishes calls its
//     client gave up (in doubt).
//   - Engines only: `deploy/engines/engines.sh restart` of the HDFS
//     DataNode and of the HBase Thrift2 gateway, by SIGTERM or by SIGKILL
//     (--kill, at least once per run).
//
// Not modelled: losing or corrupting files a process had fsynced, clock
// jumps, network partitions, and faults of the NameNode, of HBase itself or
// of ZooKeeper itself. A process that exits on its own is restarted (as a
// supervisor would), shown in the timeline and counted.
//
// Ground truth. Each Log call has a group key of its own and n entries (1
// to 32) with values 1, 2, 4, ..., 2^(n-1), so the count and sum of its
// key say which of its entries were counted and whether any twice. A call
// answered OK must be counted exactly once, every entry. A call whose
// connection failed before an answer is in doubt (the agent may have made
// it durable before it died) and is never resent: it may be counted
// whole, in part or not at all, but no entry more than once. A call
// answered only TRY_LATER (retried for 30s after the generator stops),
// or never sent, must not be counted at all. Keys nobody sent must not
// appear.
//
// Settling. After the fault phase every process is made to run, then the
// test waits until every agent's queue is empty, the writer has nothing
// pending, every shard runs exactly once with no segment lag and nothing
// read past its last commit, the pipeline's counters stay unchanged for a
// while, every Puma node has committed a checkpoint since, and two
// complete (not partial) answers some seconds apart agree.
// Only then is the answer checked, once. On the embedded backends the
// core process is then SIGKILLed once more and must come back to exactly
// the same answer from its checkpoints.

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/enginetest"
)

// TestChaosEmbedded runs the chaos test on the embedded backends: one
// `freeway all` (its own agent, writer, Puma and query API on a local dfs,
// bbolt and the in-process coordinator) and two `freeway agent`
// processes shipping to its writer.
func TestChaosEmbedded(t *testing.T) {
	s := loadChaosSettings(t, 40*time.Second, 4*time.Minute)
	h := newHarness(t, s, "embedded")
	defer h.finish()

	ports := freePorts(t, 7)
	addr := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", ports[i]) }
	h.writeConfig("")
	writer := addr(1)
	core := h.addProc("core", "all", addr(2), addr(0),
		"--data-dir", filepath.Join(h.dir, "core"),
		"--agent.listen", addr(0), "--calligraphus.listen", writer, "--serving.listen", addr(2))
	h.agents = append(h.agents, core)
	for i := 1; i <= 2; i++ {
		name := fmt.Sprintf("agent-%d", i)
		h.agents = append(h.agents, h.addProc(name, "agent", addr(2+2*i), addr(1+2*i),
			"--data-dir", filepath.Join(h.dir, name),
			"--agent.listen", addr(1+2*i), "--agent.upstream", writer, "--admin-listen", addr(2+2*i)))
	}
	h.queryAddr = core.http

	kill := []string{"core", "agent-1", "agent-2"}
	plan := h.plan(
		[]fault{{kind: faultKill, target: "core"}, {kind: faultKill, target: pick(h.rng, kill[1:])},
			{kind: faultStop, target: "core"}, {kind: faultStop, target: pick(h.rng, kill[1:])},
			{kind: faultLong, target: "core"}},
		map[faultKind]int{faultKill: 5, faultStop: 5, faultLong: 1},
		map[faultKind][]string{faultKill: kill, faultStop: kill, faultLong: kill})

	if !h.run(plan) {
		return
	}
	// The answer must survive one more crash exactly: what the core
	// recovers from its checkpoints and reads again is what it answered.
	before := h.final
	h.logf("final check: SIGKILL core and recover from its checkpoints")
	core.op.Lock()
	pid := h.kill(core)
	h.logf("SIGKILL core (pid %d)", pid)
	h.restart(core)
	core.op.Unlock()
	after, ok := h.settle()
	if !ok {
		return
	}
	if diff := diffAnswers(before, after); diff != "" {
		h.failf("the answer changed across a crash of the core after settling:\n%s", diff)
		return
	}
	h.logf("the core answered the same %d keys after recovering", len(after))
}

// TestChaosEngines runs the chaos test on the real engines, one component
// per process as on a cluster: three agents, one writer (writers do not
// forward yet), two Puma nodes sharing the shards through ZooKeeper, and
// a serving node answering from HBase (committed state).
func TestChaosEngines(t *testing.T) {
	s := loadChaosSettings(t, 70*time.Second, 6*time.Minute)
	zk, hdfsAddr, hbase := enginetest.Addr(t, enginetest.ZK), enginetest.Addr(t, enginetest.HDFS), enginetest.Addr(t, enginetest.HBase)
	script := checkEnginesScript(t, zk, hdfsAddr, hbase)
	h := newHarness(t, s, "engines")
	defer h.finish()
	h.engines = script

	// Not from the seed: a replay must not reuse a kept run's roots.
	suffix := fmt.Sprintf("%08x", rand.Uint32())
	dfsURL := fmt.Sprintf("hdfs://%s/freeway-test/chaos-%s", hdfsAddr, suffix)
	h.writeConfig(fmt.Sprintf("dfs: %s\nstore: hbase://%s/chaos_%s_\ncoord: zk://%s/freeway-test/chaos-%s?session_timeout=%s\n",
		dfsURL, hbase, suffix, zk, suffix, sessionTimeout))
	h.dfsURL, h.hbase, h.prefix = dfsURL, hbase, "chaos_"+suffix+"_"
	h.logf("backends: %s, hbase://%s/chaos_%s_, zk://%s/freeway-test/chaos-%s", dfsURL, hbase, suffix, zk, suffix)

	ports := freePorts(t, 11)
	addr := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", ports[i]) }
	writerAddr := addr(0)
	h.addProc("calligraphus", "calligraphus", addr(1), "",
		"--data-dir", filepath.Join(h.dir, "calligraphus"), "--calligraphus.listen", writerAddr, "--admin-listen", addr(1))
	for i := range 3 {
		name := fmt.Sprintf("agent-%d", i)
		h.agents = append(h.agents, h.addProc(name, "agent", addr(3+2*i), addr(2+2*i),
			"--data-dir", filepath.Join(h.dir, name),
			"--agent.listen", addr(2+2*i), "--agent.upstream", writerAddr, "--admin-listen", addr(3+2*i)))
	}
	for i := range 2 {
		name := fmt.Sprintf("puma-%d", i)
		h.addProc(name, "puma", addr(8+i), "", "--data-dir", filepath.Join(h.dir, name), "--admin-listen", addr(8+i))
	}
	serving := h.addProc("serving", "serving", addr(10), "",
		"--data-dir", filepath.Join(h.dir, "serving"), "--serving.listen", addr(10))
	h.queryAddr = serving.http

	killable := []string{"agent-0", "agent-1", "agent-2", "calligraphus", "puma-0", "puma-1", "serving"}
	// Long stops: the lease holders twice as often as an agent.
	long := []string{"calligraphus", "puma-0", "puma-1", "calligraphus", "puma-0", "puma-1", "agent-0", "agent-1", "agent-2"}
	forced := pick(h.rng, []string{"datanode", "thrift2"})
	other := map[string]string{"datanode": "thrift2", "thrift2": "datanode"}[forced]
	plan := h.plan(
		[]fault{
			{kind: faultKill, target: pick(h.rng, killable[:3])},
			{kind: faultKill, target: "calligraphus"},
			{kind: faultKill, target: pick(h.rng, []string{"puma-0", "puma-1"})},
			{kind: faultKill, target: "serving"},
			{kind: faultStop, target: pick(h.rng, killable)},
			{kind: faultLong, target: pick(h.rng, []string{"puma-0", "puma-1"})},
			{kind: faultLong, target: "calligraphus"},
			{kind: faultEngine, target: forced, kill: true},
			{kind: faultEngine, target: other, kill: h.rng.IntN(2) == 0},
		},
		map[faultKind]int{faultKill: 7, faultStop: 7, faultLong: 3, faultEngine: 3},
		map[faultKind][]string{faultKill: killable, faultStop: killable, faultLong: long, faultEngine: {"datanode", "thrift2"}})
	h.run(plan)
}

// checkEnginesScript returns deploy/engines/engines.sh once it is sure
// that the engines it restarts are the ones the FREEWAY_TEST_* variables
// name, and that they are all up.
func checkEnginesScript(t *testing.T, zk, hdfsAddr, hbase string) string {
	t.Helper()
	script, err := filepath.Abs(filepath.Join("..", "..", "deploy", "engines", "engines.sh"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(script, "env").Output()
	if err != nil {
		t.Fatalf("%s env: %v", script, err)
	}
	want := fmt.Sprintf("%s=%s\n%s=%s\n%s=%s\n", enginetest.ZK, zk, enginetest.HDFS, hdfsAddr, enginetest.HBase, hbase)
	if string(out) != want {
		t.Fatalf("the chaos test restarts engines with %s, which manages\n%sbut the tests were given\n%s"+
			"run it with the FREEWAY_ENGINES_DIR and FREEWAY_ENGINES_PORT_OFFSET the engines were started with", script, out, want)
	}
	if out, err := exec.Command(script, "status").CombinedOutput(); err != nil {
		t.Fatalf("engines are not all up (%s up starts them):\n%s", script, out)
	}
	return script
}

// chaosSettings is what the environment asks of a run.
type chaosSettings struct {
	mode     string // short or long
	seed     uint64
	duration time.Duration // of the fault phase
	race     bool
}

func loadChaosSettings(t *testing.T, short, long time.Duration) chaosSettings {
	t.Helper()
	s := chaosSettings{mode: os.Getenv("FREEWAY_CHAOS"), race: os.Getenv("FREEWAY_CHAOS_RACE") == "1"}
	switch s.mode {
	case "":
		t.Skip("chaos test: set FREEWAY_CHAOS=short or FREEWAY_CHAOS=long (make chaos)")
	case "short":
		s.duration = short
	case "long":
		s.duration = long
	default:
		t.Fatalf("FREEWAY_CHAOS=%q: want short or long", s.mode)
	}
	if v := os.Getenv("FREEWAY_CHAOS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 5*time.Second {
			t.Fatalf("FREEWAY_CHAOS_DURATION=%q: want a Go duration of at least 5s", v)
		}
		s.duration = d
	}
	s.seed = uint64(time.Now().UnixNano())
	if v := os.Getenv("FREEWAY_CHAOS_SEED"); v != "" {
		var err error
		if _, err = fmt.Sscan(strings.TrimSpace(v), &s.seed); err != nil {
			t.Fatalf("FREEWAY_CHAOS_SEED=%q: want an unsigned integer", v)
		}
	}
	return s
}
