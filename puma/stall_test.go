package puma

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// TestReadStallShown: a segment whose reads fail for as long as the dfs
// says its bytes fail their checksums (HDFS's error, as the hdfs backend
// wraps it: dfs.ErrChecksum in a PathError) is retried, never skipped,
// and the shard is shown stuck while it lasts: in Statuses (the segment,
// the offset, the kind, since when, how many failures), in
// freeway_puma_read_stalled_seconds and freeway_puma_shards_read_stalled,
// and in the log, as an error naming the file and the offset at the
// first failure and then at most once a minute, however often it is
// retried. Once the dfs delivers the segment, the shard reads it whole
// and nothing shows stuck any more. The code before logged a warning at
// every retry and showed nothing else but a counter.
func TestReadStallShown(t *testing.T) {
	e := newEnv(t, orders(t))
	faulty := dfstest.NewFaulty(e.fs)
	stuck := names.SegmentName(1, 2)
	var broken atomic.Bool
	broken.Store(true)
	faulty.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpRead && path.Base(c.Name) == stuck && broken.Load() {
			return &fs.PathError{Op: "read", Path: "/freeway/" + c.Name, Err: fmt.Errorf("%w: %w", dfs.ErrChecksum, errors.New("invalid checksum"))}
		}
		return nil
	})
	clock := &testClock{now: time.Now()}
	var logs testkit.LogBuffer
	reg := prometheus.NewPedanticRegistry()
	p := e.node("n1", func(c *Config, d *Deps) { d.FS, d.Now, d.Log, d.Metrics = faulty, clock.Now, logs.Logger(), reg })
	start(t, p)
	e.publish("orders", 0, stock(order(t0, "eu", "book", 1)))
	last := e.publish("orders", 0, stock(order(t0+1, "eu", "book", 2), order(t0+2, "us", "toy", 3)))
	stuckPath := names.BucketDir("orders", 0) + "/" + stuck

	// Stuck: shown, and retried.
	var rs ReadStall
	testkit.Eventually(t, "the shard shown stuck at "+stuck, func() error {
		st := stateOf(p, 0)
		if len(st.ReadStalls) != 1 || st.ReadStalls[0].Failures < 3 {
			return fmt.Errorf("read stalls %+v", st.ReadStalls)
		}
		rs = st.ReadStalls[0]
		return nil
	})
	if rs.Reader != "live" || rs.Segment != stuckPath || rs.Offset != 0 || rs.Kind != "checksum" || !strings.Contains(rs.Error, "invalid checksum") || !rs.Since.Equal(clock.Now()) {
		t.Fatalf("read stall %+v", rs)
	}
	if got := gaugeOf(t, reg, "freeway_puma_shards_read_stalled", ""); got != 1 {
		t.Fatalf("freeway_puma_shards_read_stalled %v", got)
	}
	clock.advance(90 * time.Second)
	if got := stalledSeconds(t, reg); got != 90 {
		t.Fatalf("freeway_puma_read_stalled_seconds %v, want 90", got)
	}
	// One line at the first failure, one more once the clock passed the
	// minute: not one a retry.
	testkit.Eventually(t, "a second log line", func() error {
		if n := len(logs.Lines("still unreadable")); n != 1 {
			return fmt.Errorf("%d lines", n)
		}
		return nil
	})
	first := logs.Lines("level=ERROR", "cannot read bucket", "segment="+stuckPath, "offset=0", "kind=checksum")
	if len(first) != 1 {
		t.Fatalf("first failure logged %d times:\n%s", len(first), logs.String())
	}
	if rs := stateOf(p, 0).ReadStalls; len(rs) != 1 || rs[0].Failures < 4 {
		t.Fatalf("read stalls %+v", rs)
	}
	failures := stateOf(p, 0).ReadStalls[0].Failures
	if n := len(logs.Lines("segment=" + stuckPath)); n != 2 || failures < n {
		t.Fatalf("%d failures logged in %d lines, want 2:\n%s", failures, n, logs.String())
	}

	// The dfs repaired the block: read whole, nothing skipped.
	broken.Store(false)
	waitRead(t, p, 0, last)
	equalRows(t, "after the stall", rows(t, p, Query{GroupBy: []string{}}), []string{"+0..+60s {} {hi=3 lo=1 mean=2 n=3 total=6}"})
	if rs := stateOf(p, 0).ReadStalls; len(rs) != 0 {
		t.Fatalf("read stalls after the repair: %+v", rs)
	}
	if got := gaugeOf(t, reg, "freeway_puma_shards_read_stalled", ""); got != 0 {
		t.Fatalf("freeway_puma_shards_read_stalled %v after the repair", got)
	}
	if got := stalledSeconds(t, reg); got != 0 {
		t.Fatalf("freeway_puma_read_stalled_seconds %v after the repair", got)
	}
	if len(logs.Lines("level=INFO", "bucket readable again", "segment="+stuckPath)) != 1 {
		t.Fatalf("no line says the bucket reads again:\n%s", logs.String())
	}
}

// stalledSeconds is freeway_puma_read_stalled_seconds of orders/0.
func stalledSeconds(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "freeway_puma_read_stalled_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["category"] == "orders" && labels["bucket"] == "0" {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatal("no freeway_puma_read_stalled_seconds of orders/0")
	return 0
}

// TestReadStallEndsOnIdleBucket: a run of failures of a bucket with
// nothing new to read (its listing fails: the NameNode restarting) ends
// once a listing succeeds again, not at the next block published, so
// that an idle bucket that reads fine is not shown stuck for as long as
// nothing comes. The code before kept it stuck (read_stalled, the
// stalled seconds growing) until the next block.
func TestReadStallEndsOnIdleBucket(t *testing.T) {
	e := newEnv(t, orders(t))
	faulty := dfstest.NewFaulty(e.fs)
	dir := names.BucketDir("orders", 0)
	var broken atomic.Bool
	faulty.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpReadDir && strings.HasSuffix(c.Name, dir) && broken.Load() {
			return errors.New("injected: the NameNode is restarting")
		}
		return nil
	})
	var logs testkit.LogBuffer
	reg := prometheus.NewPedanticRegistry()
	p := e.node("n1", func(c *Config, d *Deps) { d.FS, d.Log, d.Metrics = faulty, logs.Logger(), reg })
	start(t, p)
	last := e.publish("orders", 0, stock(order(t0, "eu", "book", 1)))
	waitRead(t, p, 0, last)

	broken.Store(true)
	testkit.Eventually(t, "the idle shard shown stuck listing its bucket", func() error {
		if st := stateOf(p, 0).ReadStalls; len(st) != 1 || st[0].Kind != "io" || st[0].Segment != dir || st[0].Failures < 2 {
			return fmt.Errorf("read stalls %+v", st)
		}
		return nil
	})
	broken.Store(false) // the NameNode is back; nothing is published
	testkit.Eventually(t, "the stall over once the bucket lists again", func() error {
		if st := stateOf(p, 0).ReadStalls; len(st) != 0 {
			return fmt.Errorf("read stalls %+v", st)
		}
		if got := gaugeOf(t, reg, "freeway_puma_shards_read_stalled", ""); got != 0 {
			return fmt.Errorf("freeway_puma_shards_read_stalled %v", got)
		}
		return nil
	})
	if len(logs.Lines("level=INFO", "bucket readable again", "segment="+dir)) != 1 {
		t.Fatalf("no line says the bucket reads again:\n%s", logs.String())
	}
	// And it reads on.
	next := e.publish("orders", 0, stock(order(t0+1, "eu", "book", 2)))
	waitRead(t, p, 0, next)
}
