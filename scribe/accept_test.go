package scribe

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// Every category stock Scribe accepts is queued and shipped as it is, and a
// message over max_message_bytes too: they used to be answered OK and
// dropped. Only an empty category is dropped, as stock Scribe does.
func TestEveryCategoryStockScribeAcceptsIsKept(t *testing.T) {
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := testConfig(t.TempDir(), up.srv.Addr())
	cfg.MaxMessageBytes = 1 << 10
	a := startAgent(t, cfg)
	c := dial(t, a.Addr())
	big := string(bytes.Repeat([]byte("x"), 64<<10))
	want := []got{
		{1, "web/access", "slash"},
		{2, "a b", "space"},
		{3, "_internal", "underscore"},
		{4, strings.Repeat("c", 1000), "long"},
		{5, "\xff\x00bytes\n", "any bytes"},
		{6, "../etc", "dots"},
		{7, "ok", big},
	}
	var es []*scribethrift.LogEntry
	for i, w := range want {
		es = append(es, &scribethrift.LogEntry{Category: w.cat, Message: []byte(w.msg)})
		if i == 2 {
			es = append(es, &scribethrift.LogEntry{Category: "", Message: []byte("blank")})
		}
	}
	mustLog(t, c, es)
	mustLog(t, c, []*scribethrift.LogEntry{{Category: "", Message: []byte("only blank")}})
	testkit.WaitFor(t, "the queue shipped", func() bool { return a.q.Stats().Entries == 0 && a.c.shipped.Load() == a.c.receivedScribe.Load() })
	g := up.received(t)
	if len(g) != len(want) {
		t.Fatalf("%d entries upstream, want %d", len(g), len(want))
	}
	for i := range want {
		if g[i] != want[i] {
			t.Errorf("entry %d upstream = %d %.40q %.40q, want %d %.40q %.40q", i, g[i].seq, g[i].cat, g[i].msg, want[i].seq, want[i].cat, want[i].msg)
		}
	}
	if n := gather(t, a, "freeway_agent_entries_rejected_total", "reason", reasonEmptyCategory); n != 2 {
		t.Errorf("rejected{reason=empty_category} = %v, want 2", n)
	}
	if n := a.fb303()["received blank category"]; n != 2 {
		t.Errorf("fb303 received blank category = %d, want 2", n)
	}
	if !strings.Contains(a.logs.String(), "received blank category") {
		t.Errorf("no log line for the blank category: %s", a.logs.String())
	}
}

// The agent stamps arrival times with its own clock; a client (an app on
// the app-facing port) cannot choose them with LogBatch.
func TestArrivalTimeIsTheAgentsClock(t *testing.T) {
	up := startUpstream(t, "127.0.0.1:0", nil)
	clk := &fakeClock{}
	a := startAgentClock(t, testConfig(t.TempDir(), up.srv.Addr()), clk)
	c := dial(t, a.Addr())
	in2100 := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	rc, err := c.LogBatch(context.Background(), &scribethrift.Batch{
		AgentID: "client", FirstSeq: 1, ReceivedAtMs: in2100,
		Messages: []*scribethrift.LogEntry{{Category: "c", Message: []byte("from the future")}},
	})
	if err != nil || rc != scribethrift.ResultCode_OK {
		t.Fatalf("log batch: %v %v", rc, err)
	}
	mustLog(t, c, []*scribethrift.LogEntry{{Category: "c", Message: []byte("plain")}})
	testkit.WaitFor(t, "2 entries upstream", func() bool { return up.count(t) == 2 })
	for _, b := range up.callsSnapshot() {
		if b.ReceivedAtMs != clk.Now().UnixMilli() {
			t.Fatalf("shipped received_at_ms %d, want the agent's clock %d", b.ReceivedAtMs, clk.Now().UnixMilli())
		}
	}
}

// A client sending blank categories at will makes a handful of log lines,
// and every entry is counted.
func TestBlankCategoriesAreLoggedRateLimited(t *testing.T) {
	a := startAgent(t, testConfig(t.TempDir(), deadAddr(t)))
	c := dial(t, a.Addr())
	es := make([]*scribethrift.LogEntry, 1000)
	for i := range es {
		es[i] = &scribethrift.LogEntry{Category: "", Message: []byte("x")}
	}
	mustLog(t, c, es)
	if n := a.c.rejected[reasonEmptyCategory].Load(); n != 1000 {
		t.Fatalf("%d blank entries counted, want 1000", n)
	}
	if n := strings.Count(a.logs.String(), "received blank category"); n == 0 || n > 10 {
		t.Fatalf("%d log lines for 1000 blank entries", n)
	}
}
