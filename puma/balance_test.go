package puma

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/coord/zkcoord"
	"github.com/freeway-dev/freeway/internal/enginetest"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/ptail"
)

// TestAssignShards: every shard has one preferred member, none more than
// its share rounded up.
func TestAssignShards(t *testing.T) {
	var leases []string
	for b := range 12 {
		leases = append(leases, shardID{"orders", b}.lease())
	}
	three := assignShards(leases, []string{"a", "b", "c"})
	load := map[string]int{}
	for _, l := range leases {
		load[three[l]]++
	}
	if load["a"] != 4 || load["b"] != 4 || load["c"] != 4 {
		t.Fatalf("3 members over 12 shards: %v", load)
	}
	two := assignShards(leases, []string{"a", "b"})
	load = map[string]int{}
	for _, l := range leases {
		load[two[l]]++
	}
	if load["a"] != 6 || load["b"] != 6 {
		t.Fatalf("2 members over 12 shards: %v", load)
	}
}

// owned lists, for each node, the shards running there.
func owned(nodes []*Puma) [][]string {
	out := make([][]string, len(nodes))
	for i, p := range nodes {
		if p == nil {
			continue
		}
		for _, st := range p.Statuses() {
			if st.State == StateRunning {
				out[i] = append(out[i], st.shard())
			}
		}
	}
	return out
}

// balanced waits until the live nodes run every one of n shards between
// them, none twice, and none runs more than most.
func balanced(t *testing.T, nodes []*Puma, n, most int) {
	t.Helper()
	testkit.Eventually(t, fmt.Sprintf("%d shards spread, at most %d a node", n, most), func() error {
		seen := map[string]bool{}
		all := owned(nodes)
		for i, o := range all {
			if len(o) > most {
				return fmt.Errorf("node %d runs %d shards: %v", i, len(o), all)
			}
			for _, s := range o {
				if seen[s] {
					return fmt.Errorf("shard %s runs twice: %v", s, all)
				}
				seen[s] = true
			}
		}
		if len(seen) != n {
			return fmt.Errorf("%d of %d shards run: %v", len(seen), n, all)
		}
		return nil
	})
}

// TestBalance: 3 nodes over 12 shards run at most 5 each; once one stops,
// the other two run all 12. On the in-process coordinator and on
// ZooKeeper.
func TestBalance(t *testing.T) {
	t.Run("inproc", func(t *testing.T) {
		e := newEnv(t, orders(t))
		checkBalance(t, e, func(id string) coord.Coord { return e.hub.Session() })
	})
	t.Run("zookeeper", func(t *testing.T) {
		addr := enginetest.Addr(t, enginetest.ZK)
		b := make([]byte, 4)
		rand.Read(b)
		root := "/fwtest_balance_" + hex.EncodeToString(b)
		e := newEnv(t, orders(t))
		checkBalance(t, e, func(id string) coord.Coord {
			c, err := zkcoord.Open("zk://"+addr+root+"?session_timeout=2s", nil)
			if err != nil {
				t.Fatal(err)
			}
			return c
		})
	})
}

func checkBalance(t *testing.T, e *env, open func(id string) coord.Coord) {
	e.buckets = 12
	var nodes []*Puma
	var runs []*running
	for i := range 3 {
		id := fmt.Sprintf("node-%d", i)
		co := open(id)
		t.Cleanup(func() { co.Close() })
		p := e.node(id, func(c *Config, d *Deps) {
			d.Coord, d.Advertise = co, "127.0.0.1:1"+fmt.Sprint(i)
			c.TakeoverGrace = config.Duration(time.Second)
		})
		nodes = append(nodes, p)
		runs = append(runs, start(t, p))
	}
	balanced(t, nodes, 12, 5)
	runs[0].stop(t)
	balanced(t, []*Puma{nil, nodes[1], nodes[2]}, 12, 12)
}

// TestHandOffCheckpointsFirst: a node that hands a shard over to a node
// that joins checkpoints it first, so the new owner resumes where the old
// one had read: it reads nothing again, and the answers stay whole. On
// the in-process coordinator and on ZooKeeper.
func TestHandOffCheckpointsFirst(t *testing.T) {
	t.Run("inproc", func(t *testing.T) {
		e := newEnv(t, orders(t))
		checkHandOff(t, e, func() coord.Coord { return e.hub.Session() })
	})
	t.Run("zookeeper", func(t *testing.T) {
		addr := enginetest.Addr(t, enginetest.ZK)
		b := make([]byte, 4)
		rand.Read(b)
		root := "/fwtest_handoff_" + hex.EncodeToString(b)
		checkHandOff(t, newEnv(t, orders(t)), func() coord.Coord {
			c, err := zkcoord.Open("zk://"+addr+root+"?session_timeout=2s", nil)
			if err != nil {
				t.Fatal(err)
			}
			return c
		})
	})
}

func checkHandOff(t *testing.T, e *env, open func() coord.Coord) {
	e.buckets = 4
	var ends []ptail.Position
	for b := range e.buckets {
		ends = append(ends, e.publish("orders", b, stock(order(t0+1000, "eu", "book", b+1), order(t0+2000, "us", "book", 10))))
	}
	regA := prometheus.NewPedanticRegistry()
	node := func(id string, reg prometheus.Registerer) *Puma {
		co := open()
		t.Cleanup(func() { co.Close() })
		return e.node(id, func(c *Config, d *Deps) {
			d.Coord, d.Advertise, d.Metrics = co, id+":1", reg
			c.CheckpointInterval = config.Duration(time.Hour) // only the hand-off commits
		})
	}
	a := node("a", regA)
	start(t, a)
	for b := range e.buckets {
		waitRead(t, a, b, ends[b])
	}
	want := rows(t, a, Query{})
	b := node("b", nil)
	start(t, b)
	balanced(t, []*Puma{a, b}, 4, 2)
	moved := 0
	for _, st := range b.Statuses() {
		if st.State != StateRunning {
			continue
		}
		moved++
		if st.Committed != ends[st.Bucket].String() || st.Entries != 0 {
			t.Errorf("shard %s on the new owner: resumed at %s having read %d entries again; the old owner had read to %s",
				st.shard(), st.Committed, st.Entries, ends[st.Bucket])
		}
	}
	if got := testutil.ToFloat64(a.bm.handoffs); got != float64(moved) || moved == 0 {
		t.Errorf("hand-offs counted %v, shards moved %d", got, moved)
	}
	// The two nodes' partial states over their own shards merge into the
	// one node's answer.
	var parts []*Partial
	for _, p := range []*Puma{a, b} {
		var mine []int
		for _, st := range p.Statuses() {
			if st.State == StateRunning {
				mine = append(mine, st.Bucket)
			}
		}
		part, err := p.Partial(t.Context(), Query{App: "orders", FromMs: t0 - 24*3600_000, ToMs: t0 + 24*3600_000}, mine)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, part)
	}
	res, err := MergePartials(e.apps[0], Query{App: "orders", FromMs: t0 - 24*3600_000, ToMs: t0 + 24*3600_000}, parts)
	if err != nil {
		t.Fatal(err)
	}
	equalRows(t, "merged partials", formatRows(res), want)
}
