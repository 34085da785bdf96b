package puma

import (
	"context"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/testkit"
)

// TestShardStatuses: what /api/v1/status shows of the shards. On the
// node running them: the owner, position, lag, last commit and the apps'
// watermarks; on a node where they are held elsewhere: the owner, asked of
// the coordinator; from the store: the node, position, time and
// watermarks of the last commit.
func TestShardStatuses(t *testing.T) {
	e := newEnv(t, orders(t))
	e.buckets = 2
	e.publish("orders", 0, stock(order(t0+1000, "eu", "book", 1)))
	e.publish("orders", 0, stock(order(t0+7000, "us", "book", 2)))
	pos1 := e.publish("orders", 1, stock(order(t0+3000, "eu", "pen", 1)))
	p1 := e.node("n1")
	start(t, p1)
	wantMarks := []map[string]int64{{"orders": t0 + 7000}, {"orders": t0 + 3000}}
	var running []Status
	testkit.Eventually(t, "both shards committed", func() error {
		running = p1.ShardStatuses(context.Background())
		if len(running) != 2 {
			return fmt.Errorf("%d shards", len(running))
		}
		for _, s := range running {
			if s.State != StateRunning || s.Epoch == 0 || s.Committed != s.Position || !maps.Equal(s.Watermarks, wantMarks[s.Bucket]) {
				return fmt.Errorf("%+v", s)
			}
		}
		return nil
	})
	for _, s := range running {
		if s.Owner != "n1" || s.LagSegments != 0 || s.LastCommit.IsZero() || time.Since(s.LastCommit) > time.Minute {
			t.Fatalf("n1's shard: %+v", s)
		}
	}
	if running[1].Position != pos1.String() {
		t.Fatalf("shard 1 at %s, want %s", running[1].Position, pos1)
	}

	p2 := e.node("n2")
	start(t, p2)
	testkit.Eventually(t, "n2 sees the shards held by n1", func() error {
		st := p2.ShardStatuses(context.Background())
		if len(st) != 2 || st[0].State != StateElsewhere || st[1].State != StateElsewhere {
			return fmt.Errorf("%+v", st)
		}
		for _, s := range st {
			if s.Owner != "n1" {
				return fmt.Errorf("owner %q: %+v", s.Owner, s)
			}
		}
		// Statuses alone does not ask the coordinator.
		if o := p2.Statuses()[0].Owner; o != "" {
			return fmt.Errorf("Statuses gave owner %q", o)
		}
		return nil
	})

	c := NewCommitted(e.st, "puma", e.apps, func(string) int { return e.buckets })
	testkit.Eventually(t, "the store's view", func() error {
		st := c.ShardStatuses(context.Background())
		if len(st) != 2 {
			return fmt.Errorf("%d shards", len(st))
		}
		for i, s := range st {
			if s.Category != "orders" || s.Bucket != i || s.Owner != "n1" || s.State != "" || s.Epoch == 0 ||
				s.Committed != running[i].Position || s.LastCommit.IsZero() || !maps.Equal(s.Watermarks, wantMarks[i]) {
				return fmt.Errorf("%+v", s)
			}
		}
		return nil
	})
}
