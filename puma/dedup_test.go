package puma

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/ptail"
)

// commitRowOf reads a shard's stored commit value.
func commitRowOf(t testing.TB, st store.Store, category string, bucket int) []byte {
	t.Helper()
	cells, err := st.Get(context.Background(), "puma", commitRow(category, bucket), store.Latest)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cells {
		if c.Column == "commit" {
			return c.Value
		}
	}
	t.Fatalf("no commit row for %s/%d", category, bucket)
	return nil
}

// TestFakeAgentKeysBounded: 20,000 made-up agent ids (long ones, too) must
// not bloat the commit row that every checkpoint rewrites.
func TestFakeAgentKeysBounded(t *testing.T) {
	e := newEnv(t, orders(t))
	s := testShard(t, e.node("n1"), 0)
	line := order(t0, "eu", "book", 1)
	for i := range 20_000 {
		id := fmt.Sprintf("fake-%d/%s", i, strings.Repeat("x", 1000))
		s.apply(agent(id, 1, line), ptail.Position{Offset: int64(i + 1)})
	}
	if err := s.checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	row := commitRowOf(t, e.st, "orders", 0)
	var st struct {
		HighWater map[string]uint64 `json:"high_water"`
	}
	if err := json.Unmarshal(row, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.HighWater) > DefaultConfig().MaxAgentsPerShard || len(row) > 512<<10 {
		t.Fatalf("commit row of %d bytes with %d agent keys", len(row), len(st.HighWater))
	}
	// Every line was counted: none was a re-send.
	equalRows(t, "rows", memRows(t, s, Query{}), []string{"+0..+60s {kind=book region=eu} {hi=1 lo=1 mean=1 n=20000 total=20000}"})
}

// ones is n order lines of amount v in the first window.
func ones(n int, v int) [][]byte {
	var out [][]byte
	for range n {
		out = append(out, order(t0+1000, "eu", "book", v))
	}
	return out
}

// TestRestoredAndCopiedAgents: an agent whose queue was restored from a
// backup (a new incarnation numbering from below its old high water) and
// one whose queue was copied to a second host (two incarnations
// interleaved) lose no entry, through segments and a restart; the
// sequences going backwards are counted and logged without the secret
// incarnation.
func TestRestoredAndCopiedAgents(t *testing.T) {
	for _, tc := range []struct {
		name string
		comp func(seq uint64) segment.Compression
	}{
		{"v1", nil},
		{"none", func(uint64) segment.Compression { return segment.Uncompressed }},
		{"s2", func(uint64) segment.Compression { return segment.S2 }},
		// A writer whose compression changed at a restart: the bucket's
		// segments alternate.
		{"mixed", func(seq uint64) segment.Compression { return segment.Compression(seq % 2) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, orders(t))
			e.comp = tc.comp
			testRestoredAndCopiedAgents(t, e)
			if tc.name == "s2" && e.compressed != 11 || tc.name == "mixed" && e.compressed != 7 {
				t.Errorf("%d blocks stored compressed", e.compressed)
			}
		})
	}
}

func testRestoredAndCopiedAgents(t *testing.T, e *env) {
	reg := prometheus.NewPedanticRegistry()
	var logs testkit.LogBuffer
	e.publish("orders", 0,
		agent("h1/inc-A-secret", 1, ones(5, 1)...),
		agent("h1/inc-B-secret", 3, ones(4, 10)...), // restored: 3..6 again, under a new incarnation
		agent("h2/inc-C-secret", 1, ones(3, 100)...),
		agent("h2/inc-D-secret", 1, ones(3, 1000)...), // copied: both number from 1
	)
	pos := e.publish("orders", 0,
		agent("h2/inc-C-secret", 4, ones(2, 100)...),
		agent("h2/inc-D-secret", 4, ones(2, 1000)...),
		agent("h2/inc-C-secret", 4, ones(2, 100)...), // re-sent
		agent("h1/inc-B-secret", 5, ones(2, 10)...),  // re-sent
	)
	p1 := e.node("n1", func(c *Config, d *Deps) {
		d.Metrics = reg
		d.Log = slog.New(slog.NewTextHandler(&logs, nil))
	})
	r1 := start(t, p1)
	waitCommitted(t, p1, pos)
	want := []string{"+0..+60s {kind=book region=eu} {hi=1000 lo=1 mean=291.8421052631579 n=19 total=5545}"}
	equalRows(t, "before the restart", rows(t, p1, Query{}), want)
	r1.stop(t)
	got := gather(t, reg)
	if got["freeway_puma_sequence_regressions_total"] != 2 || got["freeway_puma_duplicates_total"] != 4 {
		t.Fatalf("regressions %v, duplicates %v; want 2 and 4", got["freeway_puma_sequence_regressions_total"], got["freeway_puma_duplicates_total"])
	}
	if l := logs.String(); strings.Count(l, "agent sequence went backwards") != 2 || !strings.Contains(l, "agent=h1 ") || !strings.Contains(l, "agent=h2 ") || strings.Contains(l, "secret") {
		t.Fatalf("logs:\n%s", l)
	}

	p2 := e.node("n2")
	start(t, p2)
	pos = e.publish("orders", 0,
		agent("h1/inc-A-secret", 1, ones(6, 1)...),    // 1..5 re-sent, 6 new
		agent("h1/inc-B-secret", 3, ones(5, 10)...),   // 3..6 re-sent, 7 new
		agent("h2/inc-D-secret", 5, ones(2, 1000)...), // 5 re-sent, 6 new
	)
	waitCommitted(t, p2, pos)
	equalRows(t, "after the restart", rows(t, p2, Query{}), []string{"+0..+60s {kind=book region=eu} {hi=1000 lo=1 mean=298 n=22 total=6556}"})
}

// TestForgedIncarnation: a block with a victim's agent id, another
// incarnation and a huge sequence number does not suppress the victim's
// later entries.
func TestForgedIncarnation(t *testing.T) {
	e := newEnv(t, orders(t))
	e.publish("orders", 0, agent("victim/inc-1", 1, ones(3, 1)...))
	e.publish("orders", 0, agent("victim/forged", 1<<62, ones(1, 100)...), agent("victim", 1<<62, ones(1, 100)...))
	pos := e.publish("orders", 0, agent("victim/inc-1", 4, ones(3, 1)...))
	p := e.node("n1")
	start(t, p)
	waitCommitted(t, p, pos)
	equalRows(t, "rows", rows(t, p, Query{}), []string{"+0..+60s {kind=book region=eu} {hi=100 lo=1 mean=25.75 n=8 total=206}"})
}

// TestDedupHorizon: a key not seen for puma.dedup_horizon, in arrival
// time, is forgotten at a checkpoint (an entry it re-sends then is counted
// again); old segments replayed long after they were written keep their
// keys, since the clock is the blocks' arrival time.
func TestDedupHorizon(t *testing.T) {
	e := newEnv(t, orders(t, func(s *apps.Spec) {
		s.Time = nil
		s.AllowedLateness = config.Duration(30 * 24 * time.Hour)
		s.Retention = config.Duration(60 * 24 * time.Hour)
	}))
	reg := prometheus.NewPedanticRegistry()
	ctx := context.Background()
	s := testShard(t, e.node("n1", func(c *Config, d *Deps) { d.Metrics = reg }), 0)
	day := int64(24 * 3600_000)
	at := func(id string, seq uint64, arrivalMs int64) *segment.Block {
		b := agent(id, seq, order(0, "eu", "book", 1))
		b.ArrivalMs = arrivalMs
		return b
	}
	s.apply(at("old/i", 1, t0), ptail.Position{Offset: 1})
	s.apply(at("recent/i", 1, t0+day), ptail.Position{Offset: 2})
	s.apply(at("now/i", 1, t0+7*day+1), ptail.Position{Offset: 3}) // old/i: 7 days and 1 ms ago
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.highWater.keys["old/i"]; ok || len(s.highWater.keys) != 2 {
		t.Fatalf("keys after the horizon: %v", s.highWater.keys)
	}
	if got := gather(t, reg)["freeway_puma_dedup_keys_forgotten_total{reason=horizon}"]; got != 1 {
		t.Fatalf("forgotten %v", got)
	}
	s.apply(at("old/i", 1, t0+7*day+2), ptail.Position{Offset: 4})    // counted again: at-least-once
	s.apply(at("recent/i", 1, t0+7*day+2), ptail.Position{Offset: 5}) // still known
	if s.entries != 4 || s.dups != 1 {
		t.Fatalf("entries %d dups %d", s.entries, s.dups)
	}
	// The state, horizon clock included, survives recovery.
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	s2 := testShard(t, e.node("n2"), 0)
	if s2.highWater.clockMs != t0+7*day+2 || len(s2.highWater.keys) != 3 {
		t.Fatalf("recovered clock %d keys %v", s2.highWater.clockMs-t0, s2.highWater.keys)
	}
}

// TestFakeAgentKeysEvictLeastRecentlySeen: beyond max_agents_per_shard
// the least recently seen keys go; a victim seen after the flood stays.
func TestFakeAgentKeysEvictLeastRecentlySeen(t *testing.T) {
	e := newEnv(t, orders(t))
	reg := prometheus.NewPedanticRegistry()
	s := testShard(t, e.node("n1", func(c *Config, d *Deps) { d.Metrics = reg; c.MaxAgentsPerShard = 100 }), 0)
	line := order(t0, "eu", "book", 1)
	blk := func(id string, seq uint64, arrivalMs int64) *segment.Block {
		b := agent(id, seq, line)
		b.ArrivalMs = arrivalMs
		return b
	}
	s.apply(blk("victim/i", 1, t0), ptail.Position{Offset: 1})
	for i := range 1000 {
		s.apply(blk(fmt.Sprint("fake/", i), 1, t0+int64(i)), ptail.Position{Offset: 2})
		if i%10 == 0 {
			s.apply(blk("victim/i", uint64(2+i/10), t0+int64(i)), ptail.Position{Offset: 2})
		}
	}
	if n := len(s.highWater.keys); n > 100 {
		t.Fatalf("%d keys", n)
	}
	if _, ok := s.highWater.keys["victim/i"]; !ok {
		t.Fatal("the victim, seen lately, was forgotten")
	}
	if got := gather(t, reg)["freeway_puma_dedup_keys_forgotten_total{reason=max_agents}"]; got < 900 {
		t.Fatalf("forgotten %v", got)
	}
	s.apply(blk("victim/i", 100, t0+1000), ptail.Position{Offset: 3}) // re-sent
	if s.dups != 1 {
		t.Fatalf("dups %d", s.dups)
	}
}

func TestDedupKey(t *testing.T) {
	long := "host-1/" + strings.Repeat("s", 500)
	for _, tc := range []struct{ in, id string }{
		{"host-1/abc", "host-1"},
		{"host-1", "host-1"},
		{long, "host-1"},
		{"h\xff/x", "h?"},
		{strings.Repeat("é", 100) + "/x", strings.Repeat("é", 32)},
	} {
		key := dedupKey(tc.in)
		if agentID(key) != tc.id || len(key) > maxAgentKey || !utf8.ValidString(key) || dedupKey(key) != key {
			t.Errorf("dedupKey(%.30q) = %q (id %q), want id %q", tc.in, key, agentID(key), tc.id)
		}
		if strings.Contains(key, "sss") {
			t.Errorf("dedupKey(%.30q) = %q keeps the secret", tc.in, key)
		}
	}
	if dedupKey(long) == dedupKey(long+"t") {
		t.Error("two long keys collide")
	}
}

// oldCommitState is the commit row as the code before per-incarnation
// bounds wrote and read it.
type oldCommitState struct {
	Epoch      int64             `json:"epoch"`
	Position   ptail.Position    `json:"position"`
	HighWater  map[string]uint64 `json:"high_water,omitempty"`
	Watermarks map[string]int64  `json:"watermarks,omitempty"`
	Owner      string            `json:"owner"`
	Lease      int64             `json:"lease,omitempty"`
	CommitMs   int64             `json:"commit_ms"`
}

// TestCommitRowCompatibility: a commit row of the previous code is read
// (its high waters deduplicate), and a row of this code is readable by the
// previous code's decoder.
func TestCommitRowCompatibility(t *testing.T) {
	e := newEnv(t, orders(t))
	ctx := context.Background()
	longOld := "legacy-" + strings.Repeat("x", 300) // an id now kept hashed
	old := oldCommitState{Epoch: 3, HighWater: map[string]uint64{"a1": 10, longOld: 7}, Owner: "old", CommitMs: t0}
	val, _ := json.Marshal(old)
	if err := e.st.Put(ctx, "puma", []store.Cell{{Row: commitRow("orders", 0), Column: "commit", Timestamp: 3, Value: val}}); err != nil {
		t.Fatal(err)
	}
	s := testShard(t, e.node("n1"), 0)
	if k := s.highWater.keys["a1"]; k == nil || k.seq != 10 || k.seenMs != t0 {
		t.Fatalf("legacy key: %+v", k)
	}
	s.apply(agent("a1", 5, ones(10, 1)...), ptail.Position{Offset: 1})   // 5..10 re-sent, 11..14 new
	s.apply(agent(longOld, 6, ones(3, 1)...), ptail.Position{Offset: 2}) // 6, 7 re-sent, 8 new
	if s.entries != 5 || s.dups != 8 {
		t.Fatalf("entries %d dups %d", s.entries, s.dups)
	}
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	var back oldCommitState
	if err := json.Unmarshal(commitRowOf(t, e.st, "orders", 0), &back); err != nil {
		t.Fatal(err)
	}
	if back.HighWater["a1"] != 14 || back.HighWater[dedupKey(longOld)] != 8 || back.Epoch != 4 {
		t.Fatalf("read by the old decoder: %+v", back)
	}
}

// TestDedupCheckpointRoundTrip: the deduplication state (high waters,
// last-seen times, the arrival clock; long and non-UTF-8 keys) survives a
// checkpoint and a recovery, on the embedded store and on HBase.
func TestDedupCheckpointRoundTrip(t *testing.T) {
	t.Run("bolt", func(t *testing.T) {
		e := newEnv(t)
		checkDedupRoundTrip(t, e, e.st, "orders")
	})
	t.Run("hbase", func(t *testing.T) {
		st, category := hbaseCategory(t, "dedup_")
		checkDedupRoundTrip(t, newEnv(t), st, category)
	})
}

func checkDedupRoundTrip(t *testing.T, e *env, st store.Store, category string) {
	e.apps = []*apps.App{orders(t, func(s *apps.Spec) { s.Category = category })}
	ctx := context.Background()
	node := func(id string) *Puma { return e.node(id, func(c *Config, d *Deps) { d.Store = st }) }
	s := testShardOf(t, node("n1"), category, 0)
	long := "host-9/" + strings.Repeat("s", 300)
	blocks := []*segment.Block{
		agent("a/1", 1, ones(3, 1)...),
		agent("b/2", 7, ones(2, 1)...),
		agent(long, 100, ones(1, 1)...),
		agent("c\xff/3", 5, ones(1, 1)...),
		agent("old-agent", 40, ones(2, 1)...),
	}
	for i, b := range blocks {
		b.ArrivalMs = t0 + int64(i)*1000
		s.apply(b, ptail.Position{Segment: names.SegmentName(1, 1), Offset: int64(i + 1)})
	}
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	s2 := testShardOf(t, node("n2"), category, 0)
	dump := func(d *dedup) string {
		hw, seen := d.save()
		b, _ := json.Marshal(hw)
		return fmt.Sprint(string(b), seen, d.clockMs-t0)
	}
	if got, want := dump(s2.highWater), dump(s.highWater); got != want {
		t.Fatalf("recovered dedup state\n%s\nwant\n%s", got, want)
	}
	for _, id := range []string{long, "c\xff/3", "a/1"} {
		if k := s2.highWater.keys[dedupKey(id)]; k == nil || k.id != agentID(dedupKey(id)) {
			t.Fatalf("key %.20q: %+v", id, k)
		}
	}
	// Every block again: all re-sends.
	for i, b := range blocks {
		s2.apply(b, ptail.Position{Segment: names.SegmentName(1, 1), Offset: int64(10 + i)})
	}
	if s2.entries != 0 || s2.dups != 9 {
		t.Fatalf("after recovery: entries %d dups %d, want 0 and 9", s2.entries, s2.dups)
	}
	equalRows(t, "rows", memRows(t, s2, Query{}), []string{"+0..+60s {kind=book region=eu} {hi=1 lo=1 mean=1 n=9 total=9}"})
}
