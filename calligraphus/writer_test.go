package calligraphus

import (
	"context"
	"errors"
	"log/slog"
	"testing"

	"github.com/freeway-dev/freeway/internal/segment"
)

// TestSubmitToStoppedWriter: a writer whose loop has ended must refuse
// requests, not queue them where nobody answers them.
func TestSubmitToStoppedWriter(t *testing.T) {
	_, co := inprocCoord(t)
	c := &Calligraphus{cfg: testConfig(), deps: Deps{FS: newLocal(t), Coord: co}, log: slog.New(slog.DiscardHandler), m: newMetrics(nil), writers: map[bucketID]*bucketWriter{}}
	w := newBucketWriter(c, bucketID{"cat", 0})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	w.run(ctx)
	req := &appendReq{block: &segment.Block{Messages: [][]byte{[]byte("x")}}, size: 20, done: make(chan error, 1)}
	if err := w.submit(req); !errors.Is(err, errStopping) {
		t.Fatalf("submit to a stopped writer: %v, want errStopping", err)
	}
	if got := w.pending.Load(); got != 0 {
		t.Errorf("pending %d after a refused request", got)
	}
}
