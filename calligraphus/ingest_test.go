package calligraphus

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/ptail"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// oddCategories are categories a stock Scribe server accepts that were
// once dropped: a slash, a space, hidden-looking names, and names too
// long for a dfs path component.
func oddCategories() []string {
	return []string{"web/access", "a b", "_internal", ".x", strings.Repeat("c", 300), strings.Repeat("web/", 2500)}
}

func TestEveryCategoryIsStored(t *testing.T) {
	fsKinds(t, func(t *testing.T, fsys *dfstest.Faulty) {
		_, co := inprocCoord(t)
		s := startServer(t, testConfig(), fsys, co, nil)
		cl := s.dial(t)
		cats := append(oddCategories(), "plain")
		want := map[string][]string{}
		var es []*scribethrift.LogEntry
		for i, c := range cats {
			for j := 0; j < 2; j++ {
				m := fmt.Sprintf("cat%d-%d", i, j)
				es = append(es, &scribethrift.LogEntry{Category: c, Message: []byte(m)})
				want[c] = append(want[c], m)
			}
		}
		mustLog(t, cl, es)
		mustLog(t, cl, entries(cats[0], "again"))
		want[cats[0]] = append(want[cats[0]], "again")
		s.stop()

		for _, c := range cats {
			dir := layout.BucketDir(c, 0)
			if got := msgs(scan(t, fsys, dir)); !slices.Equal(got, want[c]) {
				t.Errorf("category %.40q (%d bytes) in %s holds %q, want %q", c, len(c), dir, got, want[c])
			}
			if got := msgs(tail(t, fsys, dir, len(want[c]))); !slices.Equal(got, want[c]) {
				t.Errorf("ptail of %.40q reads %q", c, got)
			}
		}
		listed, unreadable, err := layout.Categories(fsys)
		if err != nil || len(unreadable) != 0 {
			t.Fatalf("list categories: %v, unreadable %v", err, unreadable)
		}
		var names []string
		for _, c := range listed {
			names = append(names, c.Name)
		}
		slices.Sort(names)
		slices.Sort(cats)
		if !slices.Equal(names, cats) {
			t.Errorf("the dfs lists %d categories %.60q, want %d", len(names), names, len(cats))
		}
		if got := counter(t, s.reg, "freeway_calligraphus_entries_received_total"); int(got) != len(es)+1 {
			t.Errorf("entries_received %v, want %d", got, len(es)+1)
		}
		// Metric labels are bounded.
		mfs, err := s.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if len(lp.GetValue()) > layout.MaxName {
						t.Errorf("%s has a label of %d bytes", mf.GetName(), len(lp.GetValue()))
					}
				}
			}
		}
	})
}

func TestEmptyCategoryDroppedAndCounted(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	s := startServer(t, testConfig(), fsys, co, nil)
	cl := s.dial(t)
	mustLog(t, cl, []*scribethrift.LogEntry{{Category: "", Message: []byte("no category")}, {Category: "cat", Message: []byte("kept")}})
	s.stop()
	if got := msgs(scan(t, fsys, "cat/0")); !slices.Equal(got, []string{"kept"}) {
		t.Errorf("cat/0 holds %q", got)
	}
	if got := counter(t, s.reg, "freeway_calligraphus_entries_rejected_total", "reason", "empty_category"); got != 1 {
		t.Errorf("rejected empty_category %v, want 1", got)
	}
	if got := counter(t, s.reg, "freeway_calligraphus_entries_received_total"); got != 1 {
		t.Errorf("entries_received %v, want 1", got)
	}
}

// TestDamagedBlockCostsOnlyThatBlock damages a published segment's block
// body and another block's header: ptail loses exactly those two blocks
// and reads the rest of the segment and the next segment.
func TestDamagedBlockCostsOnlyThatBlock(t *testing.T) {
	local := newLocal(t)
	fsys := dfstest.NewFaulty(local)
	_, co := inprocCoord(t)
	s := startServer(t, testConfig(), fsys, co, nil)
	cl := s.dial(t)
	var sent [][]string // by call: one block each
	for call := 0; call < 8; call++ {
		ms := []string{fmt.Sprintf("c%d-a-%s", call, strings.Repeat("x", 100)), fmt.Sprintf("c%d-b", call)}
		mustLog(t, cl, entries("cat", ms...))
		sent = append(sent, ms)
		if call == 5 {
			s.stop() // publishes the first segment; the next run writes a second
			s = startServer(t, testConfig(), fsys, co, nil)
			cl = s.dial(t)
		}
	}
	s.stop()
	names := published(t, fsys, "cat/0", false)
	if len(names) != 2 {
		t.Fatalf("segments %v, want 2", names)
	}
	first := path.Join("cat/0", names[0])
	data, err := dfs.ReadFile(fsys, first)
	if err != nil {
		t.Fatal(err)
	}
	r, err := segment.NewReader(bytes.NewReader(data), 0)
	if err != nil {
		t.Fatal(err)
	}
	offs := []int64{r.Offset()}
	var b segment.Block
	for r.Next(&b) == nil {
		offs = append(offs, r.Offset())
	}
	if len(offs) != 7 {
		t.Fatalf("first segment has %d blocks, want 6", len(offs)-1)
	}
	bad := bytes.Clone(data)
	body1 := offs[1] + segment.BlockHeaderSize // block 1's body, whatever its size
	bad[body1+(offs[2]-body1)/2] ^= 0x20
	bad[offs[3]+2] ^= 0x01 // block 3's header
	if err := os.WriteFile(filepath.Join(local.Root(), filepath.FromSlash(first)), bad, 0o644); err != nil {
		t.Fatal(err)
	}

	var want []string
	for call, ms := range sent {
		if call != 1 && call != 3 {
			want = append(want, ms...)
		}
	}
	pr := ptail.NewReader(fsys, "cat/0", ptail.Position{}, 2*time.Millisecond, slog.New(slog.DiscardHandler))
	defer pr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []string
	for len(got) < len(want) {
		if _, err := pr.Next(ctx, &b); err != nil {
			t.Fatalf("ptail after %d of %d entries (%q): %v", len(got), len(want), got, err)
		}
		for _, m := range b.Messages {
			got = append(got, string(m))
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("read %q, want %q", got, want)
	}
	if pr.DamagedBlocks != 2 || pr.DamagedEntries != 2 || pr.Skipped != 2 {
		t.Errorf("damaged blocks %d, entries %d (known), skipped %d; want 2, 2 (the body's), 2", pr.DamagedBlocks, pr.DamagedEntries, pr.Skipped)
	}
}

// twoBuckets routes category cat over two buckets and returns a message
// for each.
func twoBuckets(t *testing.T) (*Router, func(bucket, i int) string) {
	router := NewRouter(1, map[string]Route{"cat": userRoute(t, "cat", 2)})
	users := [2]string{}
	for i := 0; users[0] == "" || users[1] == ""; i++ {
		u := fmt.Sprintf("u%d", i)
		b, _ := router.Bucket("cat", []byte(userMsg(u, 0)))
		if users[b] == "" {
			users[b] = u
		}
	}
	return router, func(bucket, i int) string { return userMsg(users[bucket], i) }
}

// TestRefusedCallWritesNothing: a call answered TRY_LATER because one of
// its buckets is held by another writer, or over its budget, leaves
// nothing written in its other buckets, which the client's retry would
// write twice.
func TestRefusedCallWritesNothing(t *testing.T) {
	t.Run("not_owner", func(t *testing.T) {
		fsys := dfstest.NewFaulty(newLocal(t))
		hub, co := inprocCoord(t)
		router, msg := twoBuckets(t)
		other := hub.Session()
		defer other.Close()
		if _, err := other.Acquire(context.Background(), layout.WriterLease("cat", 1), "someone-else"); err != nil {
			t.Fatal(err)
		}
		s := startServer(t, testConfig(), fsys, co, router)
		cl := s.dial(t)
		for _, order := range [][]int{{0, 1}, {1, 0}} {
			rc, err := cl.Log(context.Background(), entries("cat", msg(order[0], 1), msg(order[1], 1)))
			if err != nil || rc != scribethrift.ResultCode_TRY_LATER {
				t.Fatalf("call with a foreign bucket: %v %v, want TRY_LATER", rc, err)
			}
		}
		mustLog(t, cl, entries("cat", msg(0, 2)))
		s.stop()
		if got := msgs(scan(t, fsys, "cat/0")); !slices.Equal(got, []string{msg(0, 2)}) {
			t.Errorf("bucket 0 holds %q, want only the accepted call's entry", got)
		}
		if got := counter(t, s.reg, "freeway_calligraphus_try_later_total", "reason", "not_owner"); got != 2 {
			t.Errorf("try_later not_owner %v, want 2", got)
		}
	})
	t.Run("busy", func(t *testing.T) {
		fsys := dfstest.NewFaulty(newLocal(t))
		_, co := inprocCoord(t)
		router, msg := twoBuckets(t)
		s := startServerWith(t, testConfig(), fsys, co, router, func(c *Calligraphus) { c.cfg.MaxPendingBytes = 4 << 10 })
		cl := s.dial(t)
		// Hold bucket 1's first sync, with 3 KiB pending there.
		var once sync.Once
		blocked, release := make(chan struct{}), make(chan struct{})
		t.Cleanup(func() { once.Do(func() { close(release) }) })
		var armed sync.Once
		fsys.SetHook(func(c dfstest.Call) error {
			if c.Op == dfstest.OpSync && strings.HasPrefix(c.Name, "cat/1/") {
				first := false
				armed.Do(func() { first = true })
				if first {
					close(blocked)
					<-release
				}
			}
			return nil
		})
		pad := strings.Repeat("p", 3<<10)
		held := logAsync(s.dial(t), entries("cat", msg(1, 0)[:len(msg(1, 0))-1]+`, "pad": "`+pad+`"}`))
		<-blocked
		for _, order := range [][]int{{0, 1}, {1, 0}} {
			var es []*scribethrift.LogEntry
			for _, b := range order {
				m := msg(b, 1)
				es = append(es, &scribethrift.LogEntry{Category: "cat", Message: []byte(m[:len(m)-1] + `, "pad": "` + pad + `"}`)})
			}
			rc, err := cl.Log(context.Background(), es)
			if err != nil || rc != scribethrift.ResultCode_TRY_LATER {
				t.Fatalf("call with a busy bucket: %v %v, want TRY_LATER", rc, err)
			}
		}
		once.Do(func() { close(release) })
		if r := <-held; r.err != nil || r.rc != scribethrift.ResultCode_OK {
			t.Fatalf("held call: %v %v", r.rc, r.err)
		}
		mustLog(t, cl, entries("cat", msg(0, 2)))
		s.stop()
		if got := msgs(scan(t, fsys, "cat/0")); !slices.Equal(got, []string{msg(0, 2)}) {
			t.Errorf("bucket 0 holds %d entries %.80q, want only the accepted call's", len(got), got)
		}
		if got := len(scan(t, fsys, "cat/1")); got != 1 {
			t.Errorf("bucket 1 holds %d entries, want the held call's", got)
		}
		if got := counter(t, s.reg, "freeway_calligraphus_try_later_total", "reason", "busy"); got != 2 {
			t.Errorf("try_later busy %v, want 2", got)
		}
	})
}

func TestArrivalClampAndAgentKey(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	now := time.UnixMilli(1_700_000_000_000)
	var logs bytes.Buffer
	var logMu sync.Mutex
	s := startServerWith(t, testConfig(), fsys, co, nil, func(c *Calligraphus) {
		c.now = func() time.Time { return now }
		c.log = slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil)).With("component", "calligraphus")
	})
	cl := s.dial(t)
	ctx := context.Background()
	inc := "secret-incarnation"
	for _, b := range []*scribethrift.Batch{
		{AgentID: "agent-7", Incarnation: &inc, FirstSeq: 1, ReceivedAtMs: now.Add(time.Hour).UnixMilli(), Messages: entries("cat", "future")},
		{AgentID: "agent-7", FirstSeq: 2, ReceivedAtMs: now.Add(-time.Hour).UnixMilli(), Messages: entries("cat", "past")},
		{AgentID: "agent-7", Incarnation: &inc, FirstSeq: 3, ReceivedAtMs: -5, Messages: entries("cat", "negative")},
		{AgentID: "agent-7", Incarnation: &inc, FirstSeq: 0, ReceivedAtMs: 0, Messages: entries("cat", "unsequenced")},
	} {
		if rc, err := cl.LogBatch(ctx, b); err != nil || rc != scribethrift.ResultCode_OK {
			t.Fatalf("logbatch: %v %v", rc, err)
		}
	}
	mustLog(t, cl, entries("cat", "stock"))
	s.stop()
	want := map[string]entry{
		"future":      {Agent: "agent-7/" + inc, Seq: 1, Arrival: now.UnixMilli()},
		"past":        {Agent: "agent-7", Seq: 2, Arrival: now.Add(-time.Hour).UnixMilli()},
		"negative":    {Agent: "agent-7/" + inc, Seq: 3, Arrival: now.UnixMilli()},
		"unsequenced": {Agent: "", Seq: 0, Arrival: now.UnixMilli()},
		"stock":       {Agent: "", Seq: 0, Arrival: now.UnixMilli()},
	}
	got := scan(t, fsys, "cat/0")
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d", len(got), len(want))
	}
	for _, e := range got {
		w := want[e.Msg]
		if e.Agent != w.Agent || e.Seq != w.Seq || e.Arrival != w.Arrival {
			t.Errorf("%s: agent %q seq %d arrival %d, want %q %d %d", e.Msg, e.Agent, e.Seq, e.Arrival, w.Agent, w.Seq, w.Arrival)
		}
	}
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logs.String(), inc) {
		t.Errorf("the incarnation is in the log:\n%s", logs.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestIdleWritersEndAndReleaseTheirLeases(t *testing.T) {
	fsKinds(t, func(t *testing.T, fsys *dfstest.Faulty) {
		_, co := inprocCoord(t)
		cfg := testConfig()
		cfg.IdleClose = config.Duration(50 * time.Millisecond)
		s := startServer(t, cfg, fsys, co, nil)
		cl := s.dial(t)
		cats := []string{"a", "web/access", strings.Repeat("l", 300)}
		for _, c := range cats {
			mustLog(t, cl, entries(c, "first"))
		}
		idle := func() bool {
			for _, c := range cats {
				if owner, _, err := co.Holder(context.Background(), layout.WriterLease(c, 0)); err != nil || owner != "" {
					return false
				}
			}
			s.c.mu.Lock()
			defer s.c.mu.Unlock()
			return len(s.c.writers) == 0 && len(s.c.live) == 0 && len(s.c.closing) == 0
		}
		testkit.WaitFor(t, "idle writers to end and release their leases", idle)
		for _, c := range cats {
			// Published at the idle close, though segment_max_age is an hour.
			if got := msgs(scan(t, fsys, layout.BucketDir(c, 0))); !slices.Equal(got, []string{"first"}) {
				t.Errorf("%.20q after the idle close: %q", c, got)
			}
		}
		// A bucket written again gets a writer again.
		mustLog(t, cl, entries(cats[1], "second"))
		if owner, _, _ := co.Holder(context.Background(), layout.WriterLease(cats[1], 0)); owner != cfg.ID {
			t.Errorf("lease of a written bucket held by %q", owner)
		}
		s.stop()
		if got := msgs(scan(t, fsys, layout.BucketDir(cats[1], 0))); !slices.Equal(got, []string{"first", "second"}) {
			t.Errorf("after a second writer: %q", got)
		}
	})
}

// TestIdleCloseUnderLoad: writers end for idleness while calls keep
// coming; no call is refused for it and nothing is lost or reordered.
func TestIdleCloseUnderLoad(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	cfg := testConfig()
	cfg.IdleClose = config.Duration(10 * time.Millisecond)
	s := startServer(t, cfg, fsys, co, nil)
	const clients, calls = 4, 60
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		cl := s.dial(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < calls; k++ {
				rc, err := cl.Log(context.Background(), entries(fmt.Sprintf("cat%d", k%3), fmt.Sprintf("c%d-%03d", c, k)))
				if err != nil || rc != scribethrift.ResultCode_OK {
					t.Errorf("client %d call %d: %v %v", c, k, rc, err)
					return
				}
				time.Sleep(time.Duration(c*k%13) * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	s.stop()
	total := 0
	for cat := 0; cat < 3; cat++ {
		next := map[int]int{}
		for _, e := range scan(t, fsys, fmt.Sprintf("cat%d/0", cat)) {
			var c, k int
			if _, err := fmt.Sscanf(e.Msg, "c%d-%03d", &c, &k); err != nil {
				t.Fatalf("entry %q: %v", e.Msg, err)
			}
			if k < next[c] {
				t.Errorf("cat%d: %s after %d", cat, e.Msg, next[c])
			}
			next[c] = k + 1
			total++
		}
	}
	if total != clients*calls {
		t.Errorf("%d entries, want %d", total, clients*calls)
	}
	if got := counter(t, s.reg, "freeway_calligraphus_try_later_total"); got != 0 {
		t.Errorf("%v TRY_LATER answers", got)
	}
}

// TestFloodOfCategories: a client inventing categories cannot make more
// writers than max_categories; past it calls get TRY_LATER, and once idle
// writers end new categories are taken again.
func TestFloodOfCategories(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	cfg := testConfig()
	cfg.MaxCategories = 50
	cfg.IdleClose = config.Duration(time.Hour)
	s := startServer(t, cfg, fsys, co, nil)
	cl := s.dial(t)
	before := runtime.NumGoroutine()
	ok, refused := 0, 0
	for i := 0; i < 1000; i++ {
		rc, err := cl.Log(context.Background(), entries(fmt.Sprintf("flood-%d", i), "x"))
		if err != nil {
			t.Fatal(err)
		}
		if rc == scribethrift.ResultCode_OK {
			ok++
		} else {
			refused++
		}
	}
	grown := runtime.NumGoroutine() - before
	if ok != 50 || refused != 950 {
		t.Errorf("%d calls accepted, %d refused; want 50, 950", ok, refused)
	}
	if grown > 50+20 {
		t.Errorf("goroutines grew by %d for 1000 categories, max_categories 50", grown)
	}
	if got := counter(t, s.reg, "freeway_calligraphus_try_later_total", "reason", "max_categories"); got != 950 {
		t.Errorf("try_later max_categories %v, want 950", got)
	}
	// A call whose new categories exceed the bound is refused whole.
	var es []*scribethrift.LogEntry
	for i := 0; i < 3; i++ {
		es = append(es, &scribethrift.LogEntry{Category: fmt.Sprintf("flood-%d", i), Message: []byte("y")})
	}
	es = append(es, &scribethrift.LogEntry{Category: "one-too-many", Message: []byte("y")})
	if rc, _ := cl.Log(context.Background(), es); rc != scribethrift.ResultCode_TRY_LATER {
		t.Errorf("call with a category over the bound: %v", rc)
	}
	s.stop()
	if got := msgs(scan(t, fsys, "flood-0/0")); !slices.Equal(got, []string{"x"}) {
		t.Errorf("flood-0 holds %q", got)
	}
}

// TestFloodMemory measures what a writer costs (reported, not asserted).
func TestFloodMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	cfg := testConfig()
	s := startServerWith(t, cfg, fsys, co, nil, nil)
	cl := s.dial(t)
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	g0 := runtime.NumGoroutine()
	const n = 2000
	for i := 0; i < n; i += 100 {
		var es []*scribethrift.LogEntry
		for j := i; j < i+100; j++ {
			es = append(es, &scribethrift.LogEntry{Category: fmt.Sprintf("flood-%d", j), Message: []byte("x")})
		}
		mustLog(t, cl, es)
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	t.Logf("%d categories: %d goroutines, %.1f KiB heap and %.1f KiB stacks per writer", n, runtime.NumGoroutine()-g0,
		float64(m1.HeapAlloc-m0.HeapAlloc)/n/1024, float64(m1.StackInuse-m0.StackInuse)/n/1024)
	s.stop()
}

// TestSalvageKeepsEveryValidBlock: a crashed writer's v2 segment with a
// damaged block in the middle and a torn tail is salvaged with every
// valid block; its blocks compressed (a writer with compression s2 on a
// local disk) alike, published as they were stored, still compressed.
func TestSalvageKeepsEveryValidBlock(t *testing.T) {
	for _, comp := range []segment.Compression{segment.Uncompressed, segment.S2} {
		t.Run(comp.String(), func(t *testing.T) { testSalvageKeepsEveryValidBlock(t, comp) })
	}
}

func testSalvageKeepsEveryValidBlock(t *testing.T, comp segment.Compression) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	dir := "cat/0"
	// Messages that compress (s2 stores a block only where it shrinks).
	const filler = " 0123456789 abcdefghij 0123456789 abcdefghij 0123456789 abcdefghij"
	enc := segment.NewEncoder()
	data := enc.AppendHeader(nil)
	appendBlock := func(data []byte, b *segment.Block) []byte {
		start := len(data)
		data = segment.AppendUnstampedAs(data, b, comp)
		if err := enc.Stamp(data[start:]); err != nil {
			t.Fatal(err)
		}
		if got := segment.Compression(data[start+segment.BlockHeaderSize]); got != comp {
			t.Fatalf("block stored as %v, want %v", got, comp)
		}
		return data
	}
	var offs []int
	for _, m := range []string{"acked-1", "damaged", "acked-3", "acked-4"} {
		offs = append(offs, len(data))
		data = appendBlock(data, &segment.Block{Agent: "a/i", ArrivalMs: 1, Messages: [][]byte{[]byte(m + filler)}, Seqs: []uint64{uint64(len(offs))}})
	}
	offs = append(offs, len(data))
	data[offs[1]+segment.BlockHeaderSize+2] ^= 0xff
	torn := appendBlock(nil, &segment.Block{Messages: [][]byte{[]byte("torn-never-acked" + filler)}})
	data = append(data, torn[:len(torn)-4]...)
	name := writeCrashedSegment(t, fsys, dir, data)
	s := takeOver(t, fsys, co)
	s.stop()
	got := scan(t, fsys, dir)
	for i := range got {
		got[i].Msg = strings.TrimSuffix(got[i].Msg, filler)
	}
	if !slices.Equal(msgs(got), []string{"acked-1", "acked-3", "acked-4", "new"}) || got[0].Segment != name {
		t.Errorf("after salvage the bucket holds %q in %v", msgs(got), got)
	}
	// The valid blocks, byte for byte (stored as they were), after the
	// file header: the damaged one and the torn tail cut.
	salvaged, err := dfs.ReadFile(fsys, path.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	want := append(bytes.Clone(data[:offs[1]]), data[offs[2]:offs[4]]...)
	if !bytes.Equal(salvaged, want) {
		t.Errorf("salvaged segment of %d bytes, want the %d of its valid blocks as stored", len(salvaged), len(want))
	}
}

// A crashed writer's segment damaged at its start, its file header and
// its first block's header both (one bad sector), holds blocks after
// that may be acknowledged: its salvage sets it aside, whole, and counts
// it, rather than removing it as a segment with nothing in it.
func TestSalvageSetsAsideASegmentDamagedAtItsStart(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	dir := "cat/0"
	enc := segment.NewEncoder()
	data := enc.AppendHeader(nil)
	for _, m := range []string{"acked-1", "acked-2", "acked-3"} {
		data = enc.AppendBlock(data, &segment.Block{Agent: "a/i", ArrivalMs: 1, Messages: [][]byte{[]byte(m)}, Seqs: []uint64{1}})
	}
	for i := range segment.HeaderSizeV2 + segment.BlockHeaderSize {
		data[i] ^= 0x5a
	}
	name := writeCrashedSegment(t, fsys, dir, data)
	s := takeOver(t, fsys, co)
	if got := counter(t, s.reg, "freeway_calligraphus_segments_damaged_total"); got != 1 {
		t.Errorf("freeway_calligraphus_segments_damaged_total = %v, want 1", got)
	}
	s.stop()
	aside := path.Join(dir, "."+name+".damaged")
	kept, err := dfs.ReadFile(fsys, aside)
	if err != nil || !bytes.Equal(kept, data) {
		t.Fatalf("damaged segment not set aside whole: %d bytes of %d, %v", len(kept), len(data), err)
	}
	if err := fsys.Remove(aside); err != nil { // for scan, which wants no hidden file
		t.Fatal(err)
	}
	if got := msgs(scan(t, fsys, dir)); !slices.Equal(got, []string{"new"}) {
		t.Errorf("the bucket holds %q, want the new entry only", got)
	}
}
