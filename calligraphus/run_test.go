package calligraphus

import (
	"context"
	"testing"
	"time"
)

// TestRunReturnsWhenServeFails: when the Scribe server stops on its own
// (an accept error: here, a listener already closed), Run must return
// the error rather than wait forever for the group membership and the
// rebalance loop, which end only with ctx: a writer that takes no more
// batches must not stay in the group of writers holding its leases.
func TestRunReturnsWhenServeFails(t *testing.T) {
	_, co := inprocCoord(t)
	s := startServer(t, testConfig(), newLocal(t), co, nil)
	s.stop() // closes the listener for good

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.c.Run(ctx) }()
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("Run on a closed listener returned no error")
		}
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("Run did not return after its server stopped (it did once ctx ended: %v)", <-done)
	}
}
