package calligraphus

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// A batch whose write or fsync fails is answered TRY_LATER, and the
// segment is left for the salvage, which publishes every whole block in
// it. That used to include the refused batch's (after a failed fsync the
// page cache holds them; a write that fills the disk can stop after some
// of the batch's requests), so a stock client's retry put its entries in
// the bucket twice. Now the writer cuts the segment back to what its
// last fsync made durable before it leaves it, and the bucket holds each
// entry once.
func TestRefusedBatchIsNotSalvaged(t *testing.T) {
	big := strings.Repeat("x", directWrite) // written by a Write of its own
	for _, tc := range []struct {
		name string
		// refused makes one batch fail, once entries a0 and a1 are
		// acknowledged; it returns the messages of the refused calls.
		refused func(t *testing.T, s *server, fsys *dfstest.Faulty) []string
	}{
		{"sync", func(t *testing.T, s *server, fsys *dfstest.Faulty) []string {
			var fail atomic.Bool
			fail.Store(true)
			fsys.SetHook(func(c dfstest.Call) error {
				if isTempSegment(c.Name) && c.Op == dfstest.OpSync && fail.CompareAndSwap(true, false) {
					return fmt.Errorf("injected: %w", syscall.EIO)
				}
				return nil
			})
			wantTryLater(t, s.dial(t), "b0", "b1")
			return []string{"b0", "b1"}
		}},
		{"fence check", func(t *testing.T, s *server, fsys *dfstest.Faulty) []string {
			// Synced, then the listing of the fence after the sync
			// fails (an I/O error): the batch is refused, and its bytes
			// used to stay in the open segment, published with it.
			var fail atomic.Bool
			fail.Store(true)
			fsys.SetHook(func(c dfstest.Call) error {
				if c.Op == dfstest.OpReadDir && c.Name == layout.FenceDir("cat/0") && fail.CompareAndSwap(true, false) {
					return fmt.Errorf("injected: %w", syscall.EIO)
				}
				return nil
			})
			wantTryLater(t, s.dial(t), "b0", "b1")
			return []string{"b0", "b1"}
		}},
		{"write", func(t *testing.T, s *server, fsys *dfstest.Faulty) []string {
			// One batch of two requests, the first written whole, the
			// second's write failing: the run loop is held in the fsync
			// of the batch before while both calls queue.
			g := newGate(t, dfstest.OpSync)
			var writes atomic.Int32
			fsys.SetHook(func(c dfstest.Call) error {
				if !isTempSegment(c.Name) {
					return nil
				}
				if c.Op == dfstest.OpWrite && writes.Add(1) == 2 {
					return fmt.Errorf("injected: %w", syscall.ENOSPC)
				}
				return g.hook(c)
			})
			before := logAsync(s.dial(t), entries("cat", "b0"))
			<-g.blocked
			c := logAsync(s.dial(t), entries("cat", "c-"+big))
			d := logAsync(s.dial(t), entries("cat", "d-"+big))
			testkit.WaitFor(t, "both calls queued behind the held fsync", func() bool {
				s.c.mu.Lock()
				defer s.c.mu.Unlock()
				w := s.c.writers[bucketID{"cat", 0}]
				return w != nil && len(w.reqs) == 2
			})
			writes.Store(0)
			g.open()
			if r := <-before; r.err != nil || r.rc != scribethrift.ResultCode_OK {
				t.Fatalf("the call before: %v %v", r.rc, r.err)
			}
			for _, ch := range []chan result{c, d} {
				if r := <-ch; r.err != nil || r.rc != scribethrift.ResultCode_TRY_LATER {
					t.Fatalf("a call of the failed batch: %v %v, want TRY_LATER", r.rc, r.err)
				}
			}
			if n := writes.Load(); n != 2 {
				t.Fatalf("%d writes of the failed batch, want 2: one batch of two requests", n)
			}
			return []string{"b0", "c-" + big, "d-" + big}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := dfstest.NewFaulty(newLocal(t))
			_, co := inprocCoord(t)
			cfg := testConfig()
			cfg.Compression = "none" // big is written by a Write of its own as sent
			s := startServer(t, cfg, fsys, co, nil)
			cl := s.dial(t)
			mustLog(t, cl, entries("cat", "a0", "a1"))
			want := append([]string{"a0", "a1"}, tc.refused(t, s, fsys)...)
			// The refused calls' clients retry, as stock clients do,
			// until the writer has taken the bucket again (salvaging the
			// segment) and writes.
			for _, m := range want[2:] {
				if strings.HasPrefix(m, "b") && tc.name == "write" {
					continue // answered OK
				}
				testkit.Eventually(t, "the retry to be answered OK", func() error {
					rc, err := cl.Log(context.Background(), entries("cat", m))
					if err == nil && rc != scribethrift.ResultCode_OK {
						err = fmt.Errorf("answered %v", rc)
					}
					return err
				})
			}
			mustLog(t, cl, entries("cat", "z"))
			s.stop()
			want = append(want, "z")
			if got := msgs(scan(t, fsys, "cat/0")); !slices.Equal(got, want) {
				t.Fatalf("the bucket holds %.12q, want %.12q", got, want)
			}
		})
	}
}

func isTempSegment(name string) bool {
	_, ok := layout.ParseTempSegment(path.Base(name))
	return ok
}

func wantTryLater(t *testing.T, cl *scribeapi.Client, msgs ...string) {
	t.Helper()
	rc, err := cl.Log(context.Background(), entries("cat", msgs...))
	if err != nil || rc != scribethrift.ResultCode_TRY_LATER {
		t.Fatalf("a call whose batch failed: %v %v, want TRY_LATER", rc, err)
	}
}

// While a writer waits to try again to take its bucket after a take
// failed for a full disk (the salvage of the segment a failed fsync left
// could not write its copy), calls used to be refused as not_owner,
// "bucket owned by another writer": the metric and the log pointed at
// another writer when the disk was full. Now they are refused for what
// failed the take (write_error), and the writer takes the bucket once
// there is room.
func TestFailedTakeIsTheReasonUntilTheNextTry(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	var now atomic.Int64 // unix ns; frozen: the next try waits for the test
	now.Store(time.Now().UnixNano())
	s := startServerWith(t, testConfig(), fsys, co, nil, func(c *Calligraphus) {
		c.now = func() time.Time { return time.Unix(0, now.Load()) }
	})
	cl := s.dial(t)
	mustLog(t, cl, entries("cat", "a0"))

	var syncFail, full atomic.Bool
	syncFail.Store(true)
	full.Store(true)
	fsys.SetHook(func(c dfstest.Call) error {
		switch {
		case isTempSegment(c.Name) && c.Op == dfstest.OpSync && syncFail.CompareAndSwap(true, false):
			return fmt.Errorf("injected: %w", syscall.EIO)
		case strings.HasSuffix(c.Name, layout.SalvageSuffix) && c.Op == dfstest.OpCreate && full.Load():
			return fmt.Errorf("injected: %w", syscall.ENOSPC)
		}
		return nil
	})
	for range 4 {
		wantTryLater(t, cl, "b0")
	}
	if n := counter(t, s.reg, "freeway_calligraphus_try_later_total", "reason", "not_owner"); n != 0 {
		t.Errorf("%v calls refused as not_owner while no other writer exists", n)
	}
	if n := counter(t, s.reg, "freeway_calligraphus_try_later_total", "reason", "write_error"); n != 4 {
		t.Errorf("%v calls refused as write_error, want 4", n)
	}
	full.Store(false)
	now.Add(int64(2 * time.Second))
	testkit.Eventually(t, "the retry to be answered OK", func() error {
		rc, err := cl.Log(context.Background(), entries("cat", "b0"))
		if err == nil && rc != scribethrift.ResultCode_OK {
			err = fmt.Errorf("answered %v", rc)
		}
		return err
	})
	s.stop()
	if got, want := msgs(scan(t, fsys, "cat/0")), []string{"a0", "b0"}; !slices.Equal(got, want) {
		t.Fatalf("the bucket holds %q, want %q", got, want)
	}
}
