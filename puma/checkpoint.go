package puma

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/ptail"
)

// commitState is a shard's committed checkpoint, stored as JSON in the
// commit row.
type commitState struct {
	Epoch      int64             `json:"epoch"`
	Position   ptail.Position    `json:"position"`
	HighWater  map[string]uint64 `json:"high_water,omitempty"`
	Watermarks map[string]int64  `json:"watermarks,omitempty"`
	Owner      string            `json:"owner"`
	Lease      int64             `json:"lease,omitempty"` // the owner's lease epoch
	CommitMs   int64             `json:"commit_ms"`
	// HighWaterSeen[i] is when the i-th key of HighWater, in byte order,
	// was last seen (arrival ms): a list beside the map rather than a new
	// map value, so that a row stays readable by the code before it and
	// the keys are not written twice. Rows from that code have none.
	HighWaterSeen []int64 `json:"high_water_seen_ms,omitempty"`
	// ArrivalMs is the latest arrival time of a block applied: the clock
	// that dedup keys expire by.
	ArrivalMs int64 `json:"arrival_ms,omitempty"`
	// Gap, when set, is what the state lacks: segments it never read
	// (see gap in retention.go).
	Gap *gap `json:"gap,omitempty"`
	// Evicted is, by span (app@fingerprint), the horizon of its evicted
	// windows (evict.go): those that end at or before it are in the store
	// only, and recovery loads none of them. Rows without it load every
	// window.
	Evicted map[string]int64 `json:"evicted_ms,omitempty"`
	// Spans lists the spans (app@fingerprint) built in this state;
	// Backfill, by app, the progress of those being built from the dfs;
	// Removed the spans whose rows are still to delete (backfill.go).
	// Rows without Spans were written before backfills: every span is
	// taken as built. So an empty list is written as such (not left out,
	// as omitempty would): a shard whose every span is being built is not
	// a row of that code.
	Spans    []string                  `json:"spans"`
	Backfill map[string]*backfillState `json:"backfill,omitempty"`
	Removed  []string                  `json:"removed,omitempty"`
	// AppGaps, by app, is what an app built by a backfill lacks: the
	// segments retention had deleted before it started (Gap is the
	// shard's, for every app).
	AppGaps map[string]*gap `json:"app_gaps,omitempty"`
	// Reads is, by app, how its lines were read into its cells (readsOf:
	// format, pattern, fields, time, where), which the fingerprint leaves
	// out: an app that reads its lines otherwise now has cells of other
	// lines, and is built again (backfill.go). Rows without it, or
	// without the app, take its reads as unchanged.
	Reads map[string]string `json:"reads,omitempty"`
	// ReadsForm is Reads with each where filter as parsed (readsFormOf),
	// so that a filter only written otherwise is no change. Rows without
	// it are compared by Reads; Reads is still written for the code
	// before, which compares by it (after such an edit, a downgrade with
	// the same configuration keeps the state too).
	ReadsForm map[string]string `json:"reads_form,omitempty"`
	// Aborted lists the epochs that were never committed, as inclusive
	// ranges, oldest first: a cell version at one of them was written by
	// an attempt that did not commit, perhaps by a stale owner after the
	// claim that should have purged it, and no read counts it (fence.go).
	Aborted []epochRange `json:"aborted,omitempty"`
	// Fence is raised by an owner that rewrites its commit value, with
	// nothing else changed, so that a commit of its own that failed but
	// may still be applied no longer matches it (fenceUnsure).
	Fence int64 `json:"fence,omitempty"`
}

// Store layout, in table cfg.Table (<category> encoded by internal/layout,
// which builds these prefixes):
//
//	c/<category>/<bucket>                          commit row: "commit" (JSON), "attempt" (epoch being written)
//	s/<category>/<bucket>/<app>@<fp>/<window>/<key> cell row: "v" (the cell, encodeCell)
//
// <fp> is the fingerprint of the app's state in one window length: each
// of an app's windows has its rows. <window> is the window start in ms as
// 16 hex digits, offset by 2^63 so that byte order is time order.
func commitRow(category string, bucket int) string {
	return names.PumaCommitRow(category, bucket)
}

func shardPrefix(category string, bucket int) string {
	return names.PumaCellPrefix(category, bucket)
}

// appPrefix is the prefix of the rows of an app's cells in one window
// length, fp being fingerprint(app, length).
func appPrefix(category string, bucket int, app *apps.App, fp string) string {
	return shardPrefix(category, bucket) + app.Name() + "@" + fp + "/"
}

func windowKey(w int64) string { return fmt.Sprintf("%016x", uint64(w)^(1<<63)) }

func parseWindowKey(s string) (int64, bool) {
	u, err := strconv.ParseUint(s, 16, 64)
	if err != nil || len(s) != 16 {
		return 0, false
	}
	return int64(u ^ (1 << 63)), true
}

var errFenced = errors.New("another owner committed this shard")

// readCommit returns a shard's commit row: the stored commit value (nil
// if none), its decoded state and the last attempt marker. A shard
// recovering and the committed-state reader both read it here.
func readCommit(ctx context.Context, st store.Store, table, category string, bucket int) (val []byte, state commitState, attempt int64, err error) {
	row := commitRow(category, bucket)
	cells, err := st.Get(ctx, table, row, store.Latest)
	if err != nil {
		return nil, state, 0, fmt.Errorf("read commit row %s: %w", row, err)
	}
	for _, c := range cells {
		switch c.Column {
		case "commit":
			val = c.Value
			if err := json.Unmarshal(c.Value, &state); err != nil {
				return nil, state, 0, fmt.Errorf("decode commit row %s: %w", row, err)
			}
		case "attempt":
			attempt, _ = strconv.ParseInt(string(c.Value), 10, 64)
		}
	}
	return val, state, attempt, nil
}

// scanCommitted reads the cell rows of one app in one shard (prefix,
// from appPrefix) from start to stop as of a commit: as of its epoch,
// without the versions of the epochs it lists as aborted (fence.go),
// decoding each with l; fn gets the bytes of its variable states too. A
// row that is not a cell row or a cell that does not fit l is an error.
func scanCommitted(ctx context.Context, st store.Store, table, prefix, start, stop string, at commitState, l *layout, fn func(window int64, key string, c cell, stored int64)) error {
	return scanCommittedInto(ctx, st, table, prefix, start, stop, at, l, func() cell { return l.newCell() }, fn)
}

// scanCommittedInto is scanCommitted decoding each cell into the one
// into returns: a new one, or one cell reused for every row when fn
// copies it (recovery, which would otherwise allocate a cell a row).
func scanCommittedInto(ctx context.Context, st store.Store, table, prefix, start, stop string, at commitState, l *layout, into func() cell, fn func(window int64, key string, c cell, stored int64)) error {
	return st.Scan(ctx, table, start, stop, at.Epoch, func(rowKey string, cells []store.Cell) error {
		cs, err := committedVersions(ctx, st, table, rowKey, cells, at.Aborted)
		if err != nil {
			return err
		}
		wk, key, ok := strings.Cut(strings.TrimPrefix(rowKey, prefix), "/")
		w, wok := parseWindowKey(wk)
		if !ok || !wok {
			return fmt.Errorf("malformed cell row %q", rowKey)
		}
		for _, c := range cs {
			if c.Column != "v" {
				continue
			}
			cell := into()
			if err := l.decodeInto(cell, c.Value); err != nil {
				return fmt.Errorf("cell row %q: %w", rowKey, err)
			}
			fn(w, key, cell, l.varBytes(c.Value))
		}
		return nil
	})
}

// recover claims the shard in the store and loads the committed state.
func (s *shard) recover(ctx context.Context) error {
	st := s.p.deps.Store
	tbl := s.p.cfg.Table
	row := commitRow(s.category, s.bucket)
	val, state, attempt, err := readCommit(ctx, st, tbl, s.category, s.bucket)
	if err != nil {
		return err
	}
	// Claim: rewrite the commit value, unchanged but for the owner and its
	// lease epoch, fenced on the value just read. A previous owner that
	// still believes it owns the shard fences its attempt markers and
	// commits on the old value, so from here on it can neither start an
	// attempt nor commit one.
	E := state.Epoch
	state.Owner, state.Lease = s.p.cfg.ID, s.lease.Epoch()
	s.unlistReread(&state)
	claim, err := json.Marshal(state)
	if err != nil {
		return err
	}
	cells := []store.Cell{{Row: row, Column: "commit", Timestamp: E, Value: claim}}
	if val == nil {
		// A shard without a commit row was never claimed, or lost its
		// commit row: versions stored under it are of a state lost with
		// that row, none committed. The claim marks the highest as
		// attempted, so that the purge below and every later owner's
		// (which purge up to the last attempt marked) remove them, and
		// that no later owner's versions, above it, are ever taken for
		// them.
		lost, err := highestVersion(ctx, st, tbl, shardPrefix(s.category, s.bucket), dedupPrefix(s.category, s.bucket))
		if err != nil {
			return fmt.Errorf("read versions of a shard without a commit row: %w", err)
		}
		if lost > attempt {
			cells = append(cells, store.Cell{Row: row, Column: "attempt", Timestamp: lost, Value: []byte(strconv.FormatInt(lost, 10))})
		}
	}
	ok, err := st.CheckAndPut(ctx, tbl, row, "commit", val, cells)
	if err != nil {
		return fmt.Errorf("claim shard: %w", commitSizeNote(err, val, claim, state))
	}
	if !ok {
		return fmt.Errorf("claim shard: %w", errFenced)
	}
	s.commitBytes, s.committed = claim, state
	s.stallRecovery("claimed")
	// Read the attempt marker after the claim: an attempt of the previous
	// owner may have been marked between the read and the claim, and its
	// epoch must not be used again. With the claim: a marker read after
	// another owner claimed the shard may be that owner's, whose cells
	// this recovery must not purge.
	now, _, attempt, err := readCommit(ctx, st, tbl, s.category, s.bucket)
	if err != nil {
		return err
	}
	if !bytes.Equal(now, claim) {
		return fmt.Errorf("claim shard: %w", errFenced)
	}
	s.stallRecovery("purge")
	// Versions above the committed epoch were written by an attempt that
	// never committed: remove them so that no later read can see them.
	// Only up to the last attempt marked: should this recovery stall here
	// while another owner claims the shard and commits, that owner's
	// versions are above it, and are its committed state (the claim of a
	// shard without a commit row marked what it found as attempted).
	purgeTo := max(E, attempt)
	if err := st.DeleteBetween(ctx, tbl, shardPrefix(s.category, s.bucket), store.PrefixEnd(shardPrefix(s.category, s.bucket)), E, purgeTo); err != nil {
		return fmt.Errorf("purge uncommitted cells: %w", err)
	}
	s.nextEpoch = max(E, attempt) + 1
	fresh, err := s.planBackfills(ctx, E)
	if err != nil {
		return err
	}
	loaded := 0
	nowMs := s.p.now().UnixMilli()
	for _, t := range s.tables {
		// An app whose every span is built afresh keeps nothing of its
		// committed state: not its watermark (an app that reads its time
		// otherwise has another), nor its spans' eviction horizons (their
		// rows were deleted).
		afresh := !slices.ContainsFunc(t.spans, func(sp *span) bool { return !fresh[spanName(t.app.Name(), sp)] })
		if wm, ok := s.committed.Watermarks[t.app.Name()]; ok && !afresh {
			t.watermark = wm
		}
		if E == 0 {
			continue
		}
		// The windows retention dropped under the committed watermark are
		// not loaded: their rows are still there if the delete after the
		// commit that dropped them failed. A watermark in the future is
		// reset below from the windows loaded, so under it every window
		// loads.
		wm := t.watermark
		if wm > nowMs+t.app.MaxFutureMs {
			wm = noHorizon
		}
		for i, sp := range t.spans {
			prefix := appPrefix(s.category, s.bucket, t.app, sp.fp)
			if h, ok := s.committed.Evicted[spanName(t.app.Name(), sp)]; ok && !fresh[spanName(t.app.Name(), sp)] {
				sp.horizon = h
			}
			kept := retainedFrom(t.app, wm, sp.ms)
			expired := false
			scratch := t.layout.newCell()
			err := scanCommittedInto(ctx, st, tbl, prefix, loadStart(prefix, sp), store.PrefixEnd(prefix), s.committed, t.layout, func() cell { return scratch }, func(w int64, key string, c cell, stored int64) {
				if w < kept {
					expired = true
					return
				}
				t.load(i, w, key, c, stored)
				loaded++
			})
			if err != nil {
				return fmt.Errorf("load cells of app %s (%v windows): %w", t.app.Name(), time.Duration(sp.ms)*time.Millisecond, err)
			}
			if expired {
				// Deleted after the next commit, as the checkpoint that
				// dropped them would have.
				s.expired = append(s.expired, expiredRows{prefix: prefix, stop: prefix + windowKey(kept), epoch: E})
			}
		}
		if t.watermark > nowMs+t.app.MaxFutureMs {
			// Committed by a version that let a bad event time through:
			// left alone, every line would be late until the clock got
			// there.
			repaired := t.repairWatermark()
			s.log.Warn("committed watermark is in the future; reset to the latest window loaded",
				"app", t.app.Name(), "watermark", fmtMs(t.watermark), "reset_to", fmtMs(repaired))
			t.watermark = repaired
		}
		t.keepClosed()
	}
	// A resumed backfill's lines go to its own table: the windows it
	// evicted (the horizons of its spans, loaded above) are closed to
	// them as well.
	for _, bf := range s.backfills {
		bf.t.keepClosed()
	}
	s.pos = s.committed.Position
	// Retention deletes no segment at or after a committed position; one
	// at or before the bucket's retention mark means the segments this
	// state needs next are gone.
	g, err := s.retentionGap(s.pos)
	if err != nil {
		return err
	}
	s.gap = s.committed.Gap
	if g != nil && (s.gap == nil || s.gap.ThroughMs < g.ThroughMs || s.gap.Segment < g.Segment) {
		s.gap = s.gap.with(*g)
		s.log.Error("the bucket's first segments were deleted before this shard read them; answers say its data is incomplete",
			"committed", s.pos.String(), "deleted_through", g.Segment, "arrived_before", fmtMs(g.ThroughMs))
	}
	forgot := s.highWater.load(s.committed.HighWater, s.committed.HighWaterSeen, s.committed.ArrivalMs, s.committed.CommitMs)
	s.p.m.forgottenCap.Add(float64(forgot))
	if err := s.loadWindows(ctx, s.committed, purgeTo); err != nil {
		return err
	}
	s.committedEpoch, s.committedPos = E, s.committed.Position
	s.readAborted = s.committed.Aborted
	s.committedAt()
	s.log.Info("puma shard recovered", "epoch", E, "position", s.pos.String(), "cells", loaded)
	if loaded >= releaseCells {
		s.p.releaseMemory() // the scan's and the decoding's garbage, as after a checkpoint
	}
	return nil
}

// highestVersion is the newest timestamp of any cell in the rows under
// prefixes (0 if there are none).
func highestVersion(ctx context.Context, st store.Store, table string, prefixes ...string) (int64, error) {
	var top int64
	for _, p := range prefixes {
		err := st.Scan(ctx, table, p, store.PrefixEnd(p), store.Latest, func(_ string, cells []store.Cell) error {
			for _, c := range cells {
				top = max(top, c.Timestamp)
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	return top, nil
}

// stallRecovery calls the test hook inRecovery, if any.
func (s *shard) stallRecovery(stage string) {
	if h := s.p.inRecovery; h != nil {
		h(stage)
	}
}

// expiredRows are the cell rows of a window that retention dropped from
// memory, to delete from the store up to epoch once a commit at or after
// epoch has been made.
type expiredRows struct {
	prefix string
	stop   string // the end of the rows ("": every row of prefix)
	epoch  int64
}

// checkpoint commits the changed cells and the position.
//
// An attempt writes its cells at its epoch. If it fails before its commit
// lands, the next attempt rewrites every cell the failed one wrote (their
// dirty marks are restored), so that the failed versions do not pile up:
// the store keeps only a few versions of a cell, and a pile of
// uncommitted ones would push the committed version out. It does so at
// the same epoch, replacing them, unless a Put of the failed attempt
// failed: such a Put may still be written after the next attempt's (a
// put the HBase gateway received is applied even when the caller timed
// out or lost its connection), and at the same epoch its older values
// would replace the newer ones, under a commit that counts the lines in
// between. The next attempt then deletes the versions the failed one
// wrote and writes at the epoch after it, which its commit lists as
// aborted: a version that lands later still is never read.
func (s *shard) checkpoint(ctx context.Context) error {
	start := s.p.now()
	st := s.p.deps.Store
	tbl := s.p.cfg.Table
	if s.unsure != nil {
		if err := s.fenceUnsure(ctx); err != nil {
			return err
		}
	}
	if s.purgeTo > s.committed.Epoch {
		for _, p := range []string{shardPrefix(s.category, s.bucket), dedupPrefix(s.category, s.bucket)} {
			if err := st.DeleteBetween(ctx, tbl, p, store.PrefixEnd(p), s.committed.Epoch, s.purgeTo); err != nil {
				return fmt.Errorf("purge the cells of a failed attempt: %w", err)
			}
		}
		s.purgeTo = 0
	}
	epoch := s.nextEpoch

	// Snapshot under the lock; write outside it.
	s.mu.Lock()
	s.p.m.forgottenHorizon.Add(float64(s.highWater.expire()))
	state := commitState{
		Epoch:      epoch,
		Position:   s.pos,
		Watermarks: map[string]int64{},
		Owner:      s.p.cfg.ID,
		Lease:      s.lease.Epoch(),
		CommitMs:   s.p.now().UnixMilli(),
		ArrivalMs:  s.highWater.clockMs,
		Gap:        s.gap,
	}
	state.HighWater, state.HighWaterSeen = s.highWater.save()
	s.snapshotBackfills(&state)
	state.Aborted = withAborted(s.committed.Aborted, s.committed.Epoch, epoch)
	// The cells go to a writer as they are taken (cellwriter.go), which
	// writes the attempt marker and then puts them while the rest are
	// taken: the seen-windows first, then each span's, each run in row
	// order (takeDirty gives them so).
	out := newCellWriter(ctx, s, epoch)
	cells, remarkWindows := s.takeWindows(epoch, nil)
	slices.SortFunc(cells, func(a, b store.Cell) int { return strings.Compare(a.Row, b.Row) })
	out.sendChunks(cells)
	ncells := len(cells)
	type pending struct {
		t     *table
		span  int
		marks takenMarks
	}
	var dirty []pending
	for _, t := range s.tables {
		state.Watermarks[t.app.Name()] = t.watermark
		for i, sp := range t.spans {
			prefix := appPrefix(s.category, s.bucket, t.app, sp.fp)
			if sp.horizon > noHorizon {
				if state.Evicted == nil {
					state.Evicted = map[string]int64{}
				}
				state.Evicted[spanName(t.app.Name(), sp)] = sp.horizon
			}
			for _, w := range t.expire(i) {
				s.expired = append(s.expired, expiredRows{prefix: prefix + windowKey(w) + "/", epoch: epoch})
			}
			s.expired = append(s.expired, t.evictedRetention(i, prefix, epoch)...)
			b := newCellBatch(prefix, epoch, sp.changed(), t.layout, out)
			marks := t.takeDirty(i, func(k cellKey, c cell) int64 { return t.layout.varBytes(b.add(k, c)) })
			ncells += b.done()
			dirty = append(dirty, pending{t, i, marks})
		}
	}
	unchanged := ncells == 0 && len(s.expired) == 0 && state.Position == s.committed.Position && state.Gap == s.committed.Gap && s.backfillsUnchanged(&state)
	s.mu.Unlock()
	if unchanged {
		// Nothing to write: the committed state is current, which is what
		// the checkpoint age tells operators.
		out.abandon()
		s.committedAt()
		return nil
	}
	restore := func() {
		s.mu.Lock()
		for _, d := range dirty {
			d.t.remark(d.span, d.marks)
		}
		remarkWindows()
		s.mu.Unlock()
	}
	row := commitRow(s.category, s.bucket)
	// 1. and 2. The attempt marker, then the cells at the epoch (the
	// writer's).
	out.finish()
	if out.fenced {
		return errFenced
	}
	if out.err != nil {
		restore()
		if out.putFailed {
			s.nextEpoch, s.purgeTo = epoch+1, epoch
		}
		return out.err
	}
	// 3. The commit, fenced on the previous one.
	val, err := json.Marshal(state)
	if err != nil {
		restore()
		return err
	}
	ok, err := st.CheckAndPut(ctx, tbl, row, "commit", s.commitBytes, []store.Cell{{Row: row, Column: "commit", Timestamp: epoch, Value: val}})
	if err != nil {
		// The commit may have been applied (its reply lost), or may be
		// still (the HBase gateway retrying it after the caller gave
		// up). If the commit row holds it, it was. If not, it can land
		// at any time: the next attempt may neither rewrite this epoch's
		// cells (the commit would count the newer ones as of its
		// position) nor delete them (it would commit none); it fences
		// the commit first (fenceUnsure), and writes at the next epoch.
		now, _, _, rerr := readCommit(ctx, st, tbl, s.category, s.bucket)
		if rerr != nil || !bytes.Equal(now, val) {
			restore()
			s.nextEpoch, s.unsure = epoch+1, val
			return fmt.Errorf("commit: %w", commitSizeNote(err, s.commitBytes, val, state))
		}
		ok = true
	}
	if !ok {
		return errFenced
	}
	s.nextEpoch = epoch + 1
	s.commitBytes = val
	s.committed = state
	s.mu.Lock()
	s.committedEpoch, s.committedPos = state.Epoch, state.Position
	s.readAborted = state.Aborted
	s.mu.Unlock()
	s.afterCommit(state)
	s.committedAt()
	took := s.p.now().Sub(start)
	s.deleteGoneWindows(ctx, epoch)
	// 4. Retention, once the state without the expired windows is
	// committed; what fails is tried again at the next checkpoint.
	left := s.expired[:0]
	for _, x := range s.expired {
		if err := deleteRows(ctx, st, tbl, x); err != nil {
			s.log.Warn("cannot delete expired window; will retry", "rows", x.prefix, "err", err)
			left = append(left, x)
		}
	}
	s.expired = left
	s.deleteRemoved(ctx, epoch, state.Removed)
	// 5. A large checkpoint's transient memory (its queued chunks,
	// bbolt's pages of each transaction, and the heap the GC let grow
	// over them) is garbage now; the runtime would hand its pages back
	// to the OS only slowly, so do it at once (releaseCells).
	if ncells >= releaseCells {
		s.p.releaseMemory()
	}
	// Counted with its time, at the end: `make bench` reads the
	// counters' step and the time's sum from one scrape (they could
	// otherwise disagree), so the shard's status shows a commit a little
	// before they count it.
	s.p.m.checkpoints.Inc()
	s.p.m.checkpointCells.Add(float64(ncells))
	s.p.m.checkpointSeconds.Observe(took.Seconds())
	return nil
}

// fenceUnsure settles a commit that failed but may still be applied
// (s.unsure): it rewrites the commit value that commit expects, unchanged
// but for Fence, so that it can no longer land, and has the versions of
// its attempt purged. Should the commit have landed first, the shard
// stops, and its recovery loads that commit.
func (s *shard) fenceUnsure(ctx context.Context) error {
	st, tbl := s.p.deps.Store, s.p.cfg.Table
	row := commitRow(s.category, s.bucket)
	fence := s.committed
	fence.Fence++
	val, err := json.Marshal(fence)
	if err != nil {
		return err
	}
	ok, err := st.CheckAndPut(ctx, tbl, row, "commit", s.commitBytes, []store.Cell{{Row: row, Column: "commit", Timestamp: s.committed.Epoch, Value: val}})
	if err != nil || !ok {
		// This rewrite too may have been applied; the row says.
		now, _, _, rerr := readCommit(ctx, st, tbl, s.category, s.bucket)
		switch {
		case rerr == nil && bytes.Equal(now, val):
		case rerr == nil && bytes.Equal(now, s.unsure):
			return fmt.Errorf("a commit reported failed was applied: %w", errFenced)
		case err != nil:
			return fmt.Errorf("fence a commit of unknown outcome: %w", commitSizeNote(err, s.commitBytes, val, fence))
		case rerr != nil:
			return fmt.Errorf("fence a commit of unknown outcome: %w", rerr)
		default:
			return errFenced
		}
	}
	s.commitBytes, s.committed, s.unsure = val, fence, nil
	s.purgeTo = max(s.purgeTo, s.nextEpoch-1)
	return nil
}

// largeCommit is the size of a commit's CheckAndPut (the previous commit
// value and the new one) past which a failed commit says what makes it
// large: an HBase gateway drops a frame over its limit
// (hbase.regionserver.thrift.framed.max_frame_size_in_mb, 2 MB by
// default) with the connection, and then every checkpoint of the shard
// fails the same way.
const largeCommit = 1 << 20

// commitSizeNote annotates err, from a commit of val over prev, with its
// size and its agent keys when it is large. A shard's high waters and
// each running backfill's are maps of up to max_agents_per_shard keys of
// up to commitKeyBytes.
func commitSizeNote(err error, prev, val []byte, state commitState) error {
	n := len(prev) + len(val)
	if n <= largeCommit {
		return err
	}
	keys := len(state.HighWater)
	for _, b := range state.Backfill {
		keys += len(b.HighWater)
	}
	return fmt.Errorf("%w (a commit of %d bytes, the previous commit value and the new one, holding the high waters of %d agent keys: the shard's and its %d backfill(s)', each up to puma.max_agents_per_shard; an HBase gateway drops frames over hbase.regionserver.thrift.framed.max_frame_size_in_mb, 2 MB by default: raise it, which a shard whose commit row is already that large needs, since its claims and fences carry the row twice; a lower puma.max_agents_per_shard keeps rows smaller)",
		err, n, keys, len(state.Backfill))
}

// releaseCells is the size of a checkpoint after which its memory is
// returned to the OS (debug.FreeOSMemory: a garbage collection, then
// every free page released). Below it the transient memory is at most a
// few chunks and the runtime's own scavenger keeps up; above it a
// checkpoint left the heap grown by about twice what it held (on a
// million changed cells, ~250 MB of resident memory beyond the live
// heap, still there 20 s after a collection: the scavenger's goal is
// set at a collection from the heap in use before its sweep, the
// peak's). The cost is a collection
// of the live heap, mostly cell arrays without pointers, per such
// checkpoint.
const releaseCells = 4 * putChunk

// Cell formats (the first byte of a stored cell).
const (
	// cellFixed: the fixed slots, 8 bytes each (little-endian float64
	// bits). What an app of fixed-slot aggregates writes, as the code
	// before the variable states did: its cells read both ways.
	cellFixed = 1
	// cellMixed: the fixed slots, then each variable state as a uvarint
	// length and its encoding (agg.State.Marshal).
	cellMixed = 2
)

// encodeCell is a cell's stored form: a format byte, then the fixed slots
// (without the stored bytes), then the variable states if any.
func (l *layout) encodeCell(c cell) []byte {
	return l.appendCell(make([]byte, 0, l.cellSize()), c)
}

// cellSize is the size of a stored cell of fixed slots only, and a guess
// with variable states.
func (l *layout) cellSize() int {
	if len(l.vars) == 0 {
		return 1 + 8*l.width
	}
	return 1 + 8*l.width + 64
}

// appendCell appends the stored form of c to b (encodeCell).
func (l *layout) appendCell(b []byte, c cell) []byte {
	if len(l.vars) == 0 {
		b = append(b, cellFixed)
		for _, v := range c.f[:l.width] {
			b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
		}
		return b
	}
	b = append(b, cellMixed)
	for _, v := range c.f[:l.width] {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
	}
	for _, x := range c.x {
		// The state's length comes first: marshal it at the end of b,
		// then move it up past its length.
		at := len(b)
		b = x.Marshal(b)
		n := len(b) - at
		var lenBuf [binary.MaxVarintLen64]byte
		k := binary.PutUvarint(lenBuf[:], uint64(n))
		b = append(b, lenBuf[:k]...)
		copy(b[at+k:], b[at:at+n])
		copy(b[at:], lenBuf[:k])
	}
	return b
}

// cellBatch takes the cells of one span's checkpoint, in the order
// takeDirty gives them, and hands them to the writer in chunks of
// putChunk as they are taken. Under the shard's lock a cell is only its
// encoded value and its window and key (a view of the window's key
// bytes, which are never written twice, so it stays valid once the lock
// is released): about 45 bytes of a count+sum cell where its store.Cell
// and row key were about 140. The writer builds a chunk's rows and
// store.Cells (cellChunk.build) just before it puts them.
type cellBatch struct {
	prefix string
	epoch  int64
	l      *layout
	out    *cellWriter
	left   int // cells still to come, about (sp.changed)
	sent   int // cells handed to out
	c      *cellChunk
}

// cellChunk is a chunk of one span's cells as taken: built into store
// cells by the writer.
type cellChunk struct {
	prefix  string
	epoch   int64
	windows []int64  // each cell's window
	keys    []string // each cell's key: views of its window's key bytes
	ends    []int32  // where each cell's value ends in vals
	vals    []byte
}

// newCellBatch returns a batch for about n cells of a span whose rows
// start with prefix, to be sent to out.
func newCellBatch(prefix string, epoch int64, n int, l *layout, out *cellWriter) *cellBatch {
	b := &cellBatch{prefix: prefix, epoch: epoch, l: l, out: out, left: n}
	b.grow()
	return b
}

// grow makes the buffers of the next chunk.
func (b *cellBatch) grow() {
	n := max(min(b.left, putChunk), 1)
	b.c = &cellChunk{prefix: b.prefix, epoch: b.epoch, windows: make([]int64, 0, n), keys: make([]string, 0, n),
		ends: make([]int32, 0, n), vals: make([]byte, 0, n*b.l.cellSize())}
}

// add appends the cell of k and returns its stored value (valid until
// the next add).
func (b *cellBatch) add(k cellKey, c cell) []byte {
	at := len(b.c.vals)
	b.c.vals = b.l.appendCell(b.c.vals, c)
	v := b.c.vals[at:]
	b.c.windows = append(b.c.windows, k.window)
	b.c.keys = append(b.c.keys, k.key)
	b.c.ends = append(b.c.ends, int32(len(b.c.vals)))
	if len(b.c.keys) == putChunk {
		b.flush()
		b.grow()
	}
	return v
}

// flush sends the cells taken.
func (b *cellBatch) flush() {
	n := len(b.c.keys)
	b.out.sendChunk(b.c)
	b.sent += n
	b.left = max(b.left-n, 0)
}

// done sends the last cells and returns how many were sent in all.
func (b *cellBatch) done() int {
	if len(b.c.keys) > 0 {
		b.flush()
	}
	b.c = nil
	return b.sent
}

// build returns the chunk's store cells: its row keys are one
// allocation, its values views of vals.
func (c *cellChunk) build() []store.Cell {
	size := 0
	for _, k := range c.keys {
		size += len(c.prefix) + 16 + 1 + len(k)
	}
	var rows strings.Builder
	rows.Grow(size)
	rowEnds := make([]int, len(c.keys))
	w, wk := int64(0), ""
	for i, k := range c.keys {
		if wk == "" || c.windows[i] != w {
			w, wk = c.windows[i], windowKey(c.windows[i])
		}
		rows.WriteString(c.prefix)
		rows.WriteString(wk)
		rows.WriteByte('/')
		rows.WriteString(k)
		rowEnds[i] = rows.Len()
	}
	all := rows.String()
	cells := make([]store.Cell, len(c.keys))
	start, vstart := 0, int32(0)
	for i := range cells {
		cells[i] = store.Cell{Row: all[start:rowEnds[i]], Column: "v", Timestamp: c.epoch, Value: c.vals[vstart:c.ends[i]:c.ends[i]]}
		start, vstart = rowEnds[i], c.ends[i]
	}
	return cells
}

// varBytes is what the variable states take of a stored cell.
func (l *layout) varBytes(stored []byte) int64 {
	if len(l.vars) == 0 {
		return 0
	}
	return int64(max(len(stored)-1-8*l.width, 0))
}

func (l *layout) decodeCell(b []byte) (cell, error) {
	c := l.newCell()
	if err := l.decodeInto(c, b); err != nil {
		return cell{}, err
	}
	return c, nil
}

// decodeInto decodes a stored cell into c, every slot and state of which
// it sets (but the stored bytes).
func (l *layout) decodeInto(c cell, b []byte) error {
	misfit := func(why string) error {
		return fmt.Errorf("stored cell of %d bytes does not fit app %s (%d slots, %d variable states): %s; was the app's aggregate list changed?", len(b), l.app.Name(), l.width, len(l.vars), why)
	}
	want := byte(cellFixed)
	if len(l.vars) > 0 {
		want = cellMixed
	}
	if len(b) < 1+8*l.width || b[0] != want || (want == cellFixed && len(b) != 1+8*l.width) {
		return misfit("wrong format or size")
	}
	for i := range c.f[:l.width] {
		c.f[i] = math.Float64frombits(binary.LittleEndian.Uint64(b[1+8*i:]))
	}
	rest := b[1+8*l.width:]
	for j, a := range l.vars {
		n, k := binary.Uvarint(rest)
		if k <= 0 || n > uint64(len(rest)-k) {
			return misfit(fmt.Sprintf("aggregate %s is cut short", l.app.Aggs[a.i].Name))
		}
		x, err := a.kind.Unmarshal(rest[k : k+int(n)])
		if err != nil {
			return fmt.Errorf("stored cell, aggregate %s: %w", l.app.Aggs[a.i].Name, err)
		}
		c.x[j] = x
		rest = rest[k+int(n):]
	}
	if len(rest) > 0 {
		return misfit(fmt.Sprintf("%d bytes left over", len(rest)))
	}
	return nil
}
