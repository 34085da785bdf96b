package scribe

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// TestSeveralBatchesInFlight: with max_in_flight 4 the agent has four
// batches upstream at once, never more, and everything arrives once.
func TestSeveralBatchesInFlight(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	t.Cleanup(open)
	defer open() // a failure below stops the test before the agent's cleanup waits for its calls
	up := startUpstream(t, "127.0.0.1:0", nil)
	up.gate = func(*scribethrift.Batch) { <-release }
	cfg := testConfig(t.TempDir(), up.srv.Addr())
	cfg.MaxInFlight = 4
	cfg.BatchEntries = 10
	a := startAgent(t, cfg)
	want := msgs(entries("c", "f", 0, 100))
	mustLog(t, dial(t, a.Addr()), entries("c", "f", 0, 100))
	testkit.WaitFor(t, "four calls upstream at once", func() bool { return up.active.Load() == 4 })
	if n := gather(t, a, "freeway_agent_batches_in_flight", "", ""); n != 4 {
		t.Fatalf("freeway_agent_batches_in_flight = %v, want 4", n)
	}
	if n := gather(t, a, "freeway_agent_seqs_in_flight", "", ""); n != 40 {
		t.Fatalf("freeway_agent_seqs_in_flight = %v, want 40 (four batches of 10)", n)
	}
	if n := shipObserved(t, a); n != 0 {
		t.Fatalf("freeway_agent_ship_seconds holds %d batches before any OK", n)
	}
	open()
	testkit.WaitFor(t, "the queue shipped", func() bool { return a.q.Stats().Entries == 0 })
	testkit.WaitFor(t, "every batch's time observed", func() bool { return shipObserved(t, a) == 10 })
	// The shipper counts and sets the gauge after the queue's
	// acknowledgement, which drains the queue: a moment later.
	testkit.Eventually(t, "every batch counted shipped, none in flight", func() error {
		if n := gather(t, a, "freeway_agent_seqs_in_flight", "", ""); a.c.shipped.Load() < 100 || n != 0 {
			return fmt.Errorf("shipped %d, freeway_agent_seqs_in_flight = %v after everything was acknowledged, want 0", a.c.shipped.Load(), n)
		}
		return nil
	})
	if m := up.maxActive.Load(); m != 4 {
		t.Fatalf("%d calls upstream at once, want at most (and at some point) 4", m)
	}
	wantOnce(t, up.pumaCounts(), want)
	if n := a.c.shipped.Load(); n != 100 {
		t.Fatalf("shipped counter = %d, want 100", n)
	}
}

// TestInFlightAcknowledgedInOrder: batches after one that keeps failing
// are answered OK, but the queue's position does not pass the failing
// one, no batch beyond max_in_flight is sent meanwhile, and after a
// restart everything not acknowledged is sent again with its identity:
// Puma counts every entry once.
func TestInFlightAcknowledgedInOrder(t *testing.T) {
	var mu sync.Mutex
	failFirst := true
	up := startUpstream(t, "127.0.0.1:0", func(n int, b *scribethrift.Batch) (scribethrift.ResultCode, error) {
		mu.Lock()
		defer mu.Unlock()
		if b.FirstSeq == 1 && failFirst {
			if n%2 == 0 {
				return scribethrift.ResultCode_TRY_LATER, nil
			}
			return scribethrift.ResultCode_OK, errors.New("writer crashed")
		}
		return scribethrift.ResultCode_OK, nil
	})
	dir := t.TempDir()
	cfg := testConfig(dir, up.srv.Addr())
	cfg.MaxInFlight = 4
	cfg.BatchEntries = 10
	a := startAgent(t, cfg)
	want := msgs(entries("c", "o", 0, 100))
	mustLog(t, dial(t, a.Addr()), entries("c", "o", 0, 100))
	firstTries := func() int {
		n := 0
		for _, b := range up.callsSnapshot() {
			if b.FirstSeq == 1 {
				n++
			}
		}
		return n
	}
	testkit.WaitFor(t, "batches 2 to 4 upstream and batch 1 retried", func() bool {
		up.mu.Lock()
		ok := len(up.ok)
		up.mu.Unlock()
		return ok >= 3 && firstTries() >= 6
	})
	for _, b := range up.callsSnapshot() {
		if b.FirstSeq > 31 {
			t.Fatalf("batch at %d sent while batch 1 was not acknowledged (max_in_flight 4)", b.FirstSeq)
		}
	}
	if n := a.q.Stats().Entries; n != 100 {
		t.Fatalf("%d entries left in the queue, want all 100: nothing may be acknowledged past batch 1", n)
	}
	a.stopped(t)
	mu.Lock()
	failFirst = false
	mu.Unlock()
	b := startAgent(t, cfg)
	testkit.WaitFor(t, "the queue shipped", func() bool { return b.q.Stats().Entries == 0 })
	resent := 0
	for _, c := range up.callsSnapshot() {
		if c.FirstSeq == 11 {
			resent++
		}
	}
	if resent != 2 {
		t.Fatalf("batch 2 sent %d times, want twice (before and after the restart)", resent)
	}
	wantOnce(t, up.pumaCounts(), want)
}

// TestInFlightStaysWithinTheSeqWindow: with batches so large that a few
// of them span more than agent.seq_window, the agent sends a batch only
// once every entry more than seq_window below its end was answered OK,
// so that no entry can reach a bucket too late to be told from a
// re-send: by default (segment.SeqWindowV1, what every Puma tells apart)
// two batches of 30,000 at once; with seq_window at Puma's
// segment.SeqWindow all four.
func TestInFlightStaysWithinTheSeqWindow(t *testing.T) {
	t.Run("default", func(t *testing.T) { testInFlightWithin(t, 0, segment.SeqWindowV1, 2) })
	t.Run("seq_window 131072", func(t *testing.T) { testInFlightWithin(t, segment.SeqWindow, segment.SeqWindow, 4) })
}

func testInFlightWithin(t *testing.T, seqWindow int, bound, wantActive int64) {
	const per = 30000
	const total = 4 * per
	release := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	t.Cleanup(open)
	defer open() // a failure below stops the test before the agent's cleanup waits for its calls
	var mu sync.Mutex
	okd := make([]bool, total+1) // seq → answered OK
	var violation error
	up := startUpstream(t, "127.0.0.1:0", func(_ int, b *scribethrift.Batch) (scribethrift.ResultCode, error) {
		mu.Lock()
		defer mu.Unlock()
		for i := range b.Messages {
			okd[b.FirstSeq+int64(i)] = true
		}
		return scribethrift.ResultCode_OK, nil
	})
	var widest int64 // the most numbers from the lowest not answered OK to a batch's end, as it came
	up.gate = func(b *scribethrift.Batch) {
		mu.Lock()
		end := b.FirstSeq + int64(len(b.Messages))
		for s := int64(1); s < end-bound; s++ {
			if !okd[s] && violation == nil {
				violation = errors.New("a batch was sent before an entry more than SeqWindow below its end was acknowledged")
			}
		}
		for s := int64(1); s < end; s++ {
			if !okd[s] {
				widest = max(widest, end-s)
				break
			}
		}
		mu.Unlock()
		<-release
	}
	cfg := testConfig(t.TempDir(), up.srv.Addr())
	cfg.MaxInFlight = 4
	cfg.BatchEntries = per
	cfg.BatchBytes = config.ByteSize(8 << 20)
	if seqWindow > 0 {
		cfg.SeqWindow = seqWindow
	}
	a := startAgent(t, cfg)
	c := dial(t, a.Addr())
	// One call, one group commit: the queue holds every entry before the
	// shipper reads, so every batch is a full one of per (several calls
	// could be read, on a slow machine, as smaller batches).
	mustLog(t, c, entries("c", "w", 0, total))
	testkit.WaitFor(t, fmt.Sprintf("%d batches upstream at once", wantActive), func() bool { return up.active.Load() == wantActive })
	open()
	testkit.WaitFor(t, "the queue shipped", func() bool { return a.q.Stats().Entries == 0 })
	mu.Lock()
	defer mu.Unlock()
	if violation != nil {
		t.Fatal(violation)
	}
	if widest > bound || widest <= min(bound, total)-per {
		t.Fatalf("batches in flight spanned at most %d numbers, want at most %d and more than %d (the window used)", widest, bound, min(bound, total)-per)
	}
	if m := up.maxActive.Load(); m != wantActive {
		t.Fatalf("%d batches of %d upstream at once, want %d (seq_window %d)", m, per, wantActive, bound)
	}
	if got := up.count(t); got != total {
		t.Fatalf("upstream has %d entries, want %d", got, total)
	}
}

// shipObserved is the number of batches freeway_agent_ship_seconds
// observed.
func shipObserved(t *testing.T, a *agent) uint64 {
	t.Helper()
	mfs, err := a.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "freeway_agent_ship_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatal("freeway_agent_ship_seconds not registered")
	return 0
}
