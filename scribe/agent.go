package scribe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/diskqueue"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// Agent is the Scribe sidecar: a Scribe server in front of a disk queue,
// file tailers feeding the same queue, and a shipper draining it upstream.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	clock clock
	q     *diskqueue.Queue
	srv   *scribeapi.Server
	c     *counters
	tails []*tailer
	tls   *auth.TLS // the process's, for the upstream link

	// validCats caches categories that passed apps.ValidCategory (a
	// regexp), bounded so that a hostile client cannot grow it.
	validCats sync.Map
	nValid    atomic.Int64
	full      atomic.Bool // the queue refused the last Log call as full
	ran       atomic.Bool
}

// Option configures an Agent beyond its Config.
type Option func(*options)

type options struct{ shared scribeapi.Shared }

// WithShared gives the agent's Scribe port the process's in-flight byte
// budget and fb303 control hooks.
func WithShared(s scribeapi.Shared) Option { return func(o *options) { o.shared = s } }

// New opens the queue in cfg.QueueDir (truncating a torn tail) and binds
// cfg.Listen, so that Addr works before Run. Metrics are registered with
// reg (nil: not registered).
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Agent, error) {
	return newAgent(cfg, log, reg, realClock{}, opts...)
}

func newAgent(cfg Config, log *slog.Logger, reg prometheus.Registerer, clk clock, opts ...Option) (*Agent, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.QueueDir == "" {
		return nil, config.Errorf("$.agent.queue_dir", "must be set")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "agent")
	q, err := diskqueue.Open(diskqueue.Options{
		Dir: cfg.QueueDir, MaxBytes: int64(cfg.MaxQueueBytes), SegmentBytes: int64(cfg.SegmentBytes), Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("open agent queue: %w", err)
	}
	a := &Agent{cfg: cfg, log: log, clock: clk, q: q, c: newCounters()}
	for _, tc := range cfg.Tail {
		a.tails = append(a.tails, newTailer(a, tc))
	}
	if reg != nil {
		if err := registerMetrics(reg, a.c, q, a.tails); err != nil {
			q.Close()
			return nil, fmt.Errorf("register agent metrics: %w", err)
		}
	}
	info := scribeapi.Info{Name: "freeway-agent", Version: version(), Counters: func() map[string]int64 { return a.c.fb303(a.q) },
		Control: o.shared.Control, Metrics: reg}
	a.tls = o.shared.TLS
	a.srv, err = scribeapi.Listen(cfg.Listen, a, info, cfg.PortConfig.Limits(), log,
		thriftsrv.WithName("agent"), thriftsrv.WithBudget(o.shared.Budget), thriftsrv.WithTLS(cfg.listenTLS(a.tls)))
	if err != nil {
		q.Close()
		return nil, fmt.Errorf("start agent server: %w", err)
	}
	return a, nil
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// Addr is the address apps log to.
func (a *Agent) Addr() string { return a.srv.Addr() }

// ID is the agent's stable identity, sent with every batch.
func (a *Agent) ID() string { return a.q.ID() }

// Run serves apps, tails files and ships upstream until ctx ends or the
// queue fails, then stops every goroutine and closes the queue. It may be
// called once.
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
	for _, t := range a.tails {
		do(t.run)
	}
	do(func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			return nil
		case <-a.q.Failed():
			return fmt.Errorf("agent queue: %w", a.q.Err())
		}
	})
	wg.Wait()
	if err := a.q.Close(); err != nil && first == nil {
		first = fmt.Errorf("close agent queue: %w", err)
	}
	st := a.q.Stats()
	a.log.Info("agent stopped", "queue_entries", st.Entries, "next_seq", st.NextSeq)
	return first
}

// Log is the Scribe call apps make. Valid entries are made durable in the
// queue before it answers OK. Invalid entries (empty or malformed category,
// message over max_message_bytes) are dropped, counted and logged, and the
// rest of the call is accepted: answering TRY_LATER would make a stock
// client resend the same poison entry forever. When the queue is full the
// whole call is answered TRY_LATER and nothing is kept.
func (a *Agent) Log(ctx context.Context, msgs []*scribe.LogEntry) (scribe.ResultCode, error) {
	return a.accept(msgs, a.clock.Now().UnixMilli()), nil
}

// LogBatch accepts a batch from another agent (agent chains) like Log;
// the entries get this agent's sequence numbers, and keep the time the
// first agent received them.
func (a *Agent) LogBatch(ctx context.Context, b *scribe.Batch) (scribe.ResultCode, error) {
	if b == nil {
		return scribe.ResultCode_OK, nil
	}
	t := b.ReceivedAtMs
	if t <= 0 {
		t = a.clock.Now().UnixMilli()
	}
	return a.accept(b.Messages, t), nil
}

func (a *Agent) accept(msgs []*scribe.LogEntry, now int64) scribe.ResultCode {
	es := make([]diskqueue.Entry, 0, len(msgs))
	for _, m := range msgs {
		if m == nil {
			continue
		}
		if r := a.invalid(m); r != "" {
			a.c.rejected[r].Add(1)
			a.log.Warn("invalid entry dropped", "reason", r, "category", clip(m.Category), "bytes", len(m.Message))
			continue
		}
		es = append(es, diskqueue.Entry{Category: m.Category, Message: m.Message, Time: now})
	}
	if len(es) == 0 {
		return scribe.ResultCode_OK
	}
	if _, err := a.q.Append(es); err != nil {
		a.c.tryLaterSent.Add(1)
		switch {
		case errors.Is(err, diskqueue.ErrFull):
			a.c.tryLaterFull.Add(1)
			if !a.full.Swap(true) {
				a.log.Warn("queue full, answering try_later", "max_queue_bytes", a.cfg.MaxQueueBytes, "queue_entries", a.q.Stats().Entries)
			}
		case errors.Is(err, diskqueue.ErrClosed):
		default:
			a.log.Error("queue append failed, answering try_later", "err", err)
		}
		return scribe.ResultCode_TRY_LATER
	}
	if a.full.Swap(false) {
		a.log.Info("queue accepting again")
	}
	a.c.receivedScribe.Add(int64(len(es)))
	return scribe.ResultCode_OK
}

func (a *Agent) invalid(m *scribe.LogEntry) string {
	switch {
	case m.Category == "":
		return reasonEmptyCategory
	case int64(len(m.Message)) > int64(a.cfg.MaxMessageBytes):
		return reasonTooLarge
	case !a.validCategory(m.Category):
		return reasonInvalidCategory
	}
	return ""
}

// validCategory is apps.ValidCategory (what calligraphus accepts, so that
// an entry is refused here, visibly, rather than dropped upstream).
func (a *Agent) validCategory(c string) bool {
	if _, ok := a.validCats.Load(c); ok {
		return true
	}
	if !apps.ValidCategory(c) {
		return false
	}
	if a.nValid.Load() < 10000 {
		if _, loaded := a.validCats.LoadOrStore(c, struct{}{}); !loaded {
			a.nValid.Add(1)
		}
	}
	return true
}

// clip shortens a client-supplied string for a log line.
func clip(s string) string {
	if len(s) > 256 {
		return s[:256] + "..."
	}
	return s
}
