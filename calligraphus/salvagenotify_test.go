package calligraphus

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/ptail"
)

// TestSalvageNotifiesReaders: a segment salvaged as the bucket is taken is
// published like any other, so a reader in the same process is woken for
// it rather than finding it at its next poll (here an hour away).
func TestSalvageNotifiesReaders(t *testing.T) {
	local := newLocal(t)
	dir := layout.BucketDir("cat", 0)
	writeCrashed(t, local, dir, 5, 1, []*segment.Block{{ArrivalMs: 1, Messages: [][]byte{[]byte("acked")}}}, false)

	n := ptail.NewNotifier()
	readerFS := dfstest.NewFaulty(local)
	r := ptail.NewReader(readerFS, dir, ptail.Position{}, time.Hour, slog.New(slog.DiscardHandler)).SetNotifier(n)
	ctx, cancel := context.WithCancel(context.Background())
	got, done := make(chan string, 1), make(chan struct{})
	defer func() {
		cancel()
		<-done
		r.Close()
	}()
	go func() {
		defer close(done)
		var b segment.Block
		if _, err := r.Next(ctx, &b); err != nil {
			if !errors.Is(err, context.Canceled) {
				t.Error(err)
			}
			return
		}
		got <- string(b.Messages[0])
	}()
	// The reader has listed the bucket (nothing published) and waits.
	testkit.WaitFor(t, "the reader to list the bucket", func() bool {
		for _, c := range readerFS.Calls(dfstest.OpReadDir) {
			if c.Name == dir {
				return true
			}
		}
		return false
	})

	// A writer takes the bucket (an app consumes the category: without
	// waiting for entries) and salvages the segment; it writes nothing.
	_, co := inprocCoord(t)
	startServerWith(t, testConfig(), local, co, clusterRouter(), func(c *Calligraphus) { c.deps.Published = n.Published })
	testkit.WaitFor(t, "the reader to read the salvaged segment", func() bool {
		select {
		case m := <-got:
			if m != "acked" {
				t.Fatalf("read %q", m)
			}
			return true
		default:
			return false
		}
	})
}
