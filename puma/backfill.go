package puma

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/freeway-dev/freeway/internal/backoff"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/ptail"
)

// Backfill: a span (an app's windows of one length, under the fingerprint
// of its state's shape) that a shard's commit row does not list as built
// is new to the shard: the app was added, or changed so that its state
// has another shape (the fingerprint), or every span of an app that reads
// its lines otherwise (Reads). Such a span is built from the
// segments still in the dfs, in the background, while the shard's other
// spans run live:
//
//   - On recovery, the shard makes a backfill per app with new spans: a
//     table over those spans, with its own reader starting at the first
//     segment of the bucket, its own dedup high waters and seen-windows
//     (it deduplicates as the first reading did; its windows are rows
//     under the shard's window prefix, 0xff and the app's name, written
//     and read with the shard's and deleted after it joins) and its own
//     watermark. Rows a span may have
//     from an earlier life (an app removed and added again) are deleted
//     first: the span starts empty.
//   - Live lines skip the spans being built (pending); the backfill
//     applies the lines before the shard's position to them, under the
//     shard's lock, one block at a time. When it reaches the shard's
//     position it joins: the spans stop being pending and take the live
//     lines from there on. Every line is counted once: before the join by
//     the backfill, after it live.
//   - Its cells are checkpointed with the shard's, at the shard's epochs,
//     and its progress (position, high waters, watermark) is in the same
//     commit row (backfill, by app), so a restart resumes it where the
//     last commit left it, with the cells of that commit: exactly once,
//     by the shard's own commit and purge. The commit that follows the
//     join lists the spans as built (spans) and drops the progress.
//   - A commit row from before backfills (no spans) lists nothing: every
//     span of the apps configured then is taken as built, as before.
//
// Rows of spans the commit row lists but no app has any more (an app
// removed, or changed: its old fingerprint) are deleted after the next
// commit, which lists them as removed until the delete has been done.
// Not after a grace: nothing can read them again (an app added back is
// built afresh from the dfs, since its rows would lack what came while it
// was away), and a node still running the old configuration that takes
// the shard builds the app again rather than reading them.
//
// What a backfill cannot do: build what the dfs no longer holds. One that
// starts after retention deleted the bucket's first segments builds from
// what is left, and the app's answers over their time list the shard as
// incomplete (the app's gap, app_gaps in the commit row, beside the
// shard's own). While it runs, answers of the app over the spans it
// builds lack the lines it has not read yet: they list the shard as
// incomplete (notBuilt), from memory and from the store, and GET
// /api/v1/apps says "backfilling".
// Segment retention keeps the segments a backfill has yet to read
// (CommittedPosition is the lowest of the shard's and its backfills')
// once a commit lists the backfill. Until then, from the recovery that
// starts it to the shard's first checkpoint (and for a pass that read the
// commit row before that), retention goes by the shard's position and
// may delete the bucket's first segments after recovery read the
// retention mark: a backfill at the start of the bucket reads the mark
// again once its reader has listed the bucket (startGap), so that its gap
// covers what its reader never saw.

// backfillState is a backfill's progress in the commit row.
type backfillState struct {
	Spans         []string          `json:"spans"`    // the spans it builds, app@fingerprint
	Position      ptail.Position    `json:"position"` // where it reads on
	HighWater     map[string]uint64 `json:"high_water,omitempty"`
	HighWaterSeen []int64           `json:"high_water_seen_ms,omitempty"`
	ArrivalMs     int64             `json:"arrival_ms,omitempty"`
	Watermark     int64             `json:"watermark"`
}

// backfill builds the new spans of one app in one shard.
type backfill struct {
	live  *table // the shard's table of the app
	t     *table // the spans being built (shared with live), its watermark
	spans []string
	dedup *dedup
	pos   ptail.Position
	// read and left count the segments read and still to read (for
	// AppState).
	read, left atomic.Int64
	stall      stall // its reading's run of failures (stall.go)
	// started: its reader has listed the bucket and the retention mark
	// was read after that (startGap), in this run.
	started bool
}

// planBackfills decides, on recovery, which spans of the shard's tables
// are built, which are to be built (a backfill each app, resumed from the
// commit row or started afresh) and which spans' rows are to be deleted.
// It runs before the cells are loaded: rows of a span started afresh are
// deleted here, so that none is loaded; it returns the names of those
// spans. (The spans of an app that now reads its lines otherwise are no
// longer listed as built: unlistReread took them out of the claim.)
func (s *shard) planBackfills(ctx context.Context, E int64) (fresh map[string]bool, err error) {
	c := s.committed
	current := map[string]bool{}
	for _, t := range s.tables {
		for _, sp := range t.spans {
			current[spanName(t.app.Name(), sp)] = true
		}
	}
	// What to delete: spans listed as built or being built, or still to
	// delete, that no app has now.
	s.removing = nil
	old := append(slices.Clone(c.Removed), c.Spans...)
	for _, b := range c.Backfill {
		old = append(old, b.Spans...)
	}
	slices.Sort(old)
	for _, name := range slices.Compact(old) {
		if !current[name] {
			s.removing = append(s.removing, name)
		}
	}
	s.appGaps = nil
	for app, g := range c.AppGaps {
		if s.hasApp(app) {
			s.setAppGap(app, g)
		}
	}
	if E == 0 || c.Spans == nil {
		return nil, nil // a new shard reads every segment; an older row: all built
	}
	built := map[string]bool{}
	for _, name := range c.Spans {
		built[name] = true
	}
	s.backfills = nil
	fresh = map[string]bool{}
	for _, t := range s.tables {
		var pending []int
		var spans []string
		for i, sp := range t.spans {
			if name := spanName(t.app.Name(), sp); !built[name] {
				pending, spans = append(pending, i), append(spans, name)
			}
		}
		if len(pending) == 0 {
			continue
		}
		bf, err := s.newBackfill(t, pending, spans)
		if err != nil {
			return nil, err
		}
		// Listed before its state is loaded: should recovery fail on the
		// way, release gives back what was charged for it.
		s.backfills = append(s.backfills, bf)
		if prior := c.Backfill[t.app.Name()]; prior != nil && slices.Equal(prior.Spans, spans) {
			bf.pos = prior.Position
			bf.t.watermark = prior.Watermark
			bf.t.ev.closed = prior.Watermark - t.app.LatenessMs
			s.p.m.forgottenCap.Add(float64(bf.dedup.load(prior.HighWater, prior.HighWaterSeen, prior.ArrivalMs, c.CommitMs)))
			if p := backfillWindowPrefix(s.category, s.bucket, t.app.Name()); E > 0 {
				if err := s.readWindows(ctx, c, bf.dedup, p, store.PrefixEnd(p)); err != nil {
					return nil, err
				}
			}
			s.log.Info("puma backfill resumes", "app", t.app.Name(), "spans", spans, "position", bf.pos.String())
		} else {
			p := backfillWindowPrefix(s.category, s.bucket, t.app.Name())
			if err := s.p.deps.Store.DeleteUpTo(ctx, s.p.cfg.Table, p, store.PrefixEnd(p), E); err != nil {
				return nil, fmt.Errorf("clear the windows of app %s's backfill: %w", t.app.Name(), err)
			}
			for _, name := range spans {
				prefix := shardPrefix(s.category, s.bucket) + name + "/"
				if err := s.p.deps.Store.DeleteUpTo(ctx, s.p.cfg.Table, prefix, store.PrefixEnd(prefix), E); err != nil {
					return nil, fmt.Errorf("clear rows of span %s to build it: %w", name, err)
				}
				fresh[name] = true
			}
			// Built from the first segment left: what retention deleted
			// before is missing, and answers say so (as for the shard's
			// own gap).
			g, err := s.retentionGap(ptail.Position{})
			if err != nil {
				return nil, err
			}
			s.setAppGap(t.app.Name(), g)
			if g != nil {
				s.log.Warn("backfill starts after segments retention deleted; answers over their time say the app is incomplete",
					"app", t.app.Name(), "deleted_through", g.Segment, "arrived_before", fmtMs(g.ThroughMs))
			}
			s.log.Info("puma backfill starts", "app", t.app.Name(), "spans", spans)
		}
	}
	return fresh, nil
}

// unlistReread takes out of state, a commit row about to be claimed, the
// spans and the backfill of every app that now reads its lines otherwise
// (Reads: its where filter, time field or format changed): its cells have
// the shape they had but hold other lines, and answers would mix the two
// readings, so it is built again (planBackfills deletes its rows). Out of
// the claim, before any row is deleted: a node of the configuration
// before (the change rolled back) or a stale one that takes the shard
// next builds them again too, rather than taking what is left of the
// rows for the whole.
func (s *shard) unlistReread(state *commitState) {
	for _, t := range s.tables {
		app := t.app.Name()
		if !state.readsChanged(t.app) {
			continue
		}
		state.Spans = slices.DeleteFunc(state.Spans, func(n string) bool { return strings.HasPrefix(n, app+"@") })
		delete(state.Backfill, app)
		s.log.Info("puma app reads its lines otherwise; its windows are built again", "app", app)
	}
}

// newBackfill makes the backfill of span indexes pending of table live.
func (s *shard) newBackfill(live *table, pending []int, spans []string) (*backfill, error) {
	t, err := newTable(live.app, live.deps)
	if err != nil {
		return nil, err
	}
	t.building = true
	t.deps.evict = nil
	// The spans are the live table's, their windows' key indexes hashed
	// with its seed: a key hashed with another would not be found again
	// once an index has grown (and every line of it would make a cell of
	// its own, of which the store keeps one).
	t.seed = live.seed
	t.spans = t.spans[:0]
	for _, i := range pending {
		sp := live.spans[i]
		sp.pending = true
		t.spans = append(t.spans, sp)
	}
	t.ev = newEvictState(len(t.spans))
	live.pending = len(pending)
	return &backfill{live: live, t: t, spans: spans, dedup: s.p.newDedup()}, nil
}

// startBackfills runs the shard's backfills until they join or ctx ends;
// the function it returns waits for them.
func (s *shard) startBackfills(ctx context.Context) (wait func()) {
	s.mu.RLock()
	bfs := slices.Clone(s.backfills)
	s.mu.RUnlock()
	done := make(chan struct{}, len(bfs))
	for _, bf := range bfs {
		go func() {
			defer func() { done <- struct{}{} }()
			if err := s.runBackfill(ctx, bf); err != nil && ctx.Err() == nil {
				s.log.Error("puma backfill stopped", "app", bf.live.app.Name(), "err", err)
			}
		}()
	}
	return func() {
		for range bfs {
			<-done
		}
	}
}

// runBackfill reads the bucket from the backfill's position to the
// shard's and joins.
func (s *shard) runBackfill(ctx context.Context, bf *backfill) error {
	r := s.backfillReader(bf)
	defer r.Close() //nolint:errcheck // a reader holds nothing to flush
	bo := backoff.New(100*time.Millisecond, 10*time.Second)
	for {
		joined, err := s.backfillStep(bf, r, 0)
		if joined {
			return nil
		}
		wait := s.p.cfg.PollInterval.D()
		if err != nil {
			wait = bo.Next()
			s.readFailed(&bf.stall, "backfill:"+bf.live.app.Name(), r.Position(), err, wait)
		} else {
			bo.Reset()
			s.readResumed(&bf.stall)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

func (s *shard) backfillReader(bf *backfill) *ptail.Reader {
	return ptail.NewReader(s.p.deps.FS, names.BucketDir(s.category, s.bucket), bf.pos, s.p.cfg.PollInterval.D(), s.log).SetMetrics(s.p.tailMetrics)
}

// backfillStep applies the blocks r has now (at most limit of them, if
// limit > 0), up to the shard's position, and joins the backfill once it
// is there. It returns whether it joined.
func (s *shard) backfillStep(bf *backfill, r *ptail.Reader, limit int) (joined bool, err error) {
	if !bf.started && bf.pos == (ptail.Position{}) {
		if err := s.startGap(bf, r); err != nil {
			return false, err
		}
	}
	var b segment.Block
	for n := 0; limit <= 0 || n < limit; n++ {
		s.mu.Lock()
		if !bf.pos.Before(s.pos) {
			s.join(bf)
			s.mu.Unlock()
			return true, nil
		}
		s.mu.Unlock()
		seg := r.Position().Segment
		pos, ok, err := r.TryNext(&b)
		if err != nil {
			var ve *ptail.VanishedError
			if errors.As(err, &ve) {
				s.lost(ve)
				continue
			}
			return false, err
		}
		if !ok {
			// Everything published is read. The shard may be past it
			// only by a segment it skipped whole (after it, offset -1).
			s.mu.Lock()
			joined = s.pos.Segment == bf.pos.Segment && s.pos.Offset < 0
			if joined {
				s.join(bf)
			}
			s.mu.Unlock()
			return joined, nil
		}
		if pos.Segment != seg {
			bf.read.Add(1)
		}
		bf.left.Store(int64(r.Lag()))
		s.mu.Lock()
		bf.apply(&b, s.p.now().UnixMilli())
		bf.pos = pos
		s.mu.Unlock()
	}
	return false, nil
}

// startGap widens the app's gap, before a backfill at the start of the
// bucket reads a block, by the segments retention deleted before its
// reader listed the bucket: the reader never sees them, so no vanished
// segment tells of them. The retention mark read after that listing
// covers them (retention writes it before it deletes); the one
// planBackfills read at recovery may not, since retention decides from
// the commit row, which lists the backfill only from the shard's first
// checkpoint on, and may have read it before that.
func (s *shard) startGap(bf *backfill, r *ptail.Reader) error {
	if err := r.List(); err != nil {
		return err
	}
	g, err := s.retentionGap(ptail.Position{})
	if err != nil {
		return err
	}
	app := bf.live.app.Name()
	s.mu.Lock()
	defer s.mu.Unlock()
	bf.started = true
	prev := s.appGaps[app]
	if g == nil || prev != nil && prev.Segment >= g.Segment && prev.ThroughMs >= g.ThroughMs {
		return nil
	}
	s.setAppGap(app, prev.with(*g))
	s.log.Warn("retention deleted segments before the backfill listed its bucket; answers over their time say the app is incomplete",
		"app", app, "deleted_through", g.Segment, "arrived_before", fmtMs(g.ThroughMs))
	return nil
}

// apply adds a block to the spans being built, deduplicated by the
// backfill's own high waters (as shard.apply does live); s.mu is held.
func (bf *backfill) apply(b *segment.Block, nowMs int64) {
	bt := newBlockTime(b.ArrivalMs, nowMs)
	var key *agentKey
	if b.Agent != "" && len(b.Seqs) > 0 {
		key, _, _, _ = bf.dedup.touch(b.Agent, b.Seqs[0], bt.refMs)
	}
	for i, msg := range b.Messages {
		if key != nil && bf.dedup.admit(key, b.Seqs[i]) != seqNew {
			continue
		}
		bf.t.apply(msg, bt)
	}
}

// join makes the backfill's spans live; s.mu is held.
func (s *shard) join(bf *backfill) {
	live := bf.live
	for _, sp := range bf.t.spans {
		sp.pending = false
	}
	live.pending = 0
	// The cells are accounted in the budgets already.
	live.ncells += bf.t.ncells
	live.bytes += bf.t.bytes
	live.watermark = max(live.watermark, bf.t.watermark)
	// The built windows are committed only up to the backfill's own
	// closed horizon. Until the next commit, the live one (its committed
	// watermark's) must not evict beyond that: a checkpoint still writing
	// may have taken their cells, and should it fail they would leave
	// memory without being in the store.
	live.ev.closed = min(live.ev.closed, bf.t.ev.closed)
	live.ev.windows += bf.t.ev.windows
	live.ev.cells += bf.t.ev.cells
	s.backfills = slices.DeleteFunc(s.backfills, func(o *backfill) bool { return o == bf })
	s.dropBackfillWindows(bf)
	bf.dedup.release()
	s.log.Info("puma backfill caught up; its windows are live", "app", live.app.Name(), "spans", bf.spans, "position", bf.pos.String())
}

// snapshotBackfills puts the built spans, the backfills' progress and the
// spans whose rows are still to delete in state; s.mu is held.
func (s *shard) snapshotBackfills(state *commitState) {
	for _, t := range s.tables {
		for _, sp := range t.spans {
			if !sp.pending {
				state.Spans = append(state.Spans, spanName(t.app.Name(), sp))
			}
		}
	}
	slices.Sort(state.Spans)
	if state.Spans == nil {
		state.Spans = []string{}
	}
	for _, bf := range s.backfills {
		bf.dedup.expire()
		hw, seen := bf.dedup.save()
		if state.Backfill == nil {
			state.Backfill = map[string]*backfillState{}
		}
		state.Backfill[bf.live.app.Name()] = &backfillState{
			Spans: bf.spans, Position: bf.pos, HighWater: hw, HighWaterSeen: seen, ArrivalMs: bf.dedup.clockMs, Watermark: bf.t.watermark,
		}
	}
	state.Removed = slices.Clone(s.removing)
	state.AppGaps = maps.Clone(s.appGaps)
	state.Reads, state.ReadsForm = map[string]string{}, map[string]string{}
	for _, t := range s.tables {
		state.Reads[t.app.Name()] = readsOf(t.app)
		state.ReadsForm[t.app.Name()] = readsFormOf(t.app)
	}
}

// hasApp reports whether the shard has a table of app.
func (s *shard) hasApp(app string) bool {
	return slices.ContainsFunc(s.tables, func(t *table) bool { return t.app.Name() == app })
}

// setAppGap sets (g nil: clears) what app's state lacks; s.mu is held or
// the shard is not running yet.
func (s *shard) setAppGap(app string, g *gap) {
	if g == nil {
		delete(s.appGaps, app)
		return
	}
	if s.appGaps == nil {
		s.appGaps = map[string]*gap{}
	}
	s.appGaps[app] = g
}

// notBuilt is why the answers of a span being built (or not built yet)
// lack lines: those its backfill has not read.
const notBuilt = "incomplete: these windows of the app are being built from the dfs (backfill: the app was added or changed); the lines it has not read yet are missing"

// incomplete says why a committed state's answers of pl's app and span
// over windows from fromMs lack lines, "" if they do not: the span is
// not built in it (a backfill's part, or none: the state is of a
// configuration without it), or it was built reading the app's lines
// otherwise, or the shard's gap or the app's.
func (st commitState) incomplete(pl *plan, fromMs int64) string {
	app := pl.app
	if st.Spans != nil && !slices.Contains(st.Spans, app.Name()+"@"+fingerprint(app, pl.srcMs)) {
		return notBuilt
	}
	if st.readsChanged(app) {
		return "incomplete: the shard's state of the app was counted under another format, time field or where filter; it has not been built again yet"
	}
	if why := st.Gap.incomplete(app, fromMs); why != "" {
		return why
	}
	return st.AppGaps[app.Name()].incomplete(app, fromMs)
}

// incomplete says why the shard's answers of pl's app and span over
// windows from fromMs lack lines, "" if they do not: the span is being
// built, or its own gap or the app's; s.mu is held.
func (s *shard) incomplete(pl *plan, fromMs int64) string {
	app := pl.app
	for _, t := range s.tables {
		if t.app == app && t.spans[pl.span].pending {
			return notBuilt
		}
	}
	if why := s.gap.incomplete(app, fromMs); why != "" {
		return why
	}
	return s.appGaps[app.Name()].incomplete(app, fromMs)
}

// backfillsUnchanged reports whether state says what the committed state
// says of spans and reads, and neither has a backfill or rows to delete
// (a checkpoint with nothing else to write can then be skipped).
func (s *shard) backfillsUnchanged(state *commitState) bool {
	c := s.committed
	return len(state.Backfill) == 0 && len(c.Backfill) == 0 && len(state.Removed) == 0 && len(c.Removed) == 0 && slices.Equal(state.Spans, c.Spans) &&
		maps.Equal(state.Reads, c.Reads)
}

// deleteRemoved deletes, after a commit at epoch that listed them as
// removed, the rows of the spans no app has any more; what fails is
// tried again after the next commit.
func (s *shard) deleteRemoved(ctx context.Context, epoch int64, removed []string) {
	if len(removed) == 0 {
		return
	}
	var left []string
	for _, name := range removed {
		prefix := shardPrefix(s.category, s.bucket) + name + "/"
		if err := s.p.deps.Store.DeleteUpTo(ctx, s.p.cfg.Table, prefix, store.PrefixEnd(prefix), epoch); err != nil {
			s.log.Warn("cannot delete the rows of a removed app; will retry", "rows", prefix, "err", err)
			left = append(left, name)
			continue
		}
		s.log.Info("puma deleted the rows of a removed app", "span", name)
	}
	s.mu.Lock()
	s.removing = slices.DeleteFunc(s.removing, func(n string) bool { return slices.Contains(removed, n) && !slices.Contains(left, n) })
	s.mu.Unlock()
}

// AppState is whether an app's shards on this node are live, being
// built from the dfs, or not known yet.
type AppState struct {
	// State is "live"; "backfilling" while a shard here builds spans of
	// the app; "recovering" while none does and a bucket of its category
	// that is this node's is not running yet (before the node's first
	// pass over its buckets has ended; a shard taken and recovering; one
	// failed and waiting to be tried again): whether it has spans to
	// build is known only once it has recovered.
	State string
	// BackfillShards counts the shards here building it; SegmentsRead
	// and SegmentsLeft their progress, summed (segments read so far by
	// their backfills since they started here, and published segments
	// they have yet to read).
	BackfillShards int
	SegmentsRead   int64
	SegmentsLeft   int64
}

// AppState returns app's state on this node, and false if there is no
// such app.
func (p *Puma) AppState(app string) (AppState, bool) {
	a, ok := p.apps[app]
	if !ok {
		return AppState{}, false
	}
	out := AppState{State: "live"}
	// The buckets of its category that are this node's to run and are
	// not running yet: before Run's first pass has ended, every one (not
	// known yet); then those taken here and still recovering, and those
	// that failed here and wait to be tried again. A bucket neither
	// running here nor tried (held by another node, or handed over and
	// not tried since) is another node's to report.
	cat := a.Spec.Category
	recovering := !p.running.Load()
	var ready []*shard
	p.mu.RLock()
	for b := 0; b < p.deps.Buckets(cat); b++ {
		id := shardID{cat, b}
		if s, ok := p.shards[id]; ok {
			if isReady(s) {
				// One look at each: a shard's backfills are listed
				// before it is ready, so a ready one shows them all.
				ready = append(ready, s)
			} else {
				recovering = true
			}
		} else if tr := p.tries[id]; tr != nil && tr.state == StateFailed {
			recovering = true
		}
	}
	p.mu.RUnlock()
	for _, s := range ready {
		s.mu.RLock()
		for _, bf := range s.backfills {
			if bf.live.app.Name() == app {
				out.State = "backfilling"
				out.BackfillShards++
				out.SegmentsRead += bf.read.Load()
				out.SegmentsLeft += bf.left.Load()
			}
		}
		s.mu.RUnlock()
	}
	if recovering && out.State == "live" {
		out.State = "recovering"
	}
	return out, true
}
