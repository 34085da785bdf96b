package puma

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	names "github.com/freeway-dev/freeway/internal/layout"
)

// TestReadErrorsAreRetried: a dfs error while reading neither stops the
// shard nor loses or repeats anything; it is counted.
func TestReadErrorsAreRetried(t *testing.T) {
	e := newEnv(t, orders(t))
	// The first opens of segment files fail, as during a NameNode restart.
	flaky := dfstest.NewFaulty(e.fs)
	var failures atomic.Int32
	failures.Store(3)
	flaky.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpOpen && strings.HasSuffix(c.Name, names.SegmentExt) && failures.Add(-1) >= 0 {
			return errors.New("injected: namenode unavailable")
		}
		return nil
	})
	p := e.node("a", func(c *Config, d *Deps) { d.FS = flaky })
	start(t, p)
	e.publish("orders", 0, stock(order(t0, "eu", "book", 1)))
	pos := e.publish("orders", 0, stock(order(t0+1, "eu", "book", 2)))
	waitRead(t, p, 0, pos)
	got := rows(t, p, Query{})
	if len(got) != 1 || !strings.Contains(got[0], "n=2") || !strings.Contains(got[0], "total=3") {
		t.Fatalf("rows %v, want one row with n=2 total=3", got)
	}
	if n := testutil.ToFloat64(p.m.readErrors); n != 3 {
		t.Fatalf("read errors counted %v, want 3", n)
	}
	if !p.Ready() {
		t.Fatal("the shard stopped")
	}
}

// TestUncommittedShardsGauge: a shard that has read past its last commit
// shows in freeway_puma_shards_uncommitted until a checkpoint covers it,
// which is what tests and operators wait on to know everything read is
// committed.
func TestUncommittedShardsGauge(t *testing.T) {
	e := newEnv(t, orders(t))
	reg := prometheus.NewRegistry()
	p := e.node("a", func(c *Config, d *Deps) {
		c.CheckpointInterval = config.Duration(time.Hour) // only the final one
		d.Metrics = reg
	})
	r := start(t, p)
	pos := e.publish("orders", 0, stock(order(t0, "eu", "book", 1)))
	waitRead(t, p, 0, pos)
	gauge := func() float64 {
		t.Helper()
		n, err := testutil.GatherAndCount(reg, "freeway_puma_shards_uncommitted")
		if err != nil || n != 1 {
			t.Fatalf("freeway_puma_shards_uncommitted: %d series, %v", n, err)
		}
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "freeway_puma_shards_uncommitted" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		return -1
	}
	if g := gauge(); g != 1 {
		t.Fatalf("uncommitted shards %v after a read with no checkpoint, want 1", g)
	}
	if err := p.shards[shardID{"orders", 0}].checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if g := gauge(); g != 0 {
		t.Fatalf("uncommitted shards %v after a checkpoint, want 0", g)
	}
	r.stop(t)
}
