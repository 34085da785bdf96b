package ptail

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"path"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// behind makes r take every segment for published an hour ago: a reader
// behind its writers, which looks ahead by name.
func behind(r *Reader) *Reader {
	r.now = func() time.Time { return time.Now().Add(time.Hour) }
	return r
}

// TestAheadOpensTheNextSegmentWhileReading: while the reader reads a
// segment, the next pending one is opened (and its header read) on a
// goroutine, once; the reader then reads it from that open.
func TestAheadOpensTheNextSegmentWhileReading(t *testing.T) {
	fsys := newFS(t)
	publish(t, fsys, 1, 1, []string{"a1"}, []string{"a2"})
	publish(t, fsys, 1, 2, []string{"b1"})
	publish(t, fsys, 1, 3, []string{"c1"})
	r := NewReader(fsys, dir, Position{}, time.Hour, logger(t))
	defer r.Close()
	if got := msgsOf(readN(t, r, 1)); got[0] != "a1" {
		t.Fatalf("read %q", got)
	}
	second := path.Join(dir, layout.SegmentName(1, 2))
	testkit.WaitFor(t, "the next segment to be opened ahead", func() bool {
		return callsOf(fsys, dfstest.OpOpen, second) == 1 && callsOf(fsys, dfstest.OpRead, second) > 0
	})
	if got := msgsOf(readN(t, r, 3)); !slices.Equal(got, []string{"a2", "b1", "c1"}) {
		t.Fatalf("read %q", got)
	}
	for s := uint64(1); s <= 3; s++ {
		if n := callsOf(fsys, dfstest.OpOpen, path.Join(dir, layout.SegmentName(1, s))); n != 1 {
			t.Errorf("segment (1, %d) opened %d times, want 1", s, n)
		}
	}
}

// TestAheadFindsTheNextByName: a reader behind its writer, with nothing
// pending, looks for the writer's next name while it reads the current
// segment, and reads that segment from what it found: one Stat and one
// open of it in all.
func TestAheadFindsTheNextByName(t *testing.T) {
	fsys := newFS(t)
	first := publish(t, fsys, 1, 1, []string{"s1"})
	// The next segment comes after the listing, before the reader opens
	// the first.
	onFirstOpen(fsys, first, func() { publish(t, fsys, 1, 2, []string{"s2"}) })
	r := behind(NewReader(fsys, dir, Position{}, time.Hour, logger(t)))
	defer r.Close()
	if got := msgsOf(readN(t, r, 1)); got[0] != "s1" {
		t.Fatalf("read %q", got)
	}
	second := path.Join(dir, layout.SegmentName(1, 2))
	testkit.WaitFor(t, "the next segment to be found and opened ahead", func() bool {
		return callsOf(fsys, dfstest.OpStat, second) == 1 && callsOf(fsys, dfstest.OpOpen, second) == 1
	})
	if got := msgsOf(readN(t, r, 1)); got[0] != "s2" {
		t.Fatalf("read %q", got)
	}
	if s, o := callsOf(fsys, dfstest.OpStat, second), callsOf(fsys, dfstest.OpOpen, second); s != 1 || o != 1 {
		t.Errorf("the next segment looked at %d times and opened %d times, want once each (ahead)", s, o)
	}
}

// TestAheadByNameRefusesAFencedSegment: what the look ahead finds by name
// is held to the fence as nextSegment's look is: a segment the writer
// published after a newer owner sealed its epoch is not read, the newer
// owner's is.
func TestAheadByNameRefusesAFencedSegment(t *testing.T) {
	fsys := newFS(t)
	first := publish(t, fsys, 1, 1, []string{"old"})
	onFirstOpen(fsys, first, func() {
		takeOver(t, fsys, 2)
		publish(t, fsys, 1, 2, []string{"stale"})
		publish(t, fsys, 2, 1, []string{"new"})
	})
	r := behind(NewReader(fsys, dir, Position{}, time.Hour, logger(t)))
	defer r.Close()
	if got := msgsOf(readN(t, r, 2)); !slices.Equal(got, []string{"old", "new"}) {
		t.Fatalf("read %q", got)
	}
	// Looked at ahead, and again by nextSegment: neither took it.
	if n := callsOf(fsys, dfstest.OpStat, path.Join(dir, layout.SegmentName(1, 2))); n != 2 {
		t.Errorf("the stale segment looked at %d times, want 2 (ahead, then nextSegment)", n)
	}
}

// TestAheadFailuresAreReadErrors: an open or a read of the segment opened
// ahead that fails is the same *ReadError as without the look ahead,
// and the segment is read whole afterwards; nothing is skipped.
func TestAheadFailuresAreReadErrors(t *testing.T) {
	second := path.Join(dir, layout.SegmentName(1, 2))
	for _, tc := range []struct {
		name string
		op   dfstest.Op
		err  error
	}{
		{"open", dfstest.OpOpen, errors.New("injected open error")},
		{"read", dfstest.OpRead, errors.New("injected read error")},
		{"cut short", dfstest.OpRead, &fs.PathError{Op: "read", Path: second, Err: io.ErrUnexpectedEOF}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := newFS(t)
			publish(t, fsys, 1, 1, []string{"a1"}, []string{"a2"})
			publish(t, fsys, 1, 2, []string{"b1"}, []string{"b2"})
			var failed atomic.Bool
			fsys.SetHook(func(c dfstest.Call) error {
				if c.Op == tc.op && c.Name == second && failed.CompareAndSwap(false, true) {
					return tc.err
				}
				return nil
			})
			r := NewReader(fsys, dir, Position{}, time.Hour, logger(t))
			defer r.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var got []string
			var errs []error
			var b segment.Block
			for len(got) < 4 && len(errs) < 5 {
				if _, err := r.Next(ctx, &b); err != nil {
					errs = append(errs, err)
					continue
				}
				got = append(got, string(b.Messages[0]))
			}
			var re *ReadError
			if !failed.Load() || len(errs) != 1 || !errors.As(errs[0], &re) {
				t.Fatalf("injected %v: errors %v, want one *ReadError", failed.Load(), errs)
			}
			if !slices.Equal(got, []string{"a1", "a2", "b1", "b2"}) || r.Skipped != 0 {
				t.Fatalf("read %q, skipped %d", got, r.Skipped)
			}
			// A failed read of the header is the open's, as ever.
			if re.Segment != second || re.Op != "open" {
				t.Errorf("error %+v, want an open of %s", re, second)
			}
		})
	}
}

// TestCloseWithASegmentAhead: Close waits for the goroutine opening the
// next segment and closes it (goleak checks the goroutine in TestMain).
func TestCloseWithASegmentAhead(t *testing.T) {
	fsys := newFS(t)
	publish(t, fsys, 1, 1, []string{"a1"}, []string{"a2"})
	publish(t, fsys, 1, 2, []string{"b1"})
	release := make(chan struct{})
	fsys.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpOpen && c.Name == path.Join(dir, layout.SegmentName(1, 2)) {
			<-release
		}
		return nil
	})
	r := NewReader(fsys, dir, Position{}, time.Hour, logger(t))
	readN(t, r, 1)
	closed := make(chan error, 1)
	go func() { closed <- r.Close() }()
	close(release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if r.ahead != nil || r.file != nil {
		t.Fatal("Close left a segment open")
	}
}
