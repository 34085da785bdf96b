package scribe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/diskqueue"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/scribewire"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// Agent is the Scribe sidecar: a Scribe server in front of a disk queue,
// file tailers feeding the same queue, and a shipper draining it upstream.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	rl    *ratelog.Limiter // what clients and a full disk can trigger at will
	clock clock
	q     *diskqueue.Queue
	srv   *scribeapi.Server
	c     *counters
	fb303 func() map[string]int64 // getCounters: c, read through the metrics
	tails []*tailer
	tls   *auth.TLS // the process's, for the upstream link
	// maxEntry is the largest entry (its scribewire.EntrySize) taken:
	// one a batch of it alone, forwarded by a writer, keeps within
	// max_call_bytes and its envelope (see shippable).
	maxEntry int64
	// members are the live writers when upstream is a coordinator URL
	// (nil otherwise); source hands each shipper its upstreamSource.
	members *memberSource
	ran     atomic.Bool
	// entries pools the []diskqueue.Entry a call is queued from.
	entries sync.Pool
	// fileHook, a crash test's, runs before each change to the queue's
	// files and to the tail positions (diskqueue.Options.FileHook).
	fileHook func(op diskqueue.FileOp, path string) error
}

// Deps are what the agent needs from the wiring: the common ones only.
// Of Shared, its Scribe port takes the budget, the fb303 control hooks
// and the TLS (unless Config.TLS is false), and the shipper dials
// upstream with the TLS.
type Deps struct {
	component.Common
	// Writers is the coordinator of Config.Upstream when that is a
	// coordinator URL (CoordUpstream), opened by the wiring: the live
	// writers are found in its layout.WriterMembers group. Unused
	// otherwise.
	Writers coord.Coord
}

// New opens the queue in cfg.QueueDir (a new incarnation; a torn tail is
// truncated) and binds cfg.Listen, so that Addr works before Run.
func New(cfg Config, deps Deps) (*Agent, error) {
	return newAgent(cfg, deps, nil, nil)
}

// newAgent is New with a clock for the waits (nil: deps.Now and real
// timers) and a hook before each change to the agent's files (nil:
// none); tests give theirs.
func newAgent(cfg Config, deps Deps, clk clock, fileHook func(diskqueue.FileOp, string) error) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.QueueDir == "" {
		return nil, config.Errorf("queue_dir", "must be set")
	}
	deps.Common = deps.Defaults()
	if clk == nil {
		clk = realClock{now: deps.Now}
	}
	log := deps.Logger("agent")
	q, err := diskqueue.Open(diskqueue.Options{
		Dir: cfg.QueueDir, MaxBytes: int64(cfg.MaxQueueBytes), SegmentBytes: int64(cfg.SegmentBytes),
		Compress: cfg.QueueCompress, CompressAbove: min(int64(cfg.QueueCompressAbove), int64(cfg.MaxQueueBytes)/2), Logger: log,
		FileHook: fileHook,
	})
	if err != nil {
		return nil, fmt.Errorf("open agent queue: %w", err)
	}
	a := &Agent{cfg: cfg, log: log, rl: ratelog.New(log, time.Minute, 5), clock: clk, q: q, c: newCounters(),
		maxEntry: shippable(int64(cfg.MaxCallBytes), q.ID()), fileHook: fileHook}
	a.entries.New = func() any { return new([]diskqueue.Entry) }
	for _, tc := range cfg.Tail {
		a.tails = append(a.tails, newTailer(a, tc))
	}
	own, reg := deps.OwnMetrics()
	url, coordURL := CoordUpstream(cfg.Upstream)
	if coordURL && deps.Writers == nil {
		_ = q.Close()
		return nil, config.Errorf("upstream", "is the coordinator URL %s, but no coordinator was opened for it", url)
	}
	err = registerMetrics(reg, a.c, q, a.tails)
	if coordURL && err == nil {
		a.members = newMemberSource(deps.Writers, url, q.ID(), cfg.UpstreamTimeout.D(), clk.Now)
		err = registerUpstreamMetrics(reg, a.members)
	}
	if err != nil {
		_ = q.Close()
		return nil, fmt.Errorf("register agent metrics: %w", err)
	}
	a.fb303 = scribeapi.Counters(own, fb303Counters...)
	info := scribeapi.Info{Name: "freeway-agent", Version: deps.Version, Counters: a.fb303,
		Control: deps.Control, Metrics: deps.Metrics, Now: deps.Now}
	a.tls = deps.TLS
	a.srv, err = scribeapi.Listen(cfg.Listen, a, info, cfg.PortConfig.Limits(), log,
		thriftsrv.WithName("agent"), thriftsrv.WithBudget(deps.Budget), thriftsrv.WithTLS(cfg.listenTLS(a.tls)))
	if err != nil {
		_ = q.Close()
		return nil, err // "listen on <addr>: ...", under the caller's "start agent"
	}
	return a, nil
}

// incarnationHex is the length of the queue's incarnation as batches
// carry it (16 bytes in hex).
const incarnationHex = 32

// shippable is the largest entry (its scribewire.EntrySize) the agent
// can ship: a batch of it alone, with this agent's id and incarnation,
// forwarded by a writer (8 bytes more: its sequence number), keeps
// within maxCall and its envelope. An upstream's limit must be at least
// the agent's; a larger entry, acknowledged, could never be shipped, and
// would hold back every entry queued after it.
func shippable(maxCall int64, id string) int64 {
	return maxCall + thriftsrv.Envelope - scribeapi.BatchOverhead(id, strings.Repeat("0", incarnationHex)) - 8
}

// Addr is the address apps log to.
func (a *Agent) Addr() string { return a.srv.Addr() }

// ID is the agent's stable identity, sent with every batch.
func (a *Agent) ID() string { return a.q.ID() }

// Status is the agent's state for /api/v1/status: its queue.
type Status struct {
	ID string `json:"id"`
	// QueueEntries and QueueBytes are queued and not yet acknowledged
	// upstream.
	QueueEntries  int64 `json:"queue_entries"`
	QueueBytes    int64 `json:"queue_bytes"`
	QueueSegments int   `json:"queue_segments"`
	// LostEntries counts entries skipped as damaged since start.
	LostEntries int64 `json:"lost_entries"`
	// Unavailable: appends are refused until the queue's files are
	// repaired.
	Unavailable bool `json:"unavailable"`
}

// Status reports the queue (cheap: one lock of the queue).
func (a *Agent) Status() Status {
	st := a.q.Stats()
	return Status{ID: a.q.ID(), QueueEntries: st.Entries, QueueBytes: st.Bytes, QueueSegments: st.Segments, LostEntries: st.Lost, Unavailable: st.Unavailable}
}

// Run serves apps, tails files and ships upstream until ctx ends, then
// stops every goroutine and closes the queue. A full or failing disk does
// not stop it: calls are answered TRY_LATER meanwhile, and what is durable
// keeps shipping. It may be called once.
func (a *Agent) Run(ctx context.Context) error {
	if !a.ran.CompareAndSwap(false, true) {
		return errors.New("run agent: already run")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	do := func(f func(context.Context) error) {
		wg.Go(func() {
			if err := f(ctx); err != nil {
				errMu.Lock()
				if first == nil {
					first = err
				}
				errMu.Unlock()
				cancel()
			}
		})
	}
	a.log.Info("agent running", "addr", a.Addr(), "upstream", a.cfg.Upstream, "queue_dir", a.cfg.QueueDir,
		"id", a.q.ID(), "queue_entries", a.q.Stats().Entries, "tails", len(a.tails))
	do(a.srv.Serve)
	do(a.ship)
	if a.members != nil {
		do(a.watchWriters)
	}
	for _, t := range a.tails {
		do(t.run)
	}
	wg.Wait()
	if err := a.q.Close(); err != nil && first == nil {
		first = fmt.Errorf("close agent queue: %w", err)
	}
	st := a.q.Stats()
	if st.Entries > 0 {
		// Only an agent started again on this directory sends them: one
		// given another queue_dir (or data_dir) never will.
		a.log.Warn("agent stopped with entries not yet shipped; an agent started on the same queue_dir sends them",
			"queue_entries", st.Entries, "queue_dir", a.cfg.QueueDir, "next_seq", st.NextSeq)
	} else {
		a.log.Info("agent stopped", "queue_entries", st.Entries, "next_seq", st.NextSeq)
	}
	return first
}

// Log is the Scribe call apps make. The entries are made durable in the
// queue before it answers OK, whatever their category (any bytes) and
// size (the call size bounds them). Only entries with an empty category
// are dropped and counted, as stock Scribe does. When the queue cannot
// take the entries (full, disk full or failing, closing) the whole call
// is answered TRY_LATER and nothing of it is kept.
//
// The port gives most calls to LogEntries instead (decoded without a
// struct per entry); Log gets those its fast path leaves to the
// generated code, and takes them the same way.
func (a *Agent) Log(ctx context.Context, msgs []*scribethrift.LogEntry) (scribethrift.ResultCode, error) {
	return a.accept(wireEntries(msgs)), nil
}

// LogEntries is Log for entries decoded by the port's fast path.
func (a *Agent) LogEntries(ctx context.Context, msgs []scribewire.Entry) (scribethrift.ResultCode, error) {
	return a.accept(msgs), nil
}

// LogBatch accepts a batch from another agent (agent chains) like Log:
// the entries get this agent's sequence numbers and arrival time (a
// client of this port must not choose arrival times, so received_at_ms
// is ignored).
func (a *Agent) LogBatch(ctx context.Context, b *scribethrift.Batch) (scribethrift.ResultCode, error) {
	if b == nil {
		return scribethrift.ResultCode_OK, nil
	}
	return a.accept(wireEntries(b.Messages)), nil
}

// LogBatchEntries is LogBatch for batches decoded by the fast path.
func (a *Agent) LogBatchEntries(ctx context.Context, b *scribewire.Batch, msgs []scribewire.Entry) (scribethrift.ResultCode, error) {
	if b == nil {
		return scribethrift.ResultCode_OK, nil
	}
	return a.accept(msgs), nil
}

// wireEntries views generated entries as the fast path's (nil ones
// dropped).
func wireEntries(msgs []*scribethrift.LogEntry) []scribewire.Entry {
	es := make([]scribewire.Entry, 0, len(msgs))
	var cat []byte // one copy per run of equal categories
	for _, m := range msgs {
		if m != nil {
			if string(cat) != m.Category || cat == nil {
				cat = []byte(m.Category)
			}
			es = append(es, scribewire.Entry{Category: cat, Message: m.Message})
		}
	}
	return es
}

// accept queues a call's entries; their bytes need to live only until it
// returns (the queue copies them into its records).
func (a *Agent) accept(msgs []scribewire.Entry) scribethrift.ResultCode {
	now := a.clock.Now().UnixMilli()
	esp := a.entries.Get().(*[]diskqueue.Entry)
	defer func() {
		clear(*esp) // no references to the call's bytes in the pool
		if cap(*esp) <= 1<<16 {
			a.entries.Put(esp)
		}
	}()
	es := (*esp)[:0]
	// A call's entries are mostly of one category: its string is made
	// once per run of equal categories, not per entry.
	var category string
	for i := range msgs {
		m := &msgs[i]
		if len(m.Category) == 0 {
			a.c.rejected[reasonEmptyCategory].Add(1)
			a.rl.Warn("blank category", "received blank category", "bytes", len(m.Message))
			continue
		}
		if string(m.Category) != category {
			category = string(m.Category)
		}
		if n := int64(scribewire.EntrySize(category, m.Message)); n > a.maxEntry {
			// Refused, not acknowledged: the app hears of it, and the
			// queue behind it keeps moving.
			a.c.tryLater[tryLaterTooLarge].Add(1)
			a.rl.Error("try_later "+tryLaterTooLarge, "entry too large to ship upstream within max_call_bytes; call answered try_later",
				"category", ratelog.Clip(category), "bytes", len(m.Message), "max_call_bytes", a.cfg.MaxCallBytes)
			return scribethrift.ResultCode_TRY_LATER
		}
		es = append(es, diskqueue.Entry{Category: category, Message: m.Message, Time: now})
	}
	*esp = es
	if len(es) == 0 {
		return scribethrift.ResultCode_OK
	}
	if _, err := a.q.Append(es); err != nil {
		reason := tryLaterWriteError
		switch {
		case errors.Is(err, diskqueue.ErrFull):
			reason = tryLaterQueueFull
		case errors.Is(err, diskqueue.ErrClosed):
			reason = tryLaterClosed
		case errors.Is(err, diskqueue.ErrTooLarge):
			reason = tryLaterTooLarge
		}
		a.c.tryLater[reason].Add(1)
		a.rl.Warn("try_later "+reason, "cannot queue a call, answering try_later", "reason", reason,
			"entries", len(es), "queue_entries", a.q.Stats().Entries, "err", err)
		return scribethrift.ResultCode_TRY_LATER
	}
	a.c.receivedScribe.Add(int64(len(es)))
	return scribethrift.ResultCode_OK
}
