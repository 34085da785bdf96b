package freeway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/copier"
	"github.com/freeway-dev/freeway/internal/backends"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// segmentsIn lists the published segments of every bucket of category.
func segmentsIn(t *testing.T, fsys dfs.FS, category string) []string {
	t.Helper()
	buckets, err := layout.Buckets(fsys, layout.CategoryDir(category))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, b := range buckets {
		infos, err := layout.Published(fsys, layout.BucketDir(category, b), "")
		if err != nil {
			t.Fatal(err)
		}
		for _, fi := range infos {
			out = append(out, layout.BucketDir(category, b)+"/"+fi.Name())
		}
	}
	return out
}

// partial reports whether an answer of the query API says it lacks data.
func partial(t *testing.T, base string) bool {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://%s/api/v1/query?app=orders&from=%d&to=%d", base, base0, base0+180))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var a struct {
		Partial bool `json:"partial"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		t.Fatalf("%q: %v", body, err)
	}
	return a.Partial
}

const base0 = base

// metricSum sums a metric of the process over its labels.
func metricSum(t *testing.T, r *running, name string) float64 {
	t.Helper()
	mfs, err := r.p.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// TestRetentionEndToEnd: the whole pipeline with dfs_retention 1s and a
// copier: segments go once Puma has committed past them and the copier
// has copied them, each bucket keeps the segment its shard committed in,
// and a restart recovers exactly from the checkpoints, whole.
func TestRetentionEndToEnd(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.DFSRetention = config.Duration(time.Second)
	cfg.Copier.Destination = "file://" + filepath.ToSlash(filepath.Join(dir, "warehouse"))
	cfg.Copier.Interval = config.Duration(50 * time.Millisecond)
	r := start(t, cfg)
	var sent []order
	for round := range 5 {
		batch := orders(300, round*300, base)
		send(t, r.p.Agent.Addr(), batch, 50)
		sent = append(sent, batch...)
		time.Sleep(100 * time.Millisecond) // a few segments per bucket
	}
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(sent))

	src, err := backends.OpenDFS("file://" + filepath.ToSlash(filepath.Join(dir, "dfs")))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := backends.OpenDFS(cfg.Copier.Destination)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	deadline := time.Now().Add(60 * time.Second)
	for len(segmentsIn(t, src, "orders")) > cfg.Buckets {
		if time.Now().After(deadline) {
			t.Fatalf("retention left %q", segmentsIn(t, src, "orders"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	deleted := metricSum(t, r, "freeway_retention_segments_deleted_total")
	if deleted == 0 {
		t.Fatal("nothing was deleted")
	}
	// Everything deleted had been copied: the warehouse has every segment.
	copied := segmentsIn(t, dst, "orders")
	if len(copied) < int(deleted)+len(segmentsIn(t, src, "orders"))-cfg.Buckets {
		t.Errorf("the warehouse has %d segments; %v were deleted", len(copied), deleted)
	}
	for _, s := range segmentsIn(t, src, "orders") {
		if _, ok, err := layout.ReadRetentionMark(src, s[:strings.LastIndex(s, "/")]); err != nil || !ok {
			t.Errorf("bucket of %s has no retention mark (%v)", s, err)
		}
	}
	// /api/v1/status shows the copier: active, with its lag per category.
	resp, err := http.Get("http://" + r.p.Serving.Addr() + "/api/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var status struct {
		Components []string `json:"components"`
		Copier     *struct {
			Active     bool `json:"active"`
			Categories []struct {
				Category string `json:"category"`
				Segments *int   `json:"segments"`
			} `json:"categories"`
		} `json:"copier"`
	}
	if err := json.Unmarshal(body, &status); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	if c := status.Copier; c == nil || !c.Active || len(c.Categories) != 1 || c.Categories[0].Category != "orders" || c.Categories[0].Segments == nil {
		t.Errorf("status without the copier's lag: %s", body)
	}
	// Every component the process runs is named, retention included.
	if want := []string{"agent", "calligraphus", "copier", "puma", "retention", "serving"}; !slices.Equal(status.Components, want) {
		t.Errorf("status components %q, want %q", status.Components, want)
	}
	r.stop(t)

	// A restart recovers every shard at its committed segment, still
	// there, and answers whole.
	r = start(t, cfg)
	defer r.stop(t)
	more := orders(500, 7, base)
	send(t, r.p.Agent.Addr(), more, 100)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(append(sent, more...)))
	if partial(t, r.p.Serving.Addr()) {
		t.Error("the answer after the restart says it is partial")
	}
	for _, st := range r.p.Puma.Statuses() {
		if st.Incomplete != "" {
			t.Errorf("shard %s/%d: %s", st.Category, st.Bucket, st.Incomplete)
		}
	}
}

// TestBackfillCommand: what `freeway copier --backfill` runs: hours of
// segments published long ago are merged, with plain progress lines and
// a summary when the output is not a terminal; a second run finds
// nothing left to do.
func TestBackfillCommand(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.Copier.Destination = "file://" + filepath.ToSlash(filepath.Join(dir, "warehouse"))
	cfg.Copier.MergePeriod = config.Duration(time.Hour)
	cfg.Copier.Compression = "gzip"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Resolve()
	src, err := backends.OpenDFS(cfg.DFS)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	start := time.Now().Add(-5 * time.Hour).Truncate(time.Hour)
	for i := range 12 {
		at := start.Add(time.Duration(i) * 20 * time.Minute)
		enc := segment.NewEncoder()
		data := enc.AppendBlock(enc.AppendHeader(nil), &segment.Block{ArrivalMs: at.UnixMilli(), Messages: [][]byte{fmt.Appendf(nil, "line %d", i)}})
		name := layout.BucketDir("orders", i%2) + "/" + layout.SegmentName(1, uint64(i))
		if err := dfs.WriteFile(src, name, data); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(filepath.Join(dir, "dfs", filepath.FromSlash(name)), at, at); err != nil {
			t.Fatal(err)
		}
	}
	var out strings.Builder
	st, err := Backfill(context.Background(), cfg, Options{Log: slog.New(slog.DiscardHandler)}, &out, false)
	if err != nil || st.Merged != 8 || st.Lines != 12 {
		t.Fatalf("backfill: %+v %v\n%s", st, err, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "backfill [") || !strings.Contains(lines[len(lines)-2], "12/12 files") ||
		!strings.HasPrefix(lines[len(lines)-1], "backfill: merged 8 files (12 lines)") || strings.Contains(out.String(), "\r") {
		t.Errorf("output:\n%s", out.String())
	}
	out.Reset()
	if st, err := Backfill(context.Background(), cfg, Options{}, &out, false); err != nil || st.Merged != 0 {
		t.Errorf("second backfill: %+v %v", st, err)
	}
}

// TestBackfillWaitsForTheCopierLease, on ZooKeeper and HBase: a backfill
// started while a copier holds the lease (as a copier killed moments ago
// does until its session expires) waits for it, saying so, and runs once
// it is free; one that waits in vain fails naming the holder, without a
// summary of work it did not do. (Before, it failed at once.)
func TestBackfillWaitsForTheCopierLease(t *testing.T) {
	zk, _, hbase := engines(t)
	suffix := randomSuffix()
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.Apps = nil
	cfg.Store = fmt.Sprintf("hbase://%s/backfill_%s_", hbase, suffix)
	cfg.Coord = fmt.Sprintf("zk://%s/freeway-test/backfill-%s", zk, suffix)
	cfg.Copier.Destination = "file://" + filepath.ToSlash(filepath.Join(dir, "warehouse"))
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Resolve()
	running := startTarget(t, cfg, Copier)
	defer func() {
		if running != nil {
			running.stop(t)
		}
	}()
	deadline := time.Now().Add(60 * time.Second)
	for !running.p.Copier.Status().Active {
		if time.Now().After(deadline) {
			t.Fatal("the copier did not take the lease")
		}
		time.Sleep(20 * time.Millisecond)
	}
	out := &testkit.LogBuffer{}
	_, err := backfill(context.Background(), cfg, Options{Log: slog.New(slog.DiscardHandler)}, out, false, 2*time.Second)
	if !errors.Is(err, coord.ErrHeld) || !strings.Contains(out.String(), "waiting up to 2s") || strings.Contains(out.String(), "backfill: copied") {
		t.Fatalf("backfill while a copier runs: %v\n%s", err, out.String())
	}

	out = &testkit.LogBuffer{}
	type result struct {
		st  copier.Stats
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := backfill(context.Background(), cfg, Options{Log: slog.New(slog.DiscardHandler)}, out, false, time.Minute)
		done <- result{st, err}
	}()
	for !strings.Contains(out.String(), "waiting up to 1m0s") {
		if time.Now().After(deadline.Add(time.Minute)) {
			t.Fatalf("the backfill does not wait:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	running.stop(t)
	running = nil
	r := <-done
	if r.err != nil || !strings.Contains(out.String(), "backfill: copied") {
		t.Fatalf("backfill once the lease is free: %+v %v\n%s", r.st, r.err, out.String())
	}
}

// TestRetentionHoldsForACopierConfiguredElsewhere: retention run by a
// process without copier.destination (a Puma node holding the retention
// lease) still holds back what a copier has not copied yet, once that
// copier has recorded progress in the store; what it did copy goes.
func TestRetentionHoldsForACopierConfiguredElsewhere(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.Copier.Destination = "file://" + filepath.ToSlash(filepath.Join(dir, "warehouse"))
	cfg.Copier.Interval = config.Duration(50 * time.Millisecond)
	src, err := backends.OpenDFS("file://" + filepath.ToSlash(filepath.Join(dir, "dfs")))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := backends.OpenDFS(cfg.Copier.Destination)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()

	// With the copier: everything sent is copied.
	r := start(t, cfg)
	sent := orders(300, 0, base)
	send(t, r.p.Agent.Addr(), sent, 50)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(sent))
	testkit.WaitFor(t, "the copier to copy every segment", func() bool {
		return len(segmentsIn(t, dst, "orders")) == len(segmentsIn(t, src, "orders"))
	})
	// The copier records its progress in a bucket after the segment is at
	// the destination: wait for the record, which is what retention in a
	// process without the copier goes by (a bucket with none recorded is
	// not held for it).
	testkit.Eventually(t, "the copier to record its progress past every segment", func() error {
		return copierRecorded(r, cfg, src)
	})
	copied := map[string]bool{}
	for _, s := range segmentsIn(t, dst, "orders") {
		copied[s] = true
	}
	r.stop(t)

	// Without it, and with a short retention: the new segments are never
	// copied, so they stay; the copied ones go.
	cfg.Copier.Destination = ""
	cfg.DFSRetention = config.Duration(time.Second)
	r = start(t, cfg)
	defer r.stop(t)
	var more []order
	for round := range 3 {
		batch := orders(300, 300*(round+1), base)
		send(t, r.p.Agent.Addr(), batch, 50)
		more = append(more, batch...)
		time.Sleep(300 * time.Millisecond) // a few segments per bucket
	}
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(append(sent, more...)))
	testkit.Eventually(t, "retention to delete copied segments and hold uncopied ones for the copier", func() error {
		deleted, held := metricSum(t, r, "freeway_retention_segments_deleted_total"), copierHeld(t, r)
		if deleted > 0 && held > 0 {
			return nil
		}
		var marks []string
		for b := range cfg.Buckets {
			last, recorded, err := copier.BucketProgress(context.Background(), r.p.st, cfg.Copier.Table, "orders", b)
			marks = append(marks, fmt.Sprintf("%d: %q recorded=%v err=%v", b, last, recorded, err))
		}
		return fmt.Errorf("deleted %v, held for the copier %v; copier progress %v; copied %v; left %v", deleted, held, marks, copied, segmentsIn(t, src, "orders"))
	})
	left := map[string]bool{}
	for _, s := range segmentsIn(t, src, "orders") {
		left[s] = true
	}
	uncopied := 0
	for s := range left {
		if !copied[s] {
			uncopied++
		}
	}
	if uncopied == 0 {
		t.Fatal("no uncopied segment is left: retention deleted what the copier never copied")
	}
	for s := range copied {
		if left[s] {
			continue
		}
		if _, err := dst.Stat(s); err != nil {
			t.Errorf("%s deleted but not in the warehouse: %v", s, err)
		}
	}
}

// copierRecorded reports, as an error, a bucket of orders whose copier
// progress recorded in the store is not at its last segment in src.
func copierRecorded(r *running, cfg Config, src dfs.FS) error {
	for b := range cfg.Buckets {
		dir := layout.BucketDir("orders", b)
		infos, err := layout.Published(src, dir, "")
		if err != nil {
			return err
		}
		if len(infos) == 0 {
			return fmt.Errorf("%s: no segment", dir)
		}
		want := infos[len(infos)-1].Name()
		last, recorded, err := copier.BucketProgress(context.Background(), r.p.st, cfg.Copier.Table, "orders", b)
		if err != nil {
			return err
		}
		if !recorded || last != want {
			return fmt.Errorf("%s: copier progress %q (recorded %v), want %q", dir, last, recorded, want)
		}
	}
	return nil
}

// copierHeld is how many segments retention holds back for the copier.
func copierHeld(t *testing.T, r *running) float64 {
	t.Helper()
	mfs, err := r.p.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != "freeway_retention_held_segments" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "consumer" && l.GetValue() == Copier {
					n += m.GetGauge().GetValue()
				}
			}
		}
	}
	return n
}

// TestAddressInUseNamesTheFlag: a listener whose address another process
// holds fails the start with the flag that moves it, once ("start
// calligraphus: start calligraphus: listen on ..." and nothing on what
// to do, before).
func TestAddressInUseNamesTheFlag(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	for module, set := range map[string]func(*Config){
		Agent:        func(c *Config) { c.Agent.Listen = held.Addr().String() },
		Calligraphus: func(c *Config) { c.Calligraphus.Listen = held.Addr().String() },
		Serving:      func(c *Config) { c.Serving.Listen = held.Addr().String() },
	} {
		cfg := testConfig(t.TempDir())
		set(&cfg)
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		cfg.Resolve()
		p, err := New(cfg, All, Options{Version: "test", AdminListen: "off"})
		if err == nil {
			_ = p.Close()
			t.Fatalf("%s: started on an address in use", module)
		}
		msg := err.Error()
		if !strings.Contains(msg, "--"+module+".listen") || strings.Count(msg, "start "+module) != 1 || !strings.Contains(msg, held.Addr().String()) {
			t.Errorf("%s: %q, want the address, --%s.listen and one \"start %s\"", module, msg, module, module)
		}
	}
}

// TestFailedBuildReleasesComponents: a configuration whose last module
// cannot start (serving.listen moved to an address in use, by a reload)
// left the modules built before it running: the agent and the writer
// held their ports and the agent its queue directory, so that the
// previous configuration, which the command then starts again, could
// not start beside them and the process ended.
func TestFailedBuildReleasesComponents(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	freeAddr := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	cfg := testConfig(t.TempDir())
	// Fixed ports, as a configuration file gives them.
	cfg.Agent.Listen, cfg.Calligraphus.Listen = freeAddr(), freeAddr()
	moved := cfg
	moved.Serving.Listen = held.Addr().String()
	if err := moved.Validate(); err != nil {
		t.Fatal(err)
	}
	moved.Resolve()
	if p, err := New(moved, All, Options{Version: "test", AdminListen: "off"}); err == nil {
		_ = p.Close()
		t.Fatal("started with serving on an address in use")
	}
	r := start(t, cfg)
	defer r.stop(t)
	os := orders(500, 0, base)
	send(t, r.p.Agent.Addr(), os, 100)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(os))
}
