package scribe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/scribeapi/scribetest"
	"github.com/freeway-dev/freeway/internal/testkit"

	"github.com/apache/thrift/lib/go/thrift"
	dto "github.com/prometheus/client_model/go"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/thrift/gen/fb303"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

func TestLogIsShippedInOrderWithSequenceNumbers(t *testing.T) {
	up := startUpstream(t, "127.0.0.1:0", nil)
	a := startAgent(t, testConfig(t.TempDir(), up.srv.Addr()))
	c := dial(t, a.Addr())
	for i := range 3 {
		mustLog(t, c, entries("access", "m", 10*i, 10))
	}
	testkit.WaitFor(t, "30 entries upstream", func() bool { return up.count(t) == 30 })
	wantSeq(t, up.received(t), "access", "m", 30)
	for _, b := range up.callsSnapshot() {
		if b.AgentID != a.ID() || len(b.AgentID) != 32 || b.ReceivedAtMs <= 0 || len(b.GetIncarnation()) != 32 || b.GetIncarnation() == b.AgentID {
			t.Fatalf("batch agent id %q (agent %q), received_at_ms %d, incarnation of %d characters", b.AgentID, a.ID(), b.ReceivedAtMs, len(b.GetIncarnation()))
		}
	}
	testkit.WaitFor(t, "queue drained", func() bool { return a.q.Stats().Entries == 0 })
	// The shipper counts a batch after the queue's acknowledgement, which
	// drains the queue: the count may follow a moment later.
	testkit.WaitFor(t, "30 entries counted shipped", func() bool { return a.c.shipped.Load() >= 30 })
	if n := a.c.shipped.Load(); n != 30 {
		t.Fatalf("shipped counter = %d", n)
	}
	if got := gather(t, a, "freeway_agent_entries_received_total", "source", "scribe"); got != 30 {
		t.Fatalf("freeway_agent_entries_received_total{source=scribe} = %v", got)
	}
	if got := gather(t, a, "freeway_agent_entries_shipped_total", "", ""); got != 30 {
		t.Fatalf("freeway_agent_entries_shipped_total = %v", got)
	}
	if !strings.Contains(a.logs.String(), "component=agent") {
		t.Fatalf("logs lack component=agent: %s", a.logs.String())
	}
}

// gather reads one metric (with label name=value if name is set).
func gather(t testing.TB, a *agent, metric, name, value string) float64 {
	t.Helper()
	mfs, err := a.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != metric {
			continue
		}
		for _, m := range mf.GetMetric() {
			if name == "" || slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == name && l.GetValue() == value }) {
				if m.Counter != nil {
					return m.Counter.GetValue()
				}
				return m.Gauge.GetValue()
			}
		}
	}
	t.Fatalf("metric %s{%s=%q} not registered", metric, name, value)
	return 0
}

func TestAckedEntriesSurviveARestart(t *testing.T) {
	dir := t.TempDir()
	down := deadAddr(t)
	a := startAgent(t, testConfig(dir, down))
	c := dial(t, a.Addr())
	for i := range 5 {
		mustLog(t, c, entries("app", "e", 10*i, 10))
	}
	id := a.ID()
	testkit.WaitFor(t, "a failed ship attempt", func() bool { return a.c.shipErrors.Load() > 0 })
	a.stopped(t)

	up := startUpstream(t, "127.0.0.1:0", nil)
	b := startAgent(t, testConfig(dir, up.srv.Addr()))
	if b.ID() != id {
		t.Fatalf("agent id changed across restart: %s then %s", id, b.ID())
	}
	testkit.WaitFor(t, "50 entries upstream", func() bool { return up.count(t) == 50 })
	wantSeq(t, up.received(t), "app", "e", 50)
	// New entries continue the numbering.
	mustLog(t, dial(t, b.Addr()), entries("app", "e", 50, 1))
	testkit.WaitFor(t, "51 entries upstream", func() bool { return up.count(t) == 51 })
	wantSeq(t, up.received(t), "app", "e", 51)
}

func TestInFlightBatchIsResentWithItsSequenceNumbersAfterARestart(t *testing.T) {
	dir := t.TempDir()
	// The upstream keeps the batch but its answer is lost (an error).
	var mu sync.Mutex
	lose := true
	up := startUpstream(t, "127.0.0.1:0", func(int, *scribethrift.Batch) (scribethrift.ResultCode, error) {
		mu.Lock()
		defer mu.Unlock()
		if lose {
			return scribethrift.ResultCode_OK, errors.New("answer lost")
		}
		return scribethrift.ResultCode_OK, nil
	})
	cfg := testConfig(dir, up.srv.Addr())
	cfg.BatchEntries = 4
	a := startAgent(t, cfg)
	mustLog(t, dial(t, a.Addr()), entries("c", "x", 0, 10))
	testkit.WaitFor(t, "a lost answer", func() bool { return len(up.callsSnapshot()) >= 2 })
	a.stopped(t)
	first := up.callsSnapshot()[0]
	mu.Lock()
	lose = false
	mu.Unlock()
	b := startAgent(t, cfg)
	testkit.WaitFor(t, "10 entries upstream", func() bool { return up.count(t) == 10 })
	wantSeq(t, up.received(t), "c", "x", 10)
	calls := up.callsSnapshot()
	resent := calls[len(calls)-3] // batches of 4, 4, 2 after the restart
	if resent.FirstSeq != first.FirstSeq || resent.FirstSeq != 1 || len(resent.Messages) != len(first.Messages) ||
		string(resent.Messages[3].Message) != string(first.Messages[3].Message) {
		t.Fatalf("in-flight batch re-sent as %d %v, first sent as %d %v", resent.FirstSeq, resent.Messages, first.FirstSeq, first.Messages)
	}
	_ = b
}

func TestUpstreamTryLaterAndErrorsAreRetriedInOrder(t *testing.T) {
	// TRY_LATER three times, then an error, then OK; TRY_LATER again later.
	up := startUpstream(t, "127.0.0.1:0", func(n int, _ *scribethrift.Batch) (scribethrift.ResultCode, error) {
		switch n {
		case 0, 1, 2, 6:
			return scribethrift.ResultCode_TRY_LATER, nil
		case 3:
			return scribethrift.ResultCode_OK, errors.New("writer crashed")
		}
		return scribethrift.ResultCode_OK, nil
	})
	cfg := testConfig(t.TempDir(), up.srv.Addr())
	cfg.BatchEntries = 30
	a := startAgent(t, cfg)
	c := dial(t, a.Addr())
	for i := range 5 {
		mustLog(t, c, entries("c", "r", 20*i, 20))
	}
	testkit.WaitFor(t, "100 entries upstream", func() bool { return up.count(t) == 100 })
	wantSeq(t, up.received(t), "c", "r", 100)
	// Every retry is the same batch as the attempt before it, until OK.
	calls := up.callsSnapshot()
	for i := 1; i < len(calls); i++ {
		if i <= 4 || i == 7 {
			p, b := calls[i-1], calls[i]
			if b.FirstSeq != p.FirstSeq || len(b.Messages) != len(p.Messages) {
				t.Fatalf("attempt %d sent first_seq %d (%d entries), attempt %d sent %d (%d)", i-1, p.FirstSeq, len(p.Messages), i, b.FirstSeq, len(b.Messages))
			}
		}
	}
	if n := a.c.tryLaterRecv.Load(); n != 4 {
		t.Fatalf("try_later received = %d, want 4", n)
	}
	if n := a.c.shipErrors.Load(); n != 1 {
		t.Fatalf("ship errors = %d, want 1", n)
	}
}

// fakeClock fires every wait at once and records the durations asked.
type fakeClock struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (f *fakeClock) Now() time.Time { return time.Unix(1700000000, 0) }

func (f *fakeClock) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	f.waits = append(f.waits, d)
	f.mu.Unlock()
	ch := make(chan time.Time, 1)
	ch <- f.Now()
	return ch
}

func TestShipBackoffGrowsToItsCapWithJitter(t *testing.T) {
	up := startUpstream(t, "127.0.0.1:0", func(n int, _ *scribethrift.Batch) (scribethrift.ResultCode, error) {
		if n < 12 {
			return scribethrift.ResultCode_TRY_LATER, nil
		}
		return scribethrift.ResultCode_OK, nil
	})
	clk := &fakeClock{}
	cfg := testConfig(t.TempDir(), up.srv.Addr())
	cfg.RetryMin = config.Duration(50 * time.Millisecond)
	cfg.RetryMax = config.Duration(5 * time.Second)
	a := startAgentClock(t, cfg, clk)
	mustLog(t, dial(t, a.Addr()), entries("c", "b", 0, 1))
	testkit.WaitFor(t, "the entry upstream", func() bool { return up.count(t) == 1 })
	clk.mu.Lock()
	waits := slices.Clone(clk.waits)
	clk.mu.Unlock()
	if len(waits) != 12 {
		t.Fatalf("%d waits for 12 TRY_LATERs: %v", len(waits), waits)
	}
	d := 50 * time.Millisecond
	for i, w := range waits {
		if w < d/2 || w > d {
			t.Fatalf("wait %d = %v, want within [%v, %v]; all %v", i, w, d/2, d, waits)
		}
		d = min(2*d, 5*time.Second)
	}
	testkit.WaitFor(t, "the batch acknowledged", func() bool { return a.q.Stats().Acked == 2 })
}

func TestUpstreamDownAtStartThenUp(t *testing.T) {
	addr := deadAddr(t)
	a := startAgent(t, testConfig(t.TempDir(), addr))
	c := dial(t, a.Addr())
	mustLog(t, c, entries("c", "d", 0, 20))
	testkit.WaitFor(t, "ship errors", func() bool { return a.c.shipErrors.Load() >= 3 })
	if rc, _ := dial(t, a.Addr()).GetStatus(context.Background()); rc != fb303.FbStatus_WARNING {
		t.Fatalf("getStatus while upstream is down = %v, want WARNING", rc)
	}
	mustLog(t, c, entries("c", "d", 20, 20))
	up := startUpstream(t, addr, nil)
	testkit.WaitFor(t, "40 entries upstream", func() bool { return up.count(t) == 40 })
	wantSeq(t, up.received(t), "c", "d", 40)
	testkit.WaitFor(t, "status ALIVE again", func() bool {
		st, _ := dial(t, a.Addr()).GetStatus(context.Background())
		return st == fb303.FbStatus_ALIVE
	})
}

func TestNextUpstreamIsTriedOnConnectionErrors(t *testing.T) {
	up := startUpstream(t, "127.0.0.1:0", nil)
	a := startAgent(t, testConfig(t.TempDir(), deadAddr(t), up.srv.Addr()))
	mustLog(t, dial(t, a.Addr()), entries("c", "n", 0, 5))
	testkit.WaitFor(t, "5 entries upstream", func() bool { return up.count(t) == 5 })
	wantSeq(t, up.received(t), "c", "n", 5)
}

func TestQueueFullAnswersTryLaterAndRecovers(t *testing.T) {
	addr := deadAddr(t)
	cfg := testConfig(t.TempDir(), addr)
	cfg.MaxQueueBytes = 4 << 10
	cfg.SegmentBytes = 4 << 10
	a := startAgent(t, cfg)
	c := dial(t, a.Addr())
	accepted := 0
	refused := 0
	for i := 0; refused == 0; i++ {
		if i > 1000 {
			t.Fatal("queue never filled")
		}
		es := entries("c", "q", accepted, 10)
		rc, err := c.Log(context.Background(), es)
		if err != nil {
			t.Fatal(err)
		}
		if rc == scribethrift.ResultCode_TRY_LATER {
			refused++
		} else {
			accepted += 10
		}
	}
	if n := a.fb303(); n["agent.try_later_sent"] != 1 || n["denied for queue size"] != 1 {
		t.Fatalf("try_later counters: %v", n)
	}
	if gather(t, a, "freeway_agent_try_later_sent_total", "reason", tryLaterQueueFull) != 1 {
		t.Fatal("freeway_agent_try_later_sent_total{reason=queue_full} not 1")
	}
	up := startUpstream(t, addr, nil)
	// The stock client retries the same call until it is taken.
	testkit.WaitFor(t, "the queue to accept again", func() bool {
		rc, err := c.Log(context.Background(), entries("c", "q", accepted, 10))
		return err == nil && rc == scribethrift.ResultCode_OK
	})
	accepted += 10
	testkit.WaitFor(t, "everything accepted upstream", func() bool { return up.count(t) == accepted })
	wantSeq(t, up.received(t), "c", "q", accepted)
	if !strings.Contains(a.logs.String(), "queue full") {
		t.Fatal("no warning when the queue filled")
	}
}

// TestStopWithEntriesNotShippedWarns: an agent that stops holding
// entries its upstream has not acknowledged says so, with how many and
// the queue_dir that holds them: only an agent started again on that
// directory sends them (one started with another data_dir never will),
// so an operator moving it must see it. An agent that shipped
// everything stops without the warning.
func TestStopWithEntriesNotShippedWarns(t *testing.T) {
	dir := t.TempDir()
	a := startAgent(t, testConfig(dir, deadAddr(t)))
	mustLog(t, dial(t, a.Addr()), entries("c", "w", 0, 3))
	a.stopped(t)
	lines := a.logs.Lines("level=WARN", "not yet shipped")
	if len(lines) != 1 || !strings.Contains(lines[0], "queue_entries=3") || !strings.Contains(lines[0], "queue_dir="+dir) {
		t.Fatalf("want one warning naming 3 entries and %s, got %q in:\n%s", dir, lines, a.logs.String())
	}

	up := startUpstream(t, "127.0.0.1:0", nil)
	b := startAgent(t, testConfig(dir, up.srv.Addr()))
	testkit.WaitFor(t, "3 entries upstream", func() bool { return up.count(t) == 3 })
	testkit.WaitFor(t, "the queue empty", func() bool { return b.q.Stats().Entries == 0 })
	b.stopped(t)
	if lines := b.logs.Lines("not yet shipped"); len(lines) != 0 {
		t.Fatalf("an agent that shipped everything warns: %q", lines)
	}
}

func TestTornQueueTailIsTruncatedAtReopen(t *testing.T) {
	dir := t.TempDir()
	a := startAgent(t, testConfig(dir, deadAddr(t)))
	mustLog(t, dial(t, a.Addr()), entries("c", "t", 0, 3))
	a.stopped(t)
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	f, err := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte{40, 0, 0, 0, 1, 2, 3, 4, 'h', 'a', 'l', 'f'}); err != nil { // a record cut short by a crash
		t.Fatal(err)
	}
	f.Close()

	up := startUpstream(t, "127.0.0.1:0", nil)
	b := startAgent(t, testConfig(dir, up.srv.Addr()))
	testkit.WaitFor(t, "3 entries upstream", func() bool { return up.count(t) == 3 })
	mustLog(t, dial(t, b.Addr()), entries("c", "t", 3, 1))
	testkit.WaitFor(t, "4 entries upstream", func() bool { return up.count(t) == 4 })
	wantSeq(t, up.received(t), "c", "t", 4)
	if logs := b.logs.String(); !strings.Contains(logs, "truncating torn queue tail") || !strings.Contains(logs, "component=agent") {
		t.Fatalf("no warning about the torn tail: %s", logs)
	}
}

func TestStockScribeClients(t *testing.T) {
	up := startUpstream(t, "127.0.0.1:0", nil)
	a := startAgent(t, testConfig(t.TempDir(), up.srv.Addr()))

	// The generated client on a plain framed binary transport, strict.
	cfg := &thrift.TConfiguration{ConnectTimeout: 10 * time.Second, SocketTimeout: 10 * time.Second}
	trans := thrift.NewTFramedTransportConf(thrift.NewTSocketConf(a.Addr(), cfg), cfg)
	if err := trans.Open(); err != nil {
		t.Fatal(err)
	}
	defer trans.Close()
	pf := thrift.NewTBinaryProtocolFactoryConf(cfg)
	client := scribethrift.NewScribeClient(thrift.NewTStandardClient(pf.GetProtocol(trans), pf.GetProtocol(trans)))
	ctx := context.Background()
	rc, err := client.Log(ctx, []*scribethrift.LogEntry{{Category: "stock", Message: []byte("generated"), Metadata: map[string]string{"k": "v"}}})
	if err != nil || rc != scribethrift.ResultCode_OK {
		t.Fatalf("generated client: %v %v", rc, err)
	}

	// An old client's non-strict message header, built by hand.
	reply := scribetest.RawCall(t, a.Addr(), scribetest.LogFrame(false, [][2]string{{"stock", "non-strict"}}))
	if !bytes.HasSuffix(reply, scribetest.OK) {
		t.Fatalf("non-strict reply %x does not carry OK", reply)
	}
	reply = scribetest.RawCall(t, a.Addr(), scribetest.LogFrame(true, [][2]string{{"stock", "strict"}}))
	if !bytes.HasSuffix(reply, scribetest.OK) {
		t.Fatalf("strict reply %x does not carry OK", reply)
	}

	testkit.WaitFor(t, "3 entries upstream", func() bool { return up.count(t) == 3 })
	if g := up.received(t); g[0].msg != "generated" || g[1].msg != "non-strict" || g[2].msg != "strict" {
		t.Fatalf("received %v", g)
	}

	// fb303, as monitoring tools call it.
	counters, err := client.GetCounters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if counters["agent.received"] != 3 || counters["received good"] != 3 {
		t.Fatalf("getCounters = %v", counters)
	}
	testkit.WaitFor(t, "shipped counter", func() bool {
		c, err := client.GetCounters(ctx)
		return err == nil && c["agent.shipped"] == 3 && c["agent.queue_entries"] == 0
	})
	if name, _ := client.GetName(ctx); name != "freeway-agent" {
		t.Fatalf("getName = %q", name)
	}
	if st, _ := client.GetStatus(ctx); st != fb303.FbStatus_ALIVE {
		t.Fatalf("getStatus = %v", st)
	}
}

func TestAgentChainAndStockUpstream(t *testing.T) {
	// A stock Scribe server: no LogBatch. The agent falls back to Log.
	stock := &fakeUpstream{}
	proc := scribethrift.NewScribeProcessor(struct {
		*fakeUpstream
		fb303.FacebookService // never called
	}{fakeUpstream: stock})
	delete(proc.ProcessorMap(), "LogBatch")
	srv, err := thriftsrv.Listen("127.0.0.1:0", proc, thriftsrv.Limits{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	serve(t, srv.Serve)
	// app → edge agent → relay agent → stock server.
	relay := startAgent(t, testConfig(t.TempDir(), srv.Addr()))
	edge := startAgent(t, testConfig(t.TempDir(), relay.Addr()))
	mustLog(t, dial(t, edge.Addr()), entries("c", "chain", 0, 5))
	testkit.WaitFor(t, "5 entries at the stock server", func() bool { return stock.count(t) == 5 })
	for i, g := range stock.received(t) {
		if g != (got{0, "c", fmt.Sprintf("chain-%d", i)}) {
			t.Fatalf("stock server received %v", stock.received(t))
		}
	}
	if !strings.Contains(relay.logs.String(), "falling back to plain log calls") {
		t.Fatal("no warning about the fallback")
	}
}

func TestNewRefusesABadConfigAndABusyQueue(t *testing.T) {
	cfg := testConfig(t.TempDir(), "127.0.0.1:1")
	cfg.BatchBytes = 32 << 20
	if _, err := New(cfg, Deps{}); err == nil || !strings.Contains(config.Under("$.agent", err).Error(), "agent.batch_bytes") {
		t.Fatalf("New with batch_bytes 32MiB: %v", err)
	}
	cfg = testConfig("", "127.0.0.1:1")
	if _, err := New(cfg, Deps{}); err == nil || !strings.Contains(config.Under("$.agent", err).Error(), "agent.queue_dir") {
		t.Fatalf("New without queue_dir: %v", err)
	}
	dir := t.TempDir()
	a := startAgent(t, testConfig(dir, "127.0.0.1:1"))
	_ = a
	if _, err := New(testConfig(dir, "127.0.0.1:1"), Deps{}); err == nil {
		t.Fatal("a second agent opened a queue directory in use")
	}
}

func TestLargestBatchFitsTheFrameLimit(t *testing.T) {
	addr := deadAddr(t)
	cfg := testConfig(t.TempDir(), addr)
	cfg.BatchBytes = maxBatchBytes
	a := startAgent(t, cfg)
	c := dial(t, a.Addr())
	big := bytes.Repeat([]byte("z"), int(cfg.MaxMessageBytes))
	for range 20 {
		mustLog(t, c, []*scribethrift.LogEntry{{Category: strings.Repeat("c", 200), Message: big}})
	}
	up := startUpstream(t, addr, nil)
	testkit.WaitFor(t, "20 large entries upstream", func() bool { return up.count(t) == 20 })
	most := 0
	for _, b := range up.callsSnapshot() {
		most = max(most, len(b.Messages))
	}
	if most < 15 {
		t.Fatalf("largest batch had %d entries of 1MiB; want about 15 under a 16MiB frame", most)
	}
}

// agent.queue_compress (the default) keeps a Log call's entries
// compressed in the queue once agent.queue_compress_above bytes are
// queued (at most half of max_queue_bytes; with 0, from the first);
// freeway_agent_queue_bytes counts the bytes on disk either way.
func TestQueueCompress(t *testing.T) {
	for _, tc := range []struct {
		compress       bool
		above, max     config.ByteSize
		lastCompressed bool // the third call of ~150 KB, ~310 KB queued before it
	}{
		{true, 0, 16 << 20, true},
		{false, 0, 16 << 20, false},
		{true, 256 << 20, 16 << 20, false}, // the default: no backlog yet
		{true, 200 << 10, 16 << 20, true},
		{true, 256 << 20, 500 << 10, true}, // half of max_queue_bytes: 250 KB
	} {
		t.Run(fmt.Sprintf("queue_compress=%v,above=%d,max=%d", tc.compress, tc.above, tc.max), func(t *testing.T) {
			cfg := testConfig(t.TempDir(), deadAddr(t))
			cfg.QueueCompress, cfg.QueueCompressAbove, cfg.MaxQueueBytes = tc.compress, tc.above, tc.max
			a := startAgent(t, cfg)
			c := dial(t, a.Addr())
			es := make([]*scribethrift.LogEntry, 1000)
			raw := 0
			for i := range es {
				es[i] = &scribethrift.LogEntry{Category: "json", Message: fmt.Appendf(nil, `{"ts":%d,"key":"user%03d","value":%d,"pad":"%s"}`, i, i%50, i, strings.Repeat("x", 120))}
				raw += len(es[i].Message)
			}
			var before, got float64
			for range 3 {
				before = got
				if rc, err := c.Log(context.Background(), es); err != nil || rc != scribethrift.ResultCode_OK {
					t.Fatalf("log: %v %v", rc, err)
				}
				got = gather(t, a, "freeway_agent_queue_bytes", "", "")
			}
			last := got - before
			if compressed := last < float64(raw)/3; compressed != tc.lastCompressed || last <= 0 {
				t.Fatalf("the third call took %.0f bytes of queue for %d bytes of messages (%.0f queued before it)", last, raw, before)
			}
		})
	}
}

// TestStopWaitsForTheAnswerInFlight: an agent stopped while a batch was
// in flight closed its connection and did not acknowledge the batch,
// which the writer took all the same: the restart sent it again. Puma
// drops such a batch only in the bucket it first went to, and a restart
// for a reload may route it to another (the category's shard key,
// bucket count or apps changed): it was counted twice. A stop now waits
// for the answer and acknowledges the batch.
func TestStopWaitsForTheAnswerInFlight(t *testing.T) {
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	up := startUpstream(t, "127.0.0.1:0", nil)
	up.gate = func(*scribethrift.Batch) {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-release
	}
	dir := t.TempDir()
	cfg := testConfig(dir, up.srv.Addr())
	a := startAgent(t, cfg)
	mustLog(t, dial(t, a.Addr()), entries("web", "a", 0, 10))
	select {
	case <-entered:
	case <-time.After(testkit.Deadline):
		t.Fatal("the batch does not reach upstream")
	}
	stopped := make(chan error, 1)
	go func() { stopped <- a.stop() }()
	// The stop has begun once the agent's port no longer answers.
	testkit.WaitFor(t, "the agent to stop serving", func() bool {
		c, err := scribeapi.Dial(a.Addr(), thriftsrv.Limits{}, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	close(release)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}

	b := startAgent(t, cfg)
	mustLog(t, dial(t, b.Addr()), entries("web", "b", 0, 1))
	// Queue order: a batch sent again would come before this one.
	testkit.WaitFor(t, "the next entry upstream", func() bool { return up.count(t) == 11 })
	sent := 0
	for _, c := range up.callsSnapshot() {
		for _, m := range c.Messages {
			if string(m.Message) == "a-0" {
				sent++
			}
		}
	}
	if sent != 1 {
		t.Fatalf("the batch in flight at the stop was sent %d times, want once", sent)
	}
}
