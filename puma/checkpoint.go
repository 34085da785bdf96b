package puma

import (
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
	// taken as built.
	Spans    []string                  `json:"spans,omitempty"`
	Backfill map[string]*backfillState `json:"backfill,omitempty"`
	Removed  []string                  `json:"removed,omitempty"`
	// AppGaps, by app, is what an app built by a backfill lacks: the
	// segments retention had deleted before it started (Gap is the
	// shard's, for every app).
	AppGaps map[string]*gap `json:"app_gaps,omitempty"`
	// Aborted lists the epochs that were never committed, as inclusive
	// ranges, oldest first: a cell version at one of them was written by
	// an attempt that did not commit, perhaps by a stale owner after the
	// claim that should have purged it, and no read counts it (fence.go).
	Aborted []epochRange `json:"aborted,omitempty"`
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
			cell, err := l.decodeCell(c.Value)
			if err != nil {
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
	val, state, _, err := readCommit(ctx, st, tbl, s.category, s.bucket)
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
	claim, err := json.Marshal(state)
	if err != nil {
		return err
	}
	ok, err := st.CheckAndPut(ctx, tbl, row, "commit", val, []store.Cell{{Row: row, Column: "commit", Timestamp: E, Value: claim}})
	if err != nil {
		return fmt.Errorf("claim shard: %w", err)
	}
	if !ok {
		return fmt.Errorf("claim shard: %w", errFenced)
	}
	s.commitBytes, s.committed = claim, state
	// Read the attempt marker after the claim: an attempt of the previous
	// owner may have been marked between the read and the claim, and its
	// epoch must not be used again.
	_, _, attempt, err := readCommit(ctx, st, tbl, s.category, s.bucket)
	if err != nil {
		return err
	}
	// Versions above the committed epoch were written by an attempt that
	// never committed: remove them so that no later read can see them.
	if err := st.DeleteNewer(ctx, tbl, shardPrefix(s.category, s.bucket), store.PrefixEnd(shardPrefix(s.category, s.bucket)), E); err != nil {
		return fmt.Errorf("purge uncommitted cells: %w", err)
	}
	s.nextEpoch = max(E, attempt) + 1
	if err := s.planBackfills(ctx, E); err != nil {
		return err
	}
	loaded := 0
	nowMs := s.p.now().UnixMilli()
	for _, t := range s.tables {
		if wm, ok := s.committed.Watermarks[t.app.Name()]; ok {
			t.watermark = wm
		}
		if E == 0 {
			continue
		}
		for i, sp := range t.spans {
			prefix := appPrefix(s.category, s.bucket, t.app, sp.fp)
			if h, ok := s.committed.Evicted[spanName(t.app.Name(), sp)]; ok {
				sp.horizon = h
			}
			err := scanCommitted(ctx, st, tbl, prefix, loadStart(prefix, sp), store.PrefixEnd(prefix), s.committed, t.layout, func(w int64, key string, c cell, stored int64) {
				t.load(i, w, key, c, stored)
				loaded++
			})
			if err != nil {
				return fmt.Errorf("load cells of app %s (%v windows): %w", t.app.Name(), time.Duration(sp.ms)*time.Millisecond, err)
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
	if err := s.loadWindows(ctx, s.committed); err != nil {
		return err
	}
	s.committedEpoch, s.committedPos = E, s.committed.Position
	s.readAborted = s.committed.Aborted
	s.lastCommit.Store(s.p.now().UnixNano())
	s.log.Info("puma shard recovered", "epoch", E, "position", s.pos.String(), "cells", loaded)
	return nil
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
// lands, the next attempt uses the same epoch again and rewrites every
// cell the failed one wrote (their dirty marks are restored), so that the
// failed versions are replaced rather than piled up: the store keeps only
// a few versions of a cell, and a pile of uncommitted ones would push the
// committed version out.
func (s *shard) checkpoint(ctx context.Context) error {
	start := s.p.now()
	st := s.p.deps.Store
	tbl := s.p.cfg.Table
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
	cells, remarkWindows := s.takeWindows(epoch, nil)
	type pending struct {
		t    *table
		span int
		keys []cellKey
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
			keys := t.takeDirty(i, func(k cellKey, c cell) int64 {
				v := t.layout.encodeCell(c)
				cells = append(cells, store.Cell{Row: prefix + windowKey(k.window) + "/" + k.key, Column: "v", Timestamp: epoch, Value: v})
				return t.layout.varBytes(v)
			})
			dirty = append(dirty, pending{t, i, keys})
		}
	}
	unchanged := len(cells) == 0 && len(s.expired) == 0 && state.Position == s.committed.Position && state.Gap == s.committed.Gap && s.backfillsUnchanged(&state)
	s.mu.Unlock()
	if unchanged {
		// Nothing to write: the committed state is current, which is what
		// the checkpoint age tells operators.
		s.lastCommit.Store(s.p.now().UnixNano())
		return nil
	}
	restore := func() {
		s.mu.Lock()
		for _, d := range dirty {
			d.t.remark(d.span, d.keys)
		}
		remarkWindows()
		s.mu.Unlock()
	}
	row := commitRow(s.category, s.bucket)
	// 1. Record the epoch being written, so that a crash before the commit
	// never lets a later owner reuse it; fenced on the commit, so that an
	// owner that lost the shard writes no cells.
	marker := []store.Cell{{Row: row, Column: "attempt", Timestamp: epoch, Value: []byte(strconv.FormatInt(epoch, 10))}}
	ok, err := st.CheckAndPut(ctx, tbl, row, "commit", s.commitBytes, marker)
	if err != nil {
		restore()
		return fmt.Errorf("write attempt marker: %w", err)
	}
	if !ok {
		return errFenced
	}
	if h := s.p.afterMark; h != nil {
		h(s.category, s.bucket)
	}
	// 2. The cells, at the epoch, in row order and in Puts of up to 64 Ki
	// cells: one transaction each on the embedded store (a Put of 1,000
	// was 1,000 commits and fsyncs for 1 M cells; one Put of them all
	// makes bbolt copy every node it holds whenever the file grows), and
	// requests of the store's size on HBase.
	slices.SortFunc(cells, func(a, b store.Cell) int { return strings.Compare(a.Row, b.Row) })
	const chunk = 1 << 16
	for i := 0; i < len(cells); i += chunk {
		if err := st.Put(ctx, tbl, cells[i:min(i+chunk, len(cells))]); err != nil {
			restore()
			return fmt.Errorf("write cells: %w", err)
		}
	}
	// 3. The commit, fenced on the previous one.
	val, err := json.Marshal(state)
	if err != nil {
		restore()
		return err
	}
	ok, err = st.CheckAndPut(ctx, tbl, row, "commit", s.commitBytes, []store.Cell{{Row: row, Column: "commit", Timestamp: epoch, Value: val}})
	if err != nil {
		restore()
		return fmt.Errorf("commit: %w", err)
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
	s.lastCommit.Store(s.p.now().UnixNano())
	s.p.m.checkpoints.Inc()
	s.p.m.checkpointCells.Add(float64(len(cells)))
	s.p.m.checkpointSeconds.Observe(s.p.now().Sub(start).Seconds())
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
	return nil
}

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
// (without the mark), then the variable states if any.
func (l *layout) encodeCell(c cell) []byte {
	if len(l.vars) == 0 {
		b := make([]byte, 1, 1+8*l.width)
		b[0] = cellFixed
		for _, v := range c.f[:l.width] {
			b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
		}
		return b
	}
	b := make([]byte, 1, 1+8*l.width+64)
	b[0] = cellMixed
	for _, v := range c.f[:l.width] {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
	}
	var scratch []byte
	for _, x := range c.x {
		scratch = x.Marshal(scratch[:0])
		b = binary.AppendUvarint(b, uint64(len(scratch)))
		b = append(b, scratch...)
	}
	return b
}

// varBytes is what the variable states take of a stored cell.
func (l *layout) varBytes(stored []byte) int64 {
	if len(l.vars) == 0 {
		return 0
	}
	return int64(max(len(stored)-1-8*l.width, 0))
}

func (l *layout) decodeCell(b []byte) (cell, error) {
	misfit := func(why string) (cell, error) {
		return cell{}, fmt.Errorf("stored cell of %d bytes does not fit app %s (%d slots, %d variable states): %s; was the app's aggregate list changed?", len(b), l.app.Name(), l.width, len(l.vars), why)
	}
	want := byte(cellFixed)
	if len(l.vars) > 0 {
		want = cellMixed
	}
	if len(b) < 1+8*l.width || b[0] != want || (want == cellFixed && len(b) != 1+8*l.width) {
		return misfit("wrong format or size")
	}
	c := l.newCell()
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
			return cell{}, fmt.Errorf("stored cell, aggregate %s: %w", l.app.Aggs[a.i].Name, err)
		}
		c.x[j] = x
		rest = rest[k+int(n):]
	}
	if len(rest) > 0 {
		return misfit(fmt.Sprintf("%d bytes left over", len(rest)))
	}
	return c, nil
}
