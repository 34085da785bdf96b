package puma

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/ptail"
)

// TestDedupWindowsChargedToMemoryLimit: the agents' seen-windows (16 KiB
// a key) are charged to puma.memory_limit with the cells. Once they fill
// it, a new cell is refused (max_cells, the error naming the dedup
// state), while every entry is still deduplicated exactly (dedup state is
// never dropped to make room) and existing cells keep aggregating; keys
// forgotten beyond max_agents_per_shard give their bytes back, a node
// recovering the checkpoint charges the windows it loads, and a stopped
// shard gives everything back. The code before charged nothing: the
// windows were memory outside the bound.
func TestDedupWindowsChargedToMemoryLimit(t *testing.T) {
	const limit, agents, maxAgents = 64 << 10, 10, 12
	e := newEnv(t, orders(t))
	node := func(id string, reg *prometheus.Registry) *Puma {
		return e.node(id, func(c *Config, d *Deps) {
			c.MemoryLimit = limit
			c.MaxAgentsPerShard = maxAgents
			d.Metrics = reg
		})
	}
	reg := prometheus.NewPedanticRegistry()
	p := node("n1", reg)
	s := testShard(t, p, 0)
	adopt(p, s)
	var want uint64
	off := int64(0)
	for a := range agents {
		blocks, n := reordered(fmt.Sprintf("a%d/1", a))
		for _, b := range blocks {
			off++
			s.apply(b, ptail.Position{Offset: off})
		}
		want += n
	}
	if s.entries != want {
		t.Fatalf("counted %d entries, want %d: dedup state was given up under the limit", s.entries, want)
	}
	const winSize = segment.SeqWindow / 8 // a window's bytes
	// windowed bounds what the dedup state of s may be charged.
	windowed := func(s *shard) (lo, hi int64) {
		for _, k := range s.highWater.keys {
			if k.win != nil {
				lo += winSize
			}
			hi += winSize + 1024
		}
		return lo, hi
	}
	dedupBytes := int64(gather(t, reg)["freeway_puma_dedup_bytes"])
	if lo, hi := windowed(s); lo < agents*winSize || dedupBytes < lo || dedupBytes > hi {
		t.Fatalf("dedup state charged %d bytes, its windows take %d (at most %d with the keys)", dedupBytes, lo, hi)
	}
	if _, bytes := p.Cells(); bytes != s.tables[0].bytes+dedupBytes || bytes < limit {
		t.Fatalf("%d bytes accounted, cells %d + dedup %d", bytes, s.tables[0].bytes, dedupBytes)
	}

	// The limit is reached by dedup state: a new group key is refused and
	// counted, the existing one keeps aggregating.
	off++
	feed(s, off, order(t0+1000, "us", "pen", 1), order(t0+1000, "eu", "book", 1))
	rej, _ := p.Rejections("orders")
	if rej.Dropped["max_cells"] != 1 || len(rej.Samples) != 1 || !strings.Contains(rej.Samples[0].Error, "dedup state") {
		t.Fatalf("refused %d lines as max_cells, samples %+v", rej.Dropped["max_cells"], rej.Samples)
	}
	equalRows(t, "rows", memRows(t, s, Query{}), []string{fmt.Sprintf("+0..+60s {kind=book region=eu} {hi=1 lo=1 mean=1 n=%d total=%d}", want+1, want+1)})

	// Keys beyond max_agents_per_shard are forgotten and give back their
	// bytes: the charge follows the keys kept.
	for a := agents; a < agents+8; a++ {
		blocks, _ := reordered(fmt.Sprintf("a%d/1", a))
		for _, b := range blocks {
			off++
			s.apply(b, ptail.Position{Offset: off})
		}
	}
	dedupBytes = int64(gather(t, reg)["freeway_puma_dedup_bytes"])
	if lo, hi := windowed(s); len(s.highWater.keys) > maxAgents || dedupBytes < lo || dedupBytes > hi {
		t.Fatalf("%d keys kept, charged %d bytes, windows %d..%d", len(s.highWater.keys), dedupBytes, lo, hi)
	}

	// A node recovering the checkpoint charges the windows it loads.
	if err := s.checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	reg2 := prometheus.NewPedanticRegistry()
	p2 := node("n2", reg2)
	s2 := testShard(t, p2, 0)
	if got := int64(gather(t, reg2)["freeway_puma_dedup_bytes"]); got != dedupBytes {
		t.Fatalf("recovered dedup state charged %d bytes, the first node %d", got, dedupBytes)
	}
	if _, bytes := p2.Cells(); bytes != s2.tables[0].bytes+dedupBytes {
		t.Fatalf("recovered node accounts %d bytes, cells %d + dedup %d", bytes, s2.tables[0].bytes, dedupBytes)
	}

	// A stopped shard gives its bytes back.
	s.release()
	if cells, bytes := p.Cells(); cells != 0 || bytes != 0 || gather(t, reg)["freeway_puma_dedup_bytes"] != 0 {
		t.Fatalf("after release: %d cells, %d bytes accounted, dedup %v", cells, bytes, gather(t, reg)["freeway_puma_dedup_bytes"])
	}
}
