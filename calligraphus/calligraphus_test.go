package calligraphus

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

func TestEntriesLandInTheirBuckets(t *testing.T) {
	fsKinds(t, func(t *testing.T, fsys *dfstest.Faulty) {
		_, co := inprocCoord(t)
		router := NewRouter(3, map[string]Route{"access": userRoute(t, "access", 4)})
		s := startServer(t, testConfig(), fsys, co, router)
		cl := s.dial(t)

		want := map[string][]string{} // bucket dir → messages in send order
		for call := 0; call < 20; call++ {
			var es []*scribethrift.LogEntry
			for j := 0; j < 10; j++ {
				i := call*10 + j
				m := userMsg(fmt.Sprintf("user-%d", i%37), i)
				es = append(es, &scribethrift.LogEntry{Category: "access", Message: []byte(m)})
				b := BucketOf(apps.EncodeKey([]string{fmt.Sprintf("user-%d", i%37)}), 4)
				want[layout.BucketDir("access", b)] = append(want[layout.BucketDir("access", b)], m)
				if j%3 == 0 {
					o := fmt.Sprintf("other-%d", i)
					es = append(es, &scribethrift.LogEntry{Category: "other", Message: []byte(o)})
					want["other/0"] = append(want["other/0"], o)
				}
			}
			mustLog(t, cl, es)
		}
		if len(want) < 4 { // 3 or 4 access buckets, and other/0
			t.Fatalf("37 users spread over only %d access buckets", len(want)-1)
		}
		s.stop()

		for dir, w := range want {
			if got := msgs(scan(t, fsys, dir)); !slices.Equal(got, w) {
				t.Errorf("%s holds %d entries %q..., want %d %q...", dir, len(got), head(got), len(w), head(w))
			}
			if got := msgs(tail(t, fsys, dir, len(w))); !slices.Equal(got, w) {
				t.Errorf("ptail of %s reads %q..., want %q...", dir, head(got), head(w))
			}
		}
		for b := 1; b < 3; b++ {
			if got := published(t, fsys, layout.BucketDir("other", b), false); len(got) != 0 {
				t.Errorf("category without a route wrote to bucket %d: %v", b, got)
			}
		}
		total := 0
		for _, w := range want {
			total += len(w)
		}
		if got := counter(t, s.reg, "freeway_calligraphus_entries_received_total"); int(got) != total {
			t.Errorf("entries_received %v, want %d", got, total)
		}
		if got := counter(t, s.reg, "freeway_calligraphus_entries_written_total"); int(got) != total {
			t.Errorf("entries_written %v, want %d", got, total)
		}
		if got := counter(t, s.reg, "freeway_calligraphus_pending_bytes"); got != 0 {
			t.Errorf("pending_bytes %v after stop, want 0", got)
		}
	})
}

func TestUnparseableKeyGoesToBucketZero(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	router := NewRouter(1, map[string]Route{"access": userRoute(t, "access", 4)})
	s := startServer(t, testConfig(), fsys, co, router)
	cl := s.dial(t)
	mustLog(t, cl, entries("access", "garbage 1", `{"user": "a"`, "garbage 2"))
	s.stop()
	if got := msgs(scan(t, fsys, "access/0")); !slices.Equal(got, []string{"garbage 1", `{"user": "a"`, "garbage 2"}) {
		t.Errorf("bucket 0 holds %q", got)
	}
	if got := counter(t, s.reg, "freeway_calligraphus_entries_unroutable_total", "category", "access"); got != 3 {
		t.Errorf("unroutable %v, want 3", got)
	}
}

func TestLogBatchCarriesAgentAndSeqs(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	router := NewRouter(1, map[string]Route{"access": userRoute(t, "access", 4)})
	s := startServer(t, testConfig(), fsys, co, router)
	cl := s.dial(t)
	ctx := context.Background()

	var batch []*scribethrift.LogEntry
	wantSeq := map[string]uint64{}
	for i := 0; i < 40; i++ {
		m := userMsg(fmt.Sprintf("u%d", i), i)
		if i == 7 {
			batch = append(batch, &scribethrift.LogEntry{Category: "", Message: []byte("dropped")})
			continue
		}
		batch = append(batch, &scribethrift.LogEntry{Category: "access", Message: []byte(m)})
		wantSeq[m] = uint64(1000 + i)
	}
	rc, err := cl.LogBatch(ctx, &scribethrift.Batch{AgentID: "agent-7", FirstSeq: 1000, Messages: batch})
	if err != nil || rc != scribethrift.ResultCode_OK {
		t.Fatalf("logbatch: %v %v", rc, err)
	}
	mustLog(t, cl, entries("access", "stock client line"))
	// A batch without a sequence is taken as a stock client's (refusing
	// it would make its sender retry forever).
	rc, err = cl.LogBatch(ctx, &scribethrift.Batch{AgentID: "agent-7", FirstSeq: 0, Messages: entries("access", "no seq")})
	if err != nil || rc != scribethrift.ResultCode_OK {
		t.Fatalf("logbatch without a sequence: %v %v, want OK", rc, err)
	}
	s.stop()

	seen := 0
	for b := 0; b < 4; b++ {
		var prev uint64
		for _, e := range scan(t, fsys, layout.BucketDir("access", b)) {
			if e.Msg == "stock client line" {
				if e.Agent != "" || e.Seq != 0 || b != 0 {
					t.Errorf("stock entry in bucket %d agent %q seq %d", b, e.Agent, e.Seq)
				}
				continue
			}
			if e.Msg == "no seq" {
				if e.Agent != "" || e.Seq != 0 {
					t.Errorf("unsequenced entry kept agent %q seq %d", e.Agent, e.Seq)
				}
				continue
			}
			seen++
			if e.Agent != "agent-7" || e.Seq != wantSeq[e.Msg] {
				t.Errorf("bucket %d: %s: agent %q seq %d, want agent-7 seq %d", b, e.Msg, e.Agent, e.Seq, wantSeq[e.Msg])
			}
			if e.Seq <= prev {
				t.Errorf("bucket %d: seq %d after %d", b, e.Seq, prev)
			}
			prev = e.Seq
		}
	}
	if seen != 39 {
		t.Errorf("found %d batch entries, want 39", seen)
	}
}

// TestAckMeansDurable checks what an OK promises at the moment it is
// given: on a local disk the bytes were synced after they were written;
// on an HDFS-like file system they are in a published segment.
func TestAckMeansDurable(t *testing.T) {
	fsKinds(t, func(t *testing.T, fsys *dfstest.Faulty) {
		var mu sync.Mutex
		var synced, unsynced int // writes followed by a sync, and not
		fsys.SetHook(func(c dfstest.Call) error {
			mu.Lock()
			defer mu.Unlock()
			switch c.Op {
			case dfstest.OpWrite:
				unsynced++
			case dfstest.OpSync:
				synced += unsynced
				unsynced = 0
			}
			return nil
		})
		_, co := inprocCoord(t)
		s := startServer(t, testConfig(), fsys, co, nil)
		cl := s.dial(t)
		var want []string
		for i := 0; i < 30; i++ {
			m := fmt.Sprintf("m%02d", i)
			mustLog(t, cl, entries("cat", m))
			want = append(want, m)
			if fsys.SyncDurable() {
				mu.Lock()
				u := unsynced
				mu.Unlock()
				if u != 0 {
					t.Fatalf("OK for %s with %d writes not synced", m, u)
				}
			} else if got := msgs(scanRunning(t, fsys, "cat/0")); !slices.Equal(got, want) {
				t.Fatalf("after OK for %s the published segments hold %q", m, got)
			}
		}
		s.stop()
		if got := msgs(scan(t, fsys, "cat/0")); !slices.Equal(got, want) {
			t.Fatalf("after stop: %q", got)
		}
	})
}

func TestGroupCommitManyClients(t *testing.T) {
	fsKinds(t, func(t *testing.T, fsys *dfstest.Faulty) {
		_, co := inprocCoord(t)
		cfg := testConfig()
		cfg.SegmentMaxBytes = 4 << 10
		s := startServer(t, cfg, fsys, co, nil)
		const clients, calls, per = 12, 25, 4
		var wg sync.WaitGroup
		for c := 0; c < clients; c++ {
			cl := s.dial(t)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; k < calls; k++ {
					var ms []string
					for j := 0; j < per; j++ {
						ms = append(ms, fmt.Sprintf("c%02d-%03d", c, k*per+j))
					}
					rc, err := cl.Log(context.Background(), entries("hot", ms...))
					if err != nil || rc != scribethrift.ResultCode_OK {
						t.Errorf("client %d call %d: %v %v", c, k, rc, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		s.stop()
		got := scan(t, fsys, "hot/0")
		if len(got) != clients*calls*per {
			t.Fatalf("%d entries, want %d", len(got), clients*calls*per)
		}
		next := map[string]int{}
		for _, e := range got {
			var c, n int
			if _, err := fmt.Sscanf(e.Msg, "c%02d-%03d", &c, &n); err != nil {
				t.Fatalf("entry %q: %v", e.Msg, err)
			}
			key := fmt.Sprint(c)
			if n != next[key] {
				t.Fatalf("client %d: entry %d after %d (lost, repeated or reordered)", c, n, next[key]-1)
			}
			next[key]++
		}
		if got := len(published(t, fsys, "hot/0", false)); got < 2 {
			t.Errorf("%d segments, want rolls at 4KiB", got)
		}
		t.Logf("%d calls committed in %v commits", clients*calls, counter(t, s.reg, "freeway_calligraphus_commit_seconds"))
	})
}

func TestSalvageCrashedSegment(t *testing.T) {
	fsKinds(t, func(t *testing.T, fsys *dfstest.Faulty) {
		_, co := inprocCoord(t)
		dir := "cat/0"
		blocks := []*segment.Block{
			{Agent: "a1", ArrivalMs: 1, Messages: [][]byte{[]byte("acked-1"), []byte("acked-2")}, Seqs: []uint64{1, 2}},
			{ArrivalMs: 2, Messages: [][]byte{[]byte("acked-3")}},
		}
		if err := dfs.WriteFile(fsys, path.Join(dir, layout.SegmentName(5, 1)), segment.AppendBlock([]byte(segment.Magic), &segment.Block{Messages: [][]byte{[]byte("old")}})); err != nil {
			t.Fatal(err)
		}
		crashed := writeCrashed(t, fsys, dir, 5, 2, blocks, true)
		// An empty temporary segment (the writer died before the first
		// block) and a stray hidden file.
		writeCrashed(t, fsys, "cat/0", 5, 3, nil, false)
		if err := dfs.WriteFile(fsys, "cat/0/_stray", []byte("x")); err != nil {
			t.Fatal(err)
		}

		s := startServer(t, testConfig(), fsys, co, nil)
		cl := s.dial(t)
		mustLog(t, cl, entries("cat", "new"))
		s.stop()

		if _, err := fsys.Stat("cat/0/_stray"); err != nil {
			t.Errorf("recovery touched an unrelated hidden file: %v", err)
		}
		if err := fsys.Remove("cat/0/_stray"); err != nil {
			t.Fatal(err)
		}
		names := published(t, fsys, dir, true)
		got := msgs(scan(t, fsys, dir))
		if fsys.SyncDurable() {
			if !slices.Equal(got, []string{"old", "acked-1", "acked-2", "acked-3", "new"}) {
				t.Errorf("after salvage the bucket holds %q", got)
			}
			if len(names) != 3 || names[1] != crashed {
				t.Errorf("segments %v, want the salvaged one as %s", names, crashed)
			}
			if got := counter(t, s.reg, "freeway_calligraphus_segments_salvaged_total"); got != 1 {
				t.Errorf("segments_salvaged %v, want 1", got)
			}
		} else if !slices.Equal(got, []string{"old", "new"}) {
			t.Errorf("on an HDFS-like dfs nothing unpublished is acknowledged; the bucket holds %q", got)
		}
		infos, err := fsys.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, fi := range infos {
			if strings.HasSuffix(fi.Name(), ".inprogress") {
				t.Errorf("temporary segment %s left over", fi.Name())
			}
		}
		e, _, _ := layout.ParseSegmentName(names[len(names)-1])
		if e <= 5 {
			t.Errorf("new segment %s has epoch %d, not above 5", names[len(names)-1], e)
		}
	})
}

func TestEpochAboveExistingSegments(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	high := int64(1) << 62 // above the in-process coordinator's epochs
	if err := dfs.WriteFile(fsys, path.Join("cat/0", layout.SegmentName(high, 9)), []byte(segment.Magic)); err != nil {
		t.Fatal(err)
	}
	writeCrashed(t, fsys, "cat/0", high+5, 1, nil, false)
	s := startServer(t, testConfig(), fsys, co, nil)
	cl := s.dial(t)
	mustLog(t, cl, entries("cat", "x"))
	s.stop()
	names := published(t, fsys, "cat/0", false)
	if len(names) != 2 {
		t.Fatalf("segments %v", names)
	}
	if e, _, _ := layout.ParseSegmentName(names[1]); e <= high+5 {
		t.Errorf("new segment %s has epoch %d, not above %d", names[1], e, high+5)
	}
}

func TestMaxPendingBytes(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	cfg := testConfig()
	cfg.MaxCallBytes = 64 << 10
	cfg.MaxPendingBytes = 64 << 10
	s := startServer(t, cfg, fsys, co, nil)
	g := newGate(t, dfstest.OpSync)
	fsys.SetHook(g.hook)

	const n = 12
	results := make([]chan result, n)
	payload := strings.Repeat("p", 10<<10)
	results[0] = logAsync(s.dial(t), entries("cat", "r00-"+payload))
	<-g.blocked
	for i := 1; i < n; i++ {
		results[i] = logAsync(s.dial(t), entries("cat", fmt.Sprintf("r%02d-%s", i, payload)))
	}
	testkit.WaitFor(t, "a TRY_LATER while the bucket is over budget", func() bool {
		return counter(t, s.reg, "freeway_calligraphus_try_later_total", "reason", "busy") > 0
	})
	g.open()
	ok := map[string]bool{}
	refused := 0
	for i, ch := range results {
		r := <-ch
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.rc == scribethrift.ResultCode_OK {
			ok[fmt.Sprintf("r%02d", i)] = true
		} else {
			refused++
		}
	}
	if refused == 0 || len(ok) < 5 {
		t.Errorf("%d accepted, %d refused: want the budget (64KiB) to take about 6 of 10KiB", len(ok), refused)
	}
	if got := counter(t, s.reg, "freeway_calligraphus_try_later_total", "reason", "busy"); int(got) != refused {
		t.Errorf("try_later busy %v, want %d", got, refused)
	}
	s.stop()
	got := scan(t, fsys, "cat/0")
	if len(got) != len(ok) {
		t.Errorf("bucket holds %d entries, want the %d accepted", len(got), len(ok))
	}
	for _, e := range got {
		if !ok[e.Msg[:3]] {
			t.Errorf("refused entry %s was written", e.Msg[:3])
		}
	}
	if got := counter(t, s.reg, "freeway_calligraphus_pending_bytes"); got != 0 {
		t.Errorf("pending_bytes %v after stop", got)
	}
}

func TestRollBySize(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	cfg := testConfig()
	cfg.SegmentMaxBytes = 1 << 10
	cfg.Compression = "none" // the segments' sizes are the bytes sent
	s := startServer(t, cfg, fsys, co, nil)
	cl := s.dial(t)
	var want []string
	for i := 0; i < 20; i++ {
		m := fmt.Sprintf("%02d-%s", i, strings.Repeat("s", 200))
		want = append(want, m)
		mustLog(t, cl, entries("cat", m))
	}
	// Rolled while running (max age is an hour).
	testkit.WaitFor(t, "segments rolled by size", func() bool { return len(published(t, fsys, "cat/0", true)) >= 3 })
	for _, name := range published(t, fsys, "cat/0", true) {
		fi, err := fsys.Stat(path.Join("cat/0", name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() < 1<<10 {
			t.Errorf("segment %s published at %d bytes, below max_bytes", name, fi.Size())
		}
	}
	s.stop()
	if got := msgs(tail(t, fsys, "cat/0", len(want))); !slices.Equal(got, want) {
		t.Errorf("read back %q", head(got))
	}
}

func TestRollByAge(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	cfg := testConfig()
	cfg.SegmentMaxAge = config.Duration(20e6) // 20ms
	s := startServer(t, cfg, fsys, co, nil)
	cl := s.dial(t)
	for round := 1; round <= 3; round++ {
		m := fmt.Sprintf("round-%d", round)
		mustLog(t, cl, entries("cat", m))
		testkit.WaitFor(t, m+" published by age", func() bool { return len(published(t, fsys, "cat/0", true)) == round })
	}
	if got := msgs(tail(t, fsys, "cat/0", 3)); !slices.Equal(got, []string{"round-1", "round-2", "round-3"}) {
		t.Errorf("read %q", got)
	}
	s.stop()
}

func TestConfigValidate(t *testing.T) {
	if def := DefaultConfig(); def.Validate() != nil {
		err := def.Validate()
		t.Fatalf("defaults: %v", err)
	}
	for _, tc := range []struct {
		key string
		mod func(*Config)
	}{
		{"calligraphus.listen", func(c *Config) { c.Listen = "" }},
		{"calligraphus.segment_max_age", func(c *Config) { c.SegmentMaxAge = config.Duration(5 * time.Millisecond) }},
		{"calligraphus.segment_max_age", func(c *Config) { c.SegmentMaxAge = -1 }},
		{"calligraphus.segment_max_bytes", func(c *Config) { c.SegmentMaxBytes = 100 }},
		{"calligraphus.linger", func(c *Config) { c.Linger = -1 }},
		{"calligraphus.max_pending_bytes", func(c *Config) { c.MaxPendingBytes = c.MaxCallBytes - 1 }},
		{"calligraphus.max_call_bytes", func(c *Config) { c.MaxCallBytes = 512 }},
		{"calligraphus.max_call_bytes", func(c *Config) { c.MaxCallBytes = 257 << 20; c.MaxPendingBytes = 1 << 30 }},
		{"calligraphus.max_connections", func(c *Config) { c.MaxConnections = 0 }},
		{"calligraphus.idle_close", func(c *Config) { c.IdleClose = 0 }},
		{"calligraphus.max_categories", func(c *Config) { c.MaxCategories = 0 }},
		{"calligraphus.idle_timeout", func(c *Config) { c.IdleTimeout = 0 }},
		{"calligraphus.read_timeout", func(c *Config) { c.ReadTimeout = -1 }},
		{"calligraphus.max_frame_bytes", func(c *Config) { v := config.ByteSize(1 << 20); c.OldMaxFrameBytes = &v }},
		{"calligraphus.max_message_bytes", func(c *Config) { v := config.ByteSize(1 << 20); c.OldMaxMessageBytes = &v }},
	} {
		c := DefaultConfig()
		tc.mod(&c)
		// Relative to the writer's section; the wiring places it.
		err := c.Validate()
		var fe *config.FieldError
		if err == nil || !errors.As(err, &fe) || !strings.HasPrefix(err.Error(), strings.TrimPrefix(tc.key, "calligraphus.")+":") {
			t.Errorf("%s: %v", tc.key, err)
		}
		if err := config.Under("$.calligraphus", err); !errors.As(err, &fe) || !strings.HasPrefix(err.Error(), tc.key+":") {
			t.Errorf("%s placed: %v", tc.key, err)
		}
	}
	if _, err := New(Config{}, Deps{}); err == nil || !strings.Contains(err.Error(), "listen") {
		t.Errorf("New with an empty config: %v", err)
	}
	if _, err := New(testConfig(), Deps{}); err == nil {
		t.Errorf("New without a dfs and a coordinator: no error")
	}
	// Without a logger or a router: discarded logs, everything to bucket 0.
	_, co := inprocCoord(t)
	c, err := New(testConfig(), Deps{FS: newLocal(t), Coord: co})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Run(ctx); err != nil {
		t.Errorf("run: %v", err)
	}
}

func TestGetCounters(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	s := startServer(t, testConfig(), fsys, co, nil)
	cl := s.dial(t)
	mustLog(t, cl, entries("cat", "a", "b", "c"))
	mustLog(t, cl, []*scribethrift.LogEntry{{Category: "", Message: []byte("x")}, {Category: "cat", Message: []byte("d")}})
	counters, err := cl.GetCounters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if counters["entries_received"] != 4 || counters["entries_written"] != 4 || counters["entries_rejected"] != 1 {
		t.Errorf("counters %v", counters)
	}
	if name, _ := cl.GetName(context.Background()); name != "freeway-calligraphus" {
		t.Errorf("name %q", name)
	}
	if v, _ := cl.GetVersion(context.Background()); v != "test" {
		t.Errorf("version %q", v)
	}
}

// TestSegmentAgeByDFS: segment_max_age 0 (the default) is short on a
// disk where an fsync acknowledges (nothing to wait for) and HDFS's
// second where only a close does; a configured age is kept.
func TestSegmentAgeByDFS(t *testing.T) {
	if DefaultConfig().SegmentMaxAge != 0 {
		t.Fatalf("default segment_max_age %v, want 0 (chosen by the dfs)", DefaultConfig().SegmentMaxAge)
	}
	fsKinds(t, func(t *testing.T, fsys *dfstest.Faulty) {
		_, co := inprocCoord(t)
		want := LocalSegmentMaxAge
		if !fsys.SyncDurable() {
			want = ClosedSegmentMaxAge
		}
		cfg := testConfig()
		cfg.SegmentMaxAge = 0
		s := startServer(t, cfg, fsys, co, nil)
		if got := s.c.cfg.SegmentMaxAge.D(); got != want {
			t.Errorf("segment_max_age 0 on this dfs: %v, want %v", got, want)
		}
		if got := counter(t, s.reg, "freeway_calligraphus_segment_max_age_seconds"); got != want.Seconds() {
			t.Errorf("freeway_calligraphus_segment_max_age_seconds %v, want %v", got, want.Seconds())
		}
		// Entries are published by age, without a roll of any other kind.
		cl := s.dial(t)
		mustLog(t, cl, entries("cat", "aged"))
		testkit.WaitFor(t, "the segment published by age", func() bool { return len(published(t, fsys, "cat/0", true)) == 1 })
		cfg.SegmentMaxAge = config.Duration(time.Hour)
		if s := startServer(t, cfg, fsys, co, nil); s.c.cfg.SegmentMaxAge.D() != time.Hour {
			t.Errorf("a configured segment_max_age became %v", s.c.cfg.SegmentMaxAge)
		}
	})
	if LocalSegmentMaxAge >= ClosedSegmentMaxAge {
		t.Errorf("the local disk's segment age %v is not the shorter", LocalSegmentMaxAge)
	}
}

// TestAgeCountsFromTheFirstBatch: a segment's age counts from when its
// first batch was taken, not from when the batch's write returned. The
// writer's clock is moved on by more than the age (an hour) while the
// first write's sync runs: the segment is then due as soon as the write
// returns, where an age counted from the end of the write would hold it
// for another hour.
func TestAgeCountsFromTheFirstBatch(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	cfg := testConfig()
	cfg.SegmentMaxAge = config.Duration(time.Hour)
	cfg.IdleClose = config.Duration(time.Hour) // nor published for idleness
	var skew atomic.Int64
	fsys.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpSync && strings.HasSuffix(c.Name, layout.TempSuffix) {
			skew.Store(int64(time.Hour + time.Second)) // the first write took over an hour
		}
		return nil
	})
	s := startServerWith(t, cfg, fsys, co, nil, func(c *Calligraphus) {
		c.now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	})
	cl := s.dial(t)
	mustLog(t, cl, entries("cat", "first"))
	testkit.WaitFor(t, "the segment to be published once its age has passed", func() bool { return len(published(t, fsys, "cat/0", true)) == 1 })
	if got := msgs(tail(t, fsys, "cat/0", 1)); !slices.Equal(got, []string{"first"}) {
		t.Errorf("read %q", got)
	}
	s.stop()
}
