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
			s := startServer(t, testConfig(), fsys, co, nil)
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
