package puma

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/backoff"
	"github.com/freeway-dev/freeway/internal/coord"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/ptail"
)

// shard aggregates one bucket of one category.
type shard struct {
	p        *Puma
	category string
	bucket   int
	log      *slog.Logger
	lease    coord.Lease
	// stop ends the shard's run (a hand-off: final checkpoint, then the
	// lease is released); handingOff is set once it is called for that.
	stop       context.CancelFunc
	handingOff atomic.Bool

	mu        sync.RWMutex
	tables    []*table
	pos       ptail.Position
	highWater *dedup // per agent key
	parse     *lineParse
	dups      uint64
	entries   uint64
	gap       *gap // what the state lacks, nil when whole; replaced, never changed in place
	// copies of committed.Epoch and committed.Position for Statuses
	committedEpoch int64
	committedPos   ptail.Position

	// checkpoint state, owned by the checkpointing goroutine
	committed   commitState
	commitBytes []byte // the stored commit value, nil if none
	nextEpoch   int64
	// purgeTo, when above the committed epoch, is the epoch of an attempt
	// whose Put failed: the next attempt deletes the versions up to it
	// before it writes (checkpoint).
	purgeTo int64
	// unsure is the value of a commit that failed but may still be
	// applied, to fence before the next attempt (fenceUnsure).
	unsure  []byte
	expired []expiredRows // retention deletes still to make
	// lastCommit is when the shard last committed (or recovered), as
	// deps.Now read it: whole, so that its age is measured on the
	// monotonic clock (time.Now's reading); Unix nanoseconds would
	// measure it on the wall clock, which NTP steps (the checkpoint age
	// of a stalled shard an hour short, or every node's paged at once).
	lastCommit atomic.Pointer[time.Time]
	lag        atomic.Int64 // published segments not yet read, for Statuses
	readStall  stall        // the shard's reading's run of failures (stall.go)
	ready      chan struct{}

	// backfills build spans new to the shard (backfill.go; guarded by
	// mu); removing names the spans whose rows are still to delete.
	backfills []*backfill
	removing  []string
	appGaps   map[string]*gap // by app: what its backfill could not read
	// readAborted: the aborted epochs of the last commit, for reads of
	// evicted windows as of committedEpoch (guarded by mu).
	readAborted []epochRange
}

func newShard(p *Puma, category string, bucket int, lease coord.Lease) (*shard, error) {
	s := &shard{
		p:         p,
		category:  category,
		bucket:    bucket,
		lease:     lease,
		log:       p.log.With("category", category, "bucket", bucket),
		highWater: p.newDedup(),
		ready:     make(chan struct{}),
	}
	deps := tableDeps{budget: &p.cells, apps: p.appCells, limiter: p.rejectLog, category: category, bucket: bucket, evict: s.evictClosed}
	for _, app := range p.byCategory[category] {
		t, err := newTable(app, deps)
		if err != nil {
			return nil, err
		}
		s.tables = append(s.tables, t)
	}
	s.parse = newLineParse(s.tables)
	return s, nil
}

// run recovers the shard and then reads and checkpoints until ctx ends or
// the lease is lost. A final checkpoint is taken on a clean stop.
func (s *shard) run(ctx context.Context) error {
	ctx, cancel := coord.WhileHeld(ctx, s.lease)
	defer cancel()
	defer s.release()
	if err := s.recover(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while recovering
		}
		return fmt.Errorf("recover shard %s/%d: %w", s.category, s.bucket, err)
	}
	close(s.ready)
	reader := ptail.NewReader(s.p.deps.FS, names.BucketDir(s.category, s.bucket), s.pos, s.p.cfg.PollInterval.D(), s.log).SetMetrics(s.p.tailMetrics).SetNotifier(s.p.deps.Published)
	defer reader.Close() //nolint:errcheck // a reader holds nothing to flush
	labels := []string{names.Label(s.category), strconv.Itoa(s.bucket)}
	lag := s.p.m.segmentLag.WithLabelValues(labels...)
	defer s.p.m.segmentLag.DeleteLabelValues(labels...)

	readErr := make(chan error, 1)
	go func() { readErr <- s.read(ctx, reader, lag) }()
	waitBackfills := s.startBackfills(ctx)

	tick := time.NewTicker(s.p.cfg.CheckpointInterval.D())
	defer tick.Stop()
	var err error
	readDone := false
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err = <-readErr:
			readDone = true
			break loop
		case <-tick.C:
			if cerr := s.checkpoint(ctx); cerr != nil {
				s.log.Error("checkpoint failed; will retry", "err", cerr)
				s.p.m.checkpointErrors.Inc()
				if errors.Is(cerr, errFenced) {
					err = cerr
					break loop
				}
			}
		}
	}
	cancel()
	waitBackfills()
	if !readDone {
		if rerr := <-readErr; err == nil {
			err = rerr
		}
	}
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	// Save what was read on a clean stop (not after fencing or lease loss).
	select {
	case <-s.lease.Lost():
		s.log.Warn("puma shard lease lost; shard stops")
	default:
		if !errors.Is(err, errFenced) {
			cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
			if cerr := s.checkpoint(cctx); cerr != nil {
				s.log.Error("final checkpoint failed", "err", cerr)
			}
			ccancel()
		}
	}
	return err
}

func (s *shard) read(ctx context.Context, r *ptail.Reader, lag prometheus.Gauge) error {
	var b segment.Block
	bo := backoff.New(100*time.Millisecond, 10*time.Second)
	for {
		var pos ptail.Position
		var err error
		got := true
		if s.readStall.failing.Load() {
			// Retrying after a failure: a listing or read that succeeds
			// ends the run even when there is nothing new (Next would wait
			// for the next block, showing an idle bucket stuck until then).
			pos, got, err = r.TryNext(&b)
		} else {
			pos, err = r.Next(ctx, &b)
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ve *ptail.VanishedError
			if errors.As(err, &ve) {
				s.lost(ve)
				continue
			}
			// A dfs error (a NameNode restart, a timeout, a checksum
			// error): the reader resumes at the same position, so wait and
			// retry rather than stopping the shard and recovering it from
			// the store; a run of failures is shown (stall.go).
			wait := bo.Next()
			s.readFailed(&s.readStall, "live", r.Position(), err, wait)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
			continue
		}
		bo.Reset()
		s.readResumed(&s.readStall)
		if !got {
			continue
		}
		s.apply(&b, pos)
		n := r.Lag()
		s.lag.Store(int64(n))
		lag.Set(float64(n))
	}
}

// apply adds a block to every app of the shard and advances the position.
func (s *shard) apply(b *segment.Block, pos ptail.Position) {
	bt := newBlockTime(b.ArrivalMs, s.p.now().UnixMilli())
	s.mu.Lock()
	defer s.mu.Unlock()
	var key *agentKey
	if b.Agent != "" && len(b.Seqs) > 0 {
		var back uint64
		var backwards bool
		var evicted int
		key, back, backwards, evicted = s.highWater.touch(b.Agent, b.Seqs[0], bt.refMs)
		if backwards {
			s.p.m.regressions.Inc()
			s.p.rejectLog.Warn("puma sequence backwards "+s.category, "agent sequence went backwards; its entries are counted",
				"agent", ratelog.Clip(key.id), "first_seq", b.Seqs[0], "high_water", back, "category", s.category, "bucket", s.bucket)
		}
		if evicted > 0 {
			s.p.m.forgottenCap.Add(float64(evicted))
		}
	}
	var dups, below, n uint64
	for i, msg := range b.Messages {
		if key != nil {
			if v := s.highWater.admit(key, b.Seqs[i]); v != seqNew {
				dups++
				if v == seqBelow {
					below++
				}
				continue
			}
		}
		n++
		s.applyLine(msg, bt)
	}
	s.pos = pos
	s.dups += dups
	s.entries += n
	s.p.m.entries.Add(float64(n))
	s.p.m.duplicates.Add(float64(dups))
	s.p.m.belowWindow.Add(float64(below))
}

// snapshot runs fn with the shard's tables read-locked.
func (s *shard) snapshot(fn func(tables []*table)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	fn(s.tables)
}

// release gives the shard's cells back to the node's budget, those of
// its backfills that have not joined included (a joined backfill's cells
// are its live table's).
func (s *shard) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.tables {
		t.release()
	}
	s.highWater.release()
	for _, bf := range s.backfills {
		bf.t.release()
		bf.dedup.release()
	}
}

func isBadTime(err error) bool { return errors.Is(err, apps.ErrBadTime) }

// committedAt notes that the shard committed now (or recovered).
func (s *shard) committedAt() {
	now := s.p.now()
	s.lastCommit.Store(&now)
}

// lastCommitted is when the shard last committed (or recovered); zero
// before.
func (s *shard) lastCommitted() time.Time {
	if t := s.lastCommit.Load(); t != nil {
		return *t
	}
	return time.Time{}
}
