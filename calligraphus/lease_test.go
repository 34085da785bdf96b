package calligraphus

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

func TestLeaseHeldByAnotherOwner(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	hub, co := inprocCoord(t)
	other := hub.Session()
	defer other.Close()
	lease, err := other.Acquire(context.Background(), "calligraphus/cat/0", "someone-else")
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, testConfig(), fsys, co, nil)
	cl := s.dial(t)
	for i := 0; i < 3; i++ {
		rc, err := cl.Log(context.Background(), entries("cat", "refused"))
		if err != nil || rc != scribethrift.ResultCode_TRY_LATER {
			t.Fatalf("log while another owner holds the bucket: %v %v, want TRY_LATER", rc, err)
		}
	}
	if names := published(t, fsys, "cat/0", false); len(names) != 0 {
		t.Fatalf("wrote %v without the lease", names)
	}
	if got := counter(t, s.reg, "freeway_calligraphus_try_later_total", "reason", "not_owner"); got != 3 {
		t.Errorf("try_later not_owner %v, want 3", got)
	}
	if got := counter(t, s.reg, "freeway_calligraphus_entries_received_total"); got != 0 {
		t.Errorf("entries_received %v, want 0", got)
	}
	if err := lease.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the writer to take the released lease", func() bool {
		rc, err := cl.Log(context.Background(), entries("cat", "accepted"))
		if err != nil {
			t.Fatal(err)
		}
		return rc == scribethrift.ResultCode_OK
	})
	s.stop()
	if got := msgs(scan(t, fsys, "cat/0")); !slices.Equal(got, []string{"accepted"}) {
		t.Errorf("bucket holds %q", got)
	}
}

// gate blocks one kind of file operation until opened.
type gate struct {
	op      dfstest.Op
	mu      sync.Mutex
	armed   bool
	blocked chan struct{} // closed when an operation is held
	release chan struct{}
	once    sync.Once
}

// newGate returns a gate, opened at the end of the test at the latest so
// that a failing test does not hang.
func newGate(t *testing.T, op dfstest.Op) *gate {
	g := &gate{op: op, armed: true, blocked: make(chan struct{}), release: make(chan struct{})}
	t.Cleanup(g.open)
	return g
}

func (g *gate) open() {
	g.once.Do(func() { close(g.release) })
}

func (g *gate) hook(c dfstest.Call) error {
	if c.Op != g.op || strings.HasSuffix(c.Name, ".salvage") {
		return nil
	}
	g.mu.Lock()
	if !g.armed {
		g.mu.Unlock()
		return nil
	}
	g.armed = false
	close(g.blocked)
	g.mu.Unlock()
	<-g.release
	return nil
}

type result struct {
	rc  scribethrift.ResultCode
	err error
}

func logAsync(cl interface {
	Log(context.Context, []*scribethrift.LogEntry) (scribethrift.ResultCode, error)
}, es []*scribethrift.LogEntry) chan result {
	ch := make(chan result, 1)
	go func() {
		rc, err := cl.Log(context.Background(), es)
		ch <- result{rc, err}
	}()
	return ch
}

func TestLeaseLost(t *testing.T) {
	fsKinds(t, func(t *testing.T, fsys *dfstest.Faulty) {
		_, co := inprocCoord(t)
		s := startServer(t, testConfig(), fsys, co, nil)
		cl1, cl2, cl3 := s.dial(t), s.dial(t), s.dial(t)
		mustLog(t, cl1, entries("cat", "before"))
		first := published(t, fsys, "cat/0", true)

		// Hold the next write in the dfs, queue one more request behind it,
		// then expire the session.
		g := newGate(t, dfstest.OpWrite)
		fsys.SetHook(g.hook)
		inflight := logAsync(cl1, entries("cat", "inflight"))
		<-g.blocked
		queued := logAsync(cl2, entries("cat", "queued"))
		// In the writer's queue, not merely reserved (pending bytes count
		// a reservation, made before the call is queued): queued later, it
		// could find the writer past the lost lease, and be written.
		testkit.WaitFor(t, "the second request to queue", func() bool {
			s.c.mu.Lock()
			defer s.c.mu.Unlock()
			w := s.c.writers[bucketID{"cat", 0}]
			return w != nil && len(w.reqs) == 1
		})
		co.Expire()
		g.open()

		r1, r2 := <-inflight, <-queued
		if r1.err != nil || r2.err != nil {
			t.Fatalf("log: %v %v", r1.err, r2.err)
		}
		if r2.rc != scribethrift.ResultCode_TRY_LATER {
			t.Errorf("request queued when the lease was lost: %v, want TRY_LATER", r2.rc)
		}
		if r1.rc != scribethrift.ResultCode_TRY_LATER {
			t.Errorf("request in flight when the lease was lost: %v, want TRY_LATER", r1.rc)
		}
		// The next request takes the lease again, with a higher epoch.
		mustLog(t, cl3, entries("cat", "after"))
		s.stop()

		got := scan(t, fsys, "cat/0")
		var kept []string
		for _, e := range got {
			if e.Msg != "inflight" && e.Msg != "queued" { // unacknowledged: may or may not be there
				kept = append(kept, e.Msg)
			}
		}
		if !slices.Equal(kept, []string{"before", "after"}) {
			t.Errorf("bucket holds %q", msgs(got))
		}
		last := got[len(got)-1]
		e1 := int64(0)
		for _, e := range got {
			if e.Msg == "before" {
				e1, _, _ = layout.ParseSegmentName(e.Segment)
			}
		}
		if e2, _, _ := layout.ParseSegmentName(last.Segment); last.Msg != "after" || e2 <= e1 {
			t.Errorf("after re-acquiring: segment %s (epoch %d), before: %v (epoch %d)", last.Segment, e2, first, e1)
		}
	})
}

// TestLeaseLostAckFenced plays a writer that loses its lease while a write
// is under way and a new owner salvages the bucket meanwhile: the old
// writer must not acknowledge bytes written after that.
func TestLeaseLostAckFenced(t *testing.T) {
	local := newLocal(t)
	fsA, fsB := dfstest.NewFaulty(local), dfstest.NewFaulty(local)
	hub, coA := inprocCoord(t)
	coB := hub.Session()
	defer coB.Close()
	cfgA, cfgB := testConfig(), testConfig()
	cfgA.ID, cfgB.ID = preferring(t, "cat", 0, 1) // A keeps the bucket
	a := startServer(t, cfgA, fsA, coA, nil)
	b := startServer(t, cfgB, fsB, coB, nil)
	clA, clB := a.dial(t), b.dial(t)

	mustLog(t, clA, entries("cat", "a-1"))
	g := newGate(t, dfstest.OpWrite)
	fsA.SetHook(g.hook)
	late := logAsync(clA, entries("cat", "a-2"))
	<-g.blocked
	coA.Expire()
	// B takes over and salvages A's segment (a forwarded batch: B writes
	// it itself rather than forwarding it to A, preferred for the bucket).
	if rc, err := clB.LogBatch(context.Background(), &scribethrift.Batch{Messages: entries("cat", "b-1"), Forwarded: thriftBool(true)}); err != nil || rc != scribethrift.ResultCode_OK {
		t.Fatalf("B: %v %v", rc, err)
	}
	g.open()
	r := <-late
	if r.err != nil {
		t.Fatal(r.err)
	}
	a.stop()
	b.stop()
	got := msgs(scan(t, local, "cat/0"))
	if r.rc == scribethrift.ResultCode_OK && !slices.Equal(got, []string{"a-1", "a-2", "b-1"}) {
		t.Errorf("a-2 acknowledged after the lease was lost and a new owner took over, but the bucket holds %q", got)
	}
	if !slices.Equal(got[:1], []string{"a-1"}) || got[len(got)-1] != "b-1" {
		t.Errorf("bucket holds %q", got)
	}
}

// TestShutdownWhileWaiting: a request waiting for its write when the
// server stops is answered TRY_LATER (counted as stopping, not as a write
// error), and what was written is still published.
func TestShutdownWhileWaiting(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	s := startServer(t, testConfig(), fsys, co, nil)
	g := newGate(t, dfstest.OpSync)
	fsys.SetHook(g.hook)
	res := logAsync(s.dial(t), entries("cat", "waiting"))
	<-g.blocked
	s.cancel()
	testkit.WaitFor(t, "the waiting request to be answered", func() bool {
		return counter(t, s.reg, "freeway_calligraphus_try_later_total") > 0
	})
	g.open()
	s.stop()
	<-res
	if got := counter(t, s.reg, "freeway_calligraphus_try_later_total", "reason", "stopping"); got != 1 {
		t.Errorf("try_later stopping %v, want 1", got)
	}
	if got := msgs(scan(t, fsys, "cat/0")); !slices.Equal(got, []string{"waiting"}) {
		t.Errorf("bucket holds %q", got)
	}
}

// TestLeaseLostOfAQuietBucketIsSalvaged: a writer that loses its lease
// leaves its open segment, whose synced entries were acknowledged, to a
// salvage. When nobody else takes the bucket and no batch comes for it,
// the writer takes it again itself, before it ends for idleness: the
// acknowledged entries are published without waiting for a next batch.
func TestLeaseLostOfAQuietBucketIsSalvaged(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	cfg := testConfig()
	cfg.IdleClose = config.Duration(20 * time.Millisecond)
	s := startServer(t, cfg, fsys, co, nil)
	cl := s.dial(t)
	mustLog(t, cl, entries("cat", "acked")) // synced, in the open segment
	co.Expire()
	s.waitWritersEnded(t)
	if got := msgs(scanNames(t, fsys, "cat/0", published(t, fsys, "cat/0", true))); !slices.Equal(got, []string{"acked"}) {
		t.Errorf("once the bucket writer ended, the bucket holds %q", got)
	}
}

// TestRetakeWaitsOutAStaleLeaseOfItsOwn: a writer that gave its lease up
// for lost (cut off from the coordinator) while its session lived on
// finds the lease node still there, in its own name, until the
// coordinator removes it. That is no other writer having taken the bucket
// (and salvaged it): the writer tries again rather than leave its
// acknowledged entries unpublished.
func TestRetakeWaitsOutAStaleLeaseOfItsOwn(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, inner := inprocCoord(t)
	co := &staleOwnLease{Coord: inner}
	cfg := testConfig()
	cfg.IdleClose = config.Duration(20 * time.Millisecond)
	s := startServer(t, cfg, fsys, co, nil)
	cl := s.dial(t)
	mustLog(t, cl, entries("cat", "acked")) // synced, in the open segment
	co.stale.Store(true)
	inner.Expire()
	s.waitWritersEnded(t)
	if got := msgs(scanNames(t, fsys, "cat/0", published(t, fsys, "cat/0", true))); !slices.Equal(got, []string{"acked"}) {
		t.Errorf("once the bucket writer ended, the bucket holds %q", got)
	}
}

// staleOwnLease answers the first Acquire after stale is set as a
// coordinator still holding a lease node of the caller's own would:
// ErrHeld, in the caller's name. Holder answers truly: by then the node
// is gone.
type staleOwnLease struct {
	coord.Coord
	stale atomic.Bool
}

func (s *staleOwnLease) Acquire(ctx context.Context, name, owner string) (coord.Lease, error) {
	if s.stale.CompareAndSwap(true, false) {
		return nil, fmt.Errorf("acquire %s: %w: %s", name, coord.ErrHeld, owner)
	}
	return s.Coord.Acquire(ctx, name, owner)
}

// TestLeaseLostAsAnIdleWriterPublishes: the lease is lost while a writer
// ending for idleness publishes its segment, whose entries were
// acknowledged: the publish leaves it to a salvage, which the writer
// brings about before it ends.
func TestLeaseLostAsAnIdleWriterPublishes(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	cfg := testConfig()
	cfg.IdleClose = config.Duration(20 * time.Millisecond)
	s := startServer(t, cfg, fsys, co, nil)
	cl := s.dial(t)
	var once sync.Once
	fsys.SetHook(func(c dfstest.Call) error {
		if _, ok := layout.ParseTempSegment(path.Base(c.Name)); ok && c.Op == dfstest.OpClose {
			once.Do(co.Expire)
		}
		return nil
	})
	mustLog(t, cl, entries("cat", "acked")) // synced, in the open segment
	s.waitWritersEnded(t)
	if got := msgs(scanNames(t, fsys, "cat/0", published(t, fsys, "cat/0", true))); !slices.Equal(got, []string{"acked"}) {
		t.Errorf("once the bucket writer ended, the bucket holds %q", got)
	}
}
