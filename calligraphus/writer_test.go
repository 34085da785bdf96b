package calligraphus

import (
	"context"
	"errors"
	"log/slog"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// TestSubmitToStoppedWriter: a writer whose loop has ended must refuse
// requests, not queue them where nobody answers them; one reserved before
// it ended is answered at once.
func TestSubmitToStoppedWriter(t *testing.T) {
	_, co := inprocCoord(t)
	c := &Calligraphus{cfg: testConfig(), deps: Deps{FS: newLocal(t), Coord: co}, log: slog.New(slog.DiscardHandler), m: newMetrics(nil), writers: map[bucketID]*bucketWriter{}, labels: map[string]string{}}
	w := newBucketWriter(c, bucketID{"cat", 0}, nil)
	req := &appendReq{done: make(chan error, 1)}
	req.add(callInfo{}, []byte("x"), 0)
	if err := w.reserve(req.size); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	w.run(ctx)
	if err := w.reserve(req.size); !errors.Is(err, errStopping) {
		t.Fatalf("reserve with a stopped writer: %v, want errStopping", err)
	}
	w.enqueue(req)
	if err := <-req.done; !errors.Is(err, errStopping) {
		t.Fatalf("request reserved before the writer stopped: %v, want errStopping", err)
	}
	if w.pending != 0 || w.slots != 0 {
		t.Errorf("pending %d, slots %d after the writer stopped", w.pending, w.slots)
	}
}

// TestPublishFailureKeepsOrder: when publishing a segment fails, what it
// holds was acknowledged (local disk) and must be published before any
// later segment, or readers that passed it never see it.
func TestPublishFailureKeepsOrder(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	cfg := testConfig()
	cfg.SegmentMaxBytes = 1 << 10
	s := startServer(t, cfg, fsys, co, nil)
	cl := s.dial(t)
	big := strings.Repeat("b", 600)
	mustLog(t, cl, entries("cat", "1-"+big))

	var once sync.Once
	fsys.SetHook(func(c dfstest.Call) error {
		var err error
		if c.Op == dfstest.OpRename && strings.HasSuffix(c.Name, ".inprogress") {
			once.Do(func() { err = errors.New("injected rename failure") })
		}
		return err
	})
	// Fills the segment: the publish fails, but the bytes were synced, so
	// the batch is acknowledged.
	mustLog(t, cl, entries("cat", "2-"+big))
	mustLog(t, cl, entries("cat", "3-"+big))
	mustLog(t, cl, entries("cat", "4-"+big))
	testkit.WaitFor(t, "a published segment", func() bool { return len(published(t, fsys, "cat/0", true)) > 0 })

	// A reader that starts now must see entries 1 and 2 before 3, though
	// the segment holding them could not be published the first time.
	if got := msgs(tail(t, fsys, "cat/0", 1)); got[0] != "1-"+big {
		t.Errorf("ptail starts with %.5q, want entry 1", got[0])
	}
	s.stop()
	want := []string{"1-" + big, "2-" + big, "3-" + big, "4-" + big}
	if got := msgs(scan(t, fsys, "cat/0")); !slices.Equal(got, want) {
		t.Errorf("after stop the bucket holds %d entries: %.5q", len(got), got)
	}
}

// TestFailedPublishOfAQuietBucketIsSalvaged: when publishing a segment
// fails on a local disk, its entries were acknowledged and the writer
// leaves the segment to a salvage. The salvage must not wait for a next
// batch that may never come: a bucket that stays quiet still gets its
// acknowledged entries published, whether the publish failed as the
// segment filled up or as its writer ended for idleness.
func TestFailedPublishOfAQuietBucketIsSalvaged(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
	}{
		{"full", 1 << 10}, // published as it is written
		{"idle", 600},     // published as its writer ends
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := dfstest.NewFaulty(newLocal(t))
			_, co := inprocCoord(t)
			cfg := testConfig()
			cfg.SegmentMaxBytes = 1 << 10
			cfg.IdleClose = config.Duration(20 * time.Millisecond)
			s := startServer(t, cfg, fsys, co, nil)
			cl := s.dial(t)
			msg := strings.Repeat("b", tc.size)

			var once sync.Once
			fsys.SetHook(func(c dfstest.Call) error {
				var err error
				if _, ok := layout.ParseTempSegment(path.Base(c.Name)); ok && c.Op == dfstest.OpRename {
					once.Do(func() { err = errors.New("injected rename failure") })
				}
				return err
			})
			// The bytes are synced, so the batch is acknowledged; the
			// segment's publish fails.
			mustLog(t, cl, entries("cat", msg))
			s.waitWritersEnded(t)
			if got := msgs(scanNames(t, fsys, "cat/0", published(t, fsys, "cat/0", true))); !slices.Equal(got, []string{msg}) {
				t.Errorf("once the bucket writer ended, the bucket holds %d entries: %.5q", len(got), got)
			}
		})
	}
}
