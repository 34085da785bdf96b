package freeway

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// unrulyLink stands between an agent and its writer: it holds some
// batches back (later ones overtake them), forwards others and loses the
// answer (the agent sends them again), and refuses some unsent.
type unrulyLink struct {
	srv    *scribeapi.Server
	target atomic.Pointer[string]
	calls  atomic.Int64
	held   atomic.Int64 // batches overtaken while held back
	lost   atomic.Int64 // answers lost after the batch was written
}

func (u *unrulyLink) Log(ctx context.Context, es []*scribethrift.LogEntry) (scribethrift.ResultCode, error) {
	return scribethrift.ResultCode_TRY_LATER, nil // the agent sends LogBatch
}

func (u *unrulyLink) LogBatch(ctx context.Context, b *scribethrift.Batch) (scribethrift.ResultCode, error) {
	n := u.calls.Add(1)
	target := u.target.Load()
	if target == nil || n%11 == 0 {
		return scribethrift.ResultCode_TRY_LATER, nil
	}
	if n%5 == 1 {
		before := u.calls.Load()
		time.Sleep(200 * time.Millisecond) // not an assertion: lets later batches pass
		if u.calls.Load() > before {
			u.held.Add(1)
		}
	}
	c, err := scribeapi.Dial(*target, thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		return scribethrift.ResultCode_OK, err
	}
	defer c.Close()
	rc, err := c.LogBatch(ctx, b)
	if err == nil && rc == scribethrift.ResultCode_OK && n%7 == 3 {
		u.lost.Add(1)
		return scribethrift.ResultCode_OK, errors.New("answer lost")
	}
	return rc, err
}

// TestReorderedBatchesCountedOnce: an agent with several batches in
// flight, through a link that reorders, repeats and refuses them, into a
// writer and Puma, and a restart of the whole process halfway: every
// entry is counted exactly once. The high water Puma kept before its
// seen-window dropped the batches that were overtaken.
func TestReorderedBatchesCountedOnce(t *testing.T) {
	link := &unrulyLink{}
	srv, err := scribeapi.Listen("127.0.0.1:0", link, scribeapi.Info{Name: "unruly"}, thriftsrv.Limits{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	link.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = srv.Serve(ctx) // the test's own link; stopped at the end
	}()
	defer func() {
		cancel()
		wg.Wait()
	}()

	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.Agent.Upstream = []string{srv.Addr()}
	cfg.Agent.MaxInFlight = 8
	cfg.Agent.BatchEntries = 40
	cfg.Agent.RetryMin = config.Duration(time.Millisecond)
	cfg.Agent.RetryMax = config.Duration(20 * time.Millisecond)

	first := orders(3000, 0, base)
	r := start(t, cfg)
	addr := r.p.Calligraphus.Addr()
	link.target.Store(&addr)
	send(t, r.p.Agent.Addr(), first, 100)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(first))
	r.stop(t)

	second := orders(2000, 13, base)
	r = start(t, cfg)
	defer r.stop(t)
	addr2 := r.p.Calligraphus.Addr()
	link.target.Store(&addr2)
	send(t, r.p.Agent.Addr(), second, 100)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(append(first, second...)))
	if link.held.Load() == 0 || link.lost.Load() == 0 {
		t.Fatalf("the link overtook %d held batches and lost %d answers: the test proved nothing", link.held.Load(), link.lost.Load())
	}
	t.Logf("%d calls, %d batches overtaken, %d answers lost", link.calls.Load(), link.held.Load(), link.lost.Load())
}
