package freeway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/backends"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// oddCategories are categories a stock Scribe server accepts that Freeway
// once dropped: a slash, a space, hidden-looking names, and names too long
// for a dfs path component (300 bytes, 10 KB).
func oddCategories() []string {
	return []string{"web/access", "a b", "_internal", ".x", strings.Repeat("c", 300), strings.Repeat("web/", 2500)}
}

// logTo sends messages of one category to a Scribe port as a stock client,
// retrying TRY_LATER.
func logTo(t *testing.T, addr, category string, msgs [][]byte, batch int) {
	t.Helper()
	c, err := scribeapi.Dial(addr, thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < len(msgs); i += batch {
		var entries []*scribethrift.LogEntry
		for _, m := range msgs[i:min(i+batch, len(msgs))] {
			entries = append(entries, &scribethrift.LogEntry{Category: category, Message: m})
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			rc, err := c.Log(context.Background(), entries)
			if err != nil {
				t.Fatal(err)
			}
			if rc == scribethrift.ResultCode_OK {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("log to %.30q: TRY_LATER for a minute", category)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// categoryMessages reads every entry of a category's published segments.
func categoryMessages(t *testing.T, fsys dfs.FS, category string, buckets int) []string {
	t.Helper()
	var out []string
	for b := 0; b < buckets; b++ {
		dir := layout.BucketDir(category, b)
		infos, err := fsys.ReadDir(dir)
		if err != nil {
			continue // not created yet
		}
		for _, fi := range infos {
			if _, _, ok := layout.ParseSegmentName(fi.Name()); !ok {
				continue
			}
			data, err := dfs.ReadFile(fsys, path.Join(dir, fi.Name()))
			if err != nil {
				t.Fatal(err)
			}
			r, err := segment.NewReader(bytes.NewReader(data), 0)
			if err != nil {
				t.Fatalf("%s/%s: %v", dir, fi.Name(), err)
			}
			var blk segment.Block
			for {
				err := r.Next(&blk)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("%s/%s: %v", dir, fi.Name(), err)
				}
				for _, m := range blk.Messages {
					out = append(out, string(m))
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// checkCategories waits until the dfs lists exactly the categories of
// want, with their exact names, each holding exactly its messages.
func checkCategories(t *testing.T, fsys dfs.FS, want map[string][]string, buckets func(string) int) {
	t.Helper()
	var wantNames []string
	for c, ms := range want {
		wantNames = append(wantNames, c)
		slices.Sort(ms)
	}
	slices.Sort(wantNames)
	testkit.Eventually(t, "every category in the dfs", func() error {
		var problem string
		listed, unreadable, err := layout.Categories(fsys)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, c := range listed {
			names = append(names, c.Name)
		}
		slices.Sort(names)
		if !slices.Equal(names, wantNames) || len(unreadable) > 0 {
			problem = fmt.Sprintf("the dfs lists %.60q (unreadable %q), want %.60q", names, unreadable, wantNames)
		}
		for _, c := range wantNames {
			if got := categoryMessages(t, fsys, c, buckets(c)); problem == "" && !slices.Equal(got, want[c]) {
				problem = fmt.Sprintf("category %.30q (%d bytes) holds %d entries, want %d", c, len(c), len(got), len(want[c]))
			}
		}
		if problem != "" {
			return errors.New(problem)
		}
		return nil
	})
}

func orderLines(os []order) [][]byte {
	out := make([][]byte, len(os))
	for i, o := range os {
		out[i] = o.json()
	}
	return out
}

// oddTraffic sends orders to web/access and a few lines to every other
// odd category, and returns what each category must hold.
func oddTraffic(t *testing.T, addr string, os []order) map[string][]string {
	t.Helper()
	want := map[string][]string{}
	logTo(t, addr, "web/access", orderLines(os), 100)
	for _, o := range os {
		want["web/access"] = append(want["web/access"], string(o.json()))
	}
	for i, c := range oddCategories()[1:] {
		var msgs [][]byte
		for j := 0; j < 20; j++ {
			m := fmt.Sprintf("category %d line %d", i, j)
			msgs = append(msgs, []byte(m))
			want[c] = append(want[c], m)
		}
		logTo(t, addr, c, msgs, 7)
	}
	return want
}

// TestOddCategoriesEndToEnd: entries of categories with a slash, a space,
// a leading "_" or ".", 300 bytes and 10 KB, logged to the agent as a
// stock client would, are written, listed back with their exact names,
// and an app declared with category web/access counts its entries
// exactly.
func TestOddCategoriesEndToEnd(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Apps[0].Category = "web/access"
	cfg.Categories = map[string]CategoryConfig{"web/access": {Buckets: 2}, strings.Repeat("c", 300): {Buckets: 2}}
	r := start(t, cfg)
	defer r.stop(t)
	os := orders(1500, 0, base)
	want := oddTraffic(t, r.p.Agent.Addr(), os)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(os))

	cfg.Resolve()
	fsys, err := backends.OpenDFS(cfg.DFS)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	checkCategories(t, fsys, want, cfg.BucketsOf)
}

// TestOddCategoriesOnRealEngines is TestOddCategoriesEndToEnd split into
// processes on real ZooKeeper, HDFS and HBase: the names are valid HDFS
// paths and ZooKeeper leases, and Puma's rows for web/access are its own.
func TestOddCategoriesOnRealEngines(t *testing.T) {
	zk, hdfsAddr, hbase := engines(t)
	suffix := randomSuffix()
	cfg := testConfig(t.TempDir())
	cfg.DFS = fmt.Sprintf("hdfs://%s/freeway-test/cats-%s", hdfsAddr, suffix)
	cfg.Store = fmt.Sprintf("hbase://%s/cats_%s_", hbase, suffix)
	cfg.Coord = fmt.Sprintf("zk://%s/freeway-test/cats-%s", zk, suffix)
	cfg.Calligraphus.SegmentMaxAge = config.Duration(300 * time.Millisecond)
	cfg.Calligraphus.ID = "writer-1"
	cfg.Puma.ID = "puma-1"
	cfg.Puma.CheckpointInterval = config.Duration(500 * time.Millisecond)
	cfg.Apps[0].Category = "web/access"
	cfg.Categories = map[string]CategoryConfig{"web/access": {Buckets: 2}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeTree(t, cfg.DFS) })

	writer := startTarget(t, cfg, Calligraphus)
	defer writer.stop(t)
	pm := startTarget(t, cfg, Puma)
	defer pm.stop(t)
	srv := startTarget(t, cfg, Serving) // answers from HBase
	defer srv.stop(t)

	os := orders(1200, 0, base)
	want := oddTraffic(t, writer.p.Calligraphus.Addr(), os)
	waitTotals(t, srv.p.Serving.Addr(), base, base+180, expected(os))

	fsys, err := backends.OpenDFS(cfg.DFS)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	checkCategories(t, fsys, want, cfg.BucketsOf)

	// The leases are named after the encoded categories, in ZooKeeper.
	co, err := backends.NewCoords(slog.New(slog.DiscardHandler)).Open(cfg.Coord)
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	ctx := context.Background()
	held := 0
	for _, c := range oddCategories() {
		for b := 0; b < cfg.BucketsOf(c); b++ {
			_, err := fsys.Stat(layout.BucketDir(c, b))
			written := err == nil
			owner, _, err := co.Holder(ctx, layout.WriterLease(c, b))
			if err != nil || written != (owner == "writer-1") {
				t.Errorf("writer lease %.40q: owner %q, %v; bucket written: %v", layout.WriterLease(c, b), owner, err, written)
			}
			if owner != "" {
				held++
			}
		}
	}
	if held < len(oddCategories()) {
		t.Errorf("%d writer leases held, want one at least per category", held)
	}
	for b := 0; b < 2; b++ {
		if owner, _, err := co.Holder(ctx, layout.ShardLease("web/access", b)); err != nil || owner != "puma-1" {
			t.Errorf("shard lease %s: owner %q, %v", layout.ShardLease("web/access", b), owner, err)
		}
	}
	if owner, _, _ := co.Holder(ctx, "calligraphus/web/access/0"); owner != "" {
		t.Errorf("a lease under the raw category name is held by %q", owner)
	}

	// Puma's commit rows are under the encoded category.
	st, err := backends.OpenStore(cfg.Store, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rows := 0
	if err := st.Scan(ctx, cfg.Puma.Table, "c/", store.PrefixEnd("c/"), store.Latest, func(row string, _ []store.Cell) error {
		rows++
		if row != layout.PumaCommitRow("web/access", 0) && row != layout.PumaCommitRow("web/access", 1) {
			t.Errorf("unexpected commit row %q", row)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if rows != 2 {
		t.Errorf("%d commit rows, want 2", rows)
	}
}

// TestDamagedBlocksCountedExactly: Puma's totals over a segment with a
// damaged block body and a damaged block header are exactly those of
// every other block, of that segment and of the next.
func TestDamagedBlocksCountedExactly(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Buckets = 1
	cfg.Calligraphus.SegmentMaxAge = config.Duration(time.Hour) // one segment per run
	var calls [][]order
	for run := 0; run < 2; run++ {
		w := startTarget(t, cfg, Calligraphus)
		for k := 0; k < 6; k++ {
			os := orders(40, 40*len(calls), base)
			send(t, w.p.Calligraphus.Addr(), os, len(os)) // one call: one block
			calls = append(calls, os)
		}
		w.stop(t)
	}
	resolved := cfg
	resolved.Resolve()
	fsys, err := backends.OpenDFS(resolved.DFS)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	dir := layout.BucketDir("orders", 0)
	infos, err := layout.Published(fsys, dir, "")
	if err != nil || len(infos) != 2 {
		t.Fatalf("bucket holds %d segments, want 2: %v", len(infos), err)
	}
	first := path.Join(dir, infos[0].Name())
	data, err := dfs.ReadFile(fsys, first)
	if err != nil {
		t.Fatal(err)
	}
	r, err := segment.NewReader(bytes.NewReader(data), 0)
	if err != nil {
		t.Fatal(err)
	}
	offs := []int64{r.Offset()}
	var blk segment.Block
	for r.Next(&blk) == nil {
		offs = append(offs, r.Offset())
	}
	if len(offs) != 7 {
		t.Fatalf("first segment has %d blocks, want 6", len(offs)-1)
	}
	data[offs[1]+segment.BlockHeaderSize+100] ^= 0x08 // block 1's body
	data[offs[4]+17] ^= 0x40                          // block 4's header
	if err := fsys.Remove(first); err != nil {
		t.Fatal(err)
	}
	if err := dfs.WriteFile(fsys, first, data); err != nil {
		t.Fatal(err)
	}

	var kept []order
	for k, os := range calls {
		if k != 1 && k != 4 {
			kept = append(kept, os...)
		}
	}
	all := start(t, cfg)
	defer all.stop(t)
	waitTotals(t, all.p.Serving.Addr(), base, base+180, expected(kept))
	mfs, err := all.p.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	counted := map[string]float64{}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "freeway_ptail_damaged_") {
			counted[mf.GetName()] = mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	if counted["freeway_ptail_damaged_blocks_total"] != 2 || counted["freeway_ptail_damaged_entries_total"] != 40 {
		t.Errorf("damage counted %v, want 2 blocks, 40 entries (the damaged body's)", counted)
	}
}
