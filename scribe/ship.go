package scribe

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/backoff"
	"github.com/freeway-dev/freeway/internal/diskqueue"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/scribewire"
	"github.com/freeway-dev/freeway/thrift/gen/fb303"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// upstream is one connection to a calligraphus.
type upstream struct {
	addr string
	c    *scribeapi.Client
	// plainLog is set for a peer that answered that it has no LogBatch (a
	// stock Scribe server, say, in an agent chain): entries then go with
	// Log, at-least-once.
	plainLog bool
}

// errNoLogBatch is a peer's UNKNOWN_METHOD answer to LogBatch.
var errNoLogBatch = errors.New("upstream has no LogBatch")

// flight is a batch read from the queue and handed to a sender; done is
// closed once an upstream answered OK.
type flight struct {
	b    diskqueue.Batch
	done chan struct{}
}

// ship sends the queue upstream with up to MaxInFlight batches in flight,
// each on a connection of its own (a Thrift connection carries one call
// at a time), and acknowledges them in the queue in order: the
// acknowledged position advances only over the batches, oldest first,
// that an upstream answered OK. A batch is sent until an upstream answers
// OK; nothing is ever skipped.
//
// Batches in flight together may reach a writer, and a bucket, in any
// order, which Puma's seen-window takes (its numbers within
// segment.SeqWindow of each other): a batch other than the oldest in
// flight is sent only while it ends at most agent.seq_window (at most
// SeqWindow) past the oldest's first number, so that an entry never
// reaches a bucket after one that far above it.
//
// When ctx ends it sends nothing more but waits up to shipDrain for the
// answers to the calls in progress (not for retries), and acknowledges
// the batches answered OK.
// A batch a writer took and the agent never acknowledged is sent again
// after the restart, and a restart for a reload may route it to another
// bucket (the category's shard key, bucket count or apps changed), where
// Puma cannot tell it from new entries and counts it twice.
func (a *Agent) ship(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	// The calls in progress outlive ctx by the drain; ending them is
	// the last thing before waiting for the senders (deferred after
	// wg.Wait).
	calls, endCalls := context.WithCancel(context.WithoutCancel(ctx))
	defer endCalls()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan *flight)
	quiet := make(chan struct{}) // every sender has returned (after ctx ended)
	var senders sync.WaitGroup
	for range a.cfg.MaxInFlight {
		senders.Add(1)
		wg.Go(func() {
			defer senders.Done()
			a.sender(ctx, calls, work)
		})
	}
	wg.Go(func() {
		senders.Wait()
		close(quiet)
	})
	batches := make(chan diskqueue.Batch)
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.readQueue(ctx, batches)
		cancel() // the queue was closed: nothing more to ship
	}()

	var (
		window []*flight // sent, not yet acknowledged, oldest first
		next   *flight   // read, not yet sent
		bo     = backoff.WithJitter(a.cfg.RetryMin.D(), a.cfg.RetryMax.D())
		drain  *time.Timer // once ctx ended: the end of the wait for the window
	)
	defer func() {
		if drain != nil {
			drain.Stop()
		}
	}()
	for {
		stopping := ctx.Err() != nil
		if stopping && len(window) == 0 {
			return nil
		}
		if stopping && drain == nil {
			// A real timer, not the agent's clock: a stop must end
			// whatever a test's clock does.
			drain = time.NewTimer(shipDrain)
		}
		if !stopping && next != nil && len(window) < a.cfg.MaxInFlight &&
			(len(window) == 0 || next.b.End()-window[0].b.First <= uint64(a.cfg.SeqWindow)) {
			select {
			case work <- next:
				window = append(window, next)
				next = nil
				a.c.seqsInFlight.Store(int64(window[len(window)-1].b.End() - window[0].b.First))
				continue
			case <-ctx.Done():
				continue
			}
		}
		var (
			oldest  <-chan struct{}
			read    <-chan diskqueue.Batch
			done    <-chan struct{}
			drained <-chan time.Time
			quieted <-chan struct{}
		)
		if drain != nil {
			drained = drain.C
		}
		if len(window) > 0 {
			oldest = window[0].done
		}
		if !stopping {
			done = ctx.Done()
			if next == nil {
				read = batches
			}
		} else {
			quieted = quiet
		}
		select {
		case <-done:
			continue
		case <-drained:
			return nil
		case b := <-read:
			next = &flight{b: b, done: make(chan struct{})}
			continue
		case <-quieted:
			if !isDone(window[0].done) {
				return nil // not answered OK: sent again after the restart
			}
		case <-oldest:
		}
		// The oldest is upstream, and perhaps some after it: acknowledge
		// them all at once, retrying a failed write of the position (a full
		// disk) rather than stopping. Should the agent stop first, they are
		// sent again with the same identity and deduplicated.
		n := 1
		for n < len(window) && isDone(window[n].done) {
			n++
		}
		last := window[n-1].b
		for {
			err := a.q.Ack(last)
			if err == nil {
				break
			}
			a.c.queueErrors.Add(1)
			a.rl.Error("queue ack failed", "acknowledging a shipped batch in the queue failed, retrying", "err", err)
			if !sleep(ctx, a.clock, bo.Next()) {
				return nil
			}
		}
		bo.Reset()
		for _, f := range window[:n] {
			a.c.shipped.Add(int64(len(f.b.Entries)))
			a.c.batches.Add(1)
		}
		window = append(window[:0], window[n:]...)
		if len(window) > 0 {
			a.c.seqsInFlight.Store(int64(window[len(window)-1].b.End() - window[0].b.First))
		} else {
			a.c.seqsInFlight.Store(0)
		}
	}
}

// shipDrain bounds how long a stopping agent waits for the answers to
// the batches it has in flight: a writer answers within its segment's
// publish (a second on HDFS), and an unreachable one must not hold the
// stop for long.
const shipDrain = 5 * time.Second

func isDone(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// readQueue reads batches from the queue in order and hands them to
// ship until ctx ends or the queue is closed.
func (a *Agent) readQueue(ctx context.Context, out chan<- diskqueue.Batch) {
	bo := backoff.WithJitter(a.cfg.RetryMin.D(), a.cfg.RetryMax.D())
	for {
		b, err := a.q.Read(ctx, int(a.cfg.BatchBytes), a.cfg.BatchEntries)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, diskqueue.ErrClosed) {
				return
			}
			// A read error (EIO, say) may pass; keep the agent up.
			a.c.queueErrors.Add(1)
			a.rl.Error("queue read failed", "reading the agent queue failed, retrying", "err", err)
			if !sleep(ctx, a.clock, bo.Next()) {
				return
			}
			continue
		}
		bo.Reset()
		select {
		case out <- b:
		case <-ctx.Done():
			return
		}
	}
}

// sender sends the batches it is given, one at a time on its own
// connection, each until an upstream answers OK (retrying TRY_LATER and
// errors with backoff, moving to the next address of its source on
// errors, and after each batch when the source spreads: the live writers
// of a coordinator URL upstream). Once ctx ends it takes no more batches
// and retries none, but a call in progress runs on until its answer or
// until calls ends (ship's drain).
func (a *Agent) sender(ctx, calls context.Context, work <-chan *flight) {
	var (
		src     = a.source()
		up      *upstream
		again   string // an address to dial again before asking src
		pool    = connPool{}
		bo      = backoff.WithJitter(a.cfg.RetryMin.D(), a.cfg.RetryMax.D())
		failing bool
		plain   = map[string]bool{} // addresses without LogBatch
		buf     []byte              // the last batch's encoding, reused
	)
	defer func() {
		if up != nil {
			_ = up.c.Close() // shipping stopped; nothing to report to
		}
		pool.closeAll()
	}()
	for {
		var f *flight
		select {
		case f = <-work:
		case <-ctx.Done():
			return
		}
		args := &batchArgs{id: a.q.ID(), b: f.b, buf: &buf}
		sent := time.Now()
		refused := 0 // TRY_LATER answers to this batch in a row
		for {
			if up == nil {
				addr, err := again, error(nil)
				if again == "" {
					addr, err = src.next()
				}
				again = ""
				if err != nil { // no writer live: keep the queue
					failing = a.shipFailed(failing, "", err)
					if !sleep(ctx, a.clock, bo.Next()) {
						return
					}
					continue
				}
				if up = pool.take(addr, a.clock.Now()); up != nil {
					continue
				}
				c, err := a.dialUpstream(addr)
				if err == nil {
					up = &upstream{addr: addr, c: c, plainLog: plain[addr]}
				} else {
					src.failed(addr)
					failing = a.shipFailed(failing, addr, err)
					if !sleep(ctx, a.clock, bo.Next()) {
						return
					}
					continue
				}
			}
			a.c.inFlight.Add(1)
			rc, err := up.send(calls, args)
			a.c.inFlight.Add(-1)
			if calls.Err() != nil || ctx.Err() != nil && (err != nil || rc != scribethrift.ResultCode_OK) {
				return // stopping: what was not answered OK is sent again after the restart
			}
			if err == nil && rc == scribethrift.ResultCode_OK {
				break
			}
			if errors.Is(err, errNoLogBatch) {
				// The server closes the connection after an unknown
				// method; reconnect and use Log.
				a.log.Warn("upstream has no batch call, falling back to plain log calls (at-least-once)", "upstream", up.addr)
				plain[up.addr] = true
				_ = up.c.Close() // reconnecting
				again, up = up.addr, nil
				continue
			}
			if err != nil {
				src.failed(up.addr)
				failing = a.shipFailed(failing, up.addr, err)
				_ = up.c.Close() // reconnecting; the call error is counted and logged
				up = nil
			} else {
				a.c.tryLaterRecv.Add(1)
				a.log.Debug("upstream answered try_later", "upstream", up.addr, "first_seq", f.b.First)
				if refused++; refused%refusedWarnEvery == 0 {
					// A busy writer takes the batch in time; one it is too
					// large for never does, and nothing after it is
					// acknowledged meanwhile. The answer does not say which.
					a.rl.Warn("batch refused", "upstream keeps answering try_later to one batch; the queue waits for it (a writer refusing it as over its max_call_bytes, see its log, never takes it: agent.batch_bytes and agent.max_call_bytes must not exceed that)",
						"upstream", up.addr, "first_seq", f.b.First, "entries", len(f.b.Entries), "bytes", args.size(), "answers", refused)
				}
				if src.tryLater(up.addr) {
					a.rl.Warn("upstream passed over "+up.addr, "writer keeps answering try_later; passing it over for a while", "upstream", up.addr)
					pool.put(up, src, a.clock.Now()) // a working connection, for its next turn
					up = nil
				}
			}
			if !sleep(ctx, a.clock, bo.Next()) {
				return
			}
		}
		a.c.shipSeconds.Observe(time.Since(sent).Seconds())
		bo.Reset()
		src.answered(up.addr)
		if failing {
			failing = false
			a.srv.SetStatus(fb303.FbStatus_ALIVE, "")
			a.log.Info("upstream reachable again", "upstream", up.addr)
		}
		if src.spread() {
			pool.put(up, src, a.clock.Now()) // the next batch goes to the next writer
			up = nil
		}
		close(f.done)
	}
}

// refusedWarnEvery is how many TRY_LATER answers in a row to one batch
// make the agent warn that it keeps being refused (about 20s of backoff
// with the default retry_min and retry_max).
const refusedWarnEvery = 10

// shipFailed counts and reports a failed connect or call; the first
// failure of a run is a warning, the rest are debug lines.
func (a *Agent) shipFailed(failing bool, addr string, err error) bool {
	a.c.shipErrors.Add(1)
	a.srv.SetStatus(fb303.FbStatus_WARNING, "upstream unreachable: "+err.Error())
	if !failing {
		a.log.Warn("shipping upstream failed, retrying", "upstream", addr, "err", err)
	} else {
		a.log.Debug("shipping upstream failed, retrying", "upstream", addr, "err", err)
	}
	return true
}

// batchArgs are the arguments of the LogBatch for b: the entries'
// identity upstream is (agent id, incarnation, first_seq + i). The
// incarnation is left unset for entries of a v1 queue segment, numbered
// before incarnations existed, so that they deduplicate against what the
// old agent shipped. They are encoded straight from the queue's entries
// (scribewire's encoder: the generated code's bytes, without a LogEntry
// per entry).
type batchArgs struct {
	id  string
	b   diskqueue.Batch
	buf *[]byte // reused by the sender's calls
}

// size is the bytes of the LogBatch frame encode returns.
func (a *batchArgs) size() int {
	n := int(scribeapi.BatchOverhead(a.id, a.b.Incarnation))
	for _, e := range a.b.Entries {
		n += scribewire.EntrySize(e.Category, e.Message)
	}
	return n
}

// encode returns the LogBatch frame, in the sender's buffer: room for
// the frame's head (scribeapi.LogBatchFrame fills it in), then the
// encoded arguments.
func (a *batchArgs) encode() []byte {
	size := a.size()
	b := (*a.buf)[:0]
	if cap(b) < size {
		b = make([]byte, 0, size)
	}
	b = b[:scribeapi.BatchFrameHead]
	b = scribewire.AppendBatchHead(b, a.id, int64(a.b.First), len(a.b.Entries))
	for _, e := range a.b.Entries {
		b = scribewire.AppendEntry(b, e.Category, e.Message)
	}
	b = scribewire.AppendBatchTail(b, a.b.Entries[0].Time, a.incarnation())
	if cap(b) <= 16<<20 {
		*a.buf = b // kept for the next batch
	}
	return b
}

func (a *batchArgs) incarnation() *string {
	if a.b.Incarnation == "" {
		return nil
	}
	return &a.b.Incarnation
}

// logEntries are the batch's entries for Log (an upstream without
// LogBatch).
func (a *batchArgs) logEntries() []*scribethrift.LogEntry {
	les := make([]scribethrift.LogEntry, len(a.b.Entries))
	ptrs := make([]*scribethrift.LogEntry, len(a.b.Entries))
	for i, e := range a.b.Entries {
		les[i] = scribethrift.LogEntry{Category: e.Category, Message: e.Message}
		ptrs[i] = &les[i]
	}
	return ptrs
}

// send makes one call, closing the connection if ctx ends meanwhile so
// that shutdown does not wait for the socket timeout.
func (u *upstream) send(ctx context.Context, args *batchArgs) (scribethrift.ResultCode, error) {
	stop := context.AfterFunc(ctx, func() { _ = u.c.Close() })
	defer stop()
	if !u.plainLog {
		rc, err := u.c.LogBatchFrame(ctx, args.encode())
		var ae thrift.TApplicationException
		if errors.As(err, &ae) && ae.TypeId() == thrift.UNKNOWN_METHOD {
			return rc, errNoLogBatch
		}
		return rc, err
	}
	return u.c.Log(ctx, args.logEntries())
}
