package puma

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"strings"

	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/store"
)

// The seen-window. An agent keeps several batches in flight, so the
// entries of one of its streams (agent id and incarnation) may reach a
// bucket out of order: a batch retried after the next one was written, two
// batches written by concurrent calls. A key therefore keeps, beside its
// highest sequence number (agentKey.seq, the "high water" of the commit
// row), which of the segment.SeqWindow numbers below it were seen. An
// entry above the highest is new and moves the window; one inside it is
// new unless its bit is set; one below it is taken as a repeat unchecked
// (agents bound their batches in flight so that a first copy never comes
// that late; counted in freeway_puma_dedup_below_window_total, which stays
// at zero unless an agent broke the bound).
//
// A key whose numbers have all come in order keeps no bits (win nil:
// every number up to the highest was seen, which is also what a commit
// row without a window row means). In a category of several buckets the
// numbers of a stream are spread over the buckets, so a shard's keys
// soon keep their bits: 16 KiB each (segment.SeqWindow bits; 8 KiB when
// the window was segment.SeqWindowV1).

const winWords = segment.SeqWindow / 64

// window is a ring of segment.SeqWindow bits: the bit of seq s is s mod
// SeqWindow, valid for top-SeqWindow < s <= top.
type window [winWords]uint64

func (w *window) has(s uint64) bool { return w[(s/64)%winWords]&(1<<(s%64)) != 0 }
func (w *window) set(s uint64)      { w[(s/64)%winWords] |= 1 << (s % 64) }

// slide clears the bits of from+1..to, the numbers entering the window.
func (w *window) slide(from, to uint64) {
	if to-from >= segment.SeqWindow {
		*w = window{}
		return
	}
	for s := from + 1; s <= to; {
		if s%64 == 0 && to-s >= 63 {
			w[(s/64)%winWords] = 0
			s += 64
			continue
		}
		w[(s/64)%winWords] &^= 1 << (s % 64)
		s++
	}
}

// full is a window in which every number up to the top was seen.
func fullWindow() *window {
	w := &window{}
	for i := range w {
		w[i] = ^uint64(0)
	}
	return w
}

// Verdicts of admit.
const (
	seqNew    = iota
	seqRepeat // seen before
	seqBelow  // below the window: taken as a repeat unchecked
)

// admit records seq for k and says whether it was new.
func (d *dedup) admit(k *agentKey, seq uint64) int {
	top := k.seq
	switch {
	case seq > top:
		if k.win == nil {
			if seq == top+1 {
				k.seq = seq
				return seqNew
			}
			d.setWin(k, fullWindow())
		}
		k.win.slide(top, seq)
		k.win.set(seq)
		k.seq = seq
		d.markDirty(k)
		return seqNew
	case top-seq >= segment.SeqWindow:
		return seqBelow
	case k.win == nil || k.win.has(seq):
		return seqRepeat
	default:
		k.win.set(seq)
		d.markDirty(k)
		return seqNew
	}
}

func (d *dedup) markDirty(k *agentKey) {
	if !k.dirty {
		k.dirty = true
		d.dirty = append(d.dirty, k)
	}
}

// Window rows, in the puma table beside the commit row:
//
//	d/<category>/<bucket>/<key>   column "w": a key's window (encodeWindow)
//
// written, like cells, at the epoch of the checkpoint that changed them
// and read as of the committed epoch, so that a window and the high water
// in the commit row are always of one checkpoint. A row whose top is not
// the commit row's high water for its key (written by this code, then the
// key moved on under a version that keeps no windows) is ignored: the key
// counts every number up to its high water as seen, as before windows.
func dedupPrefix(category string, bucket int) string {
	return names.PumaWindowPrefix(category, bucket)
}

// rowRange is the range of exactly one row.
func rowRange(row string) (string, string) { return row, row + "\x00" }

// Window encodings (the first byte). Formats 1 and 2 are of windows of
// segment.SeqWindowV1 numbers (written before the window grew to
// SeqWindow); they read as windows of SeqWindow whose numbers below
// their span are seen, which is what a key of that time counted them as
// (below its window: repeats). Formats 3 and 4 are 1 and 2 over
// SeqWindow numbers, and what is written now.
const (
	winBitsV1 = 1 // uvarint top, then the ring's words, little-endian, from the bit of top-SeqWindowV1+1
	winRunsV1 = 2 // uvarint top, then uvarint run lengths from top-SeqWindowV1+1 upwards, alternately unseen and seen
	winBits   = 3 // as winBitsV1, over SeqWindow numbers
	winRuns   = 4 // as winRunsV1, over SeqWindow numbers
)

// lowest is the lowest number of a window of span numbers up to top.
func lowest(top, span uint64) uint64 {
	if top >= span {
		return top - span + 1
	}
	return 1 // numbers below 1 were never handed out
}

// encodeWindow is a window's stored form: as runs when that is shorter
// (a window mostly seen, or mostly unseen), else as bits.
func encodeWindow(top uint64, w *window) []byte {
	runs := []byte{winRuns}
	runs = binary.AppendUvarint(runs, top)
	lo := lowest(top, segment.SeqWindow)
	seen, n := false, uint64(0)
	for s := lo; s <= top && len(runs) < segment.SeqWindow/8; s++ {
		if w.has(s) != seen {
			runs = binary.AppendUvarint(runs, n)
			seen, n = !seen, 0
		}
		n++
	}
	if len(runs) < segment.SeqWindow/8 {
		return binary.AppendUvarint(runs, n)
	}
	b := []byte{winBits}
	b = binary.AppendUvarint(b, top)
	var ring window
	for s := lo; s <= top; s++ {
		if w.has(s) {
			i := s - lo
			ring[i/64] |= 1 << (i % 64)
		}
	}
	for _, x := range ring {
		b = binary.LittleEndian.AppendUint64(b, x)
	}
	return b
}

func decodeWindow(b []byte) (top uint64, w *window, err error) {
	if len(b) < 2 {
		return 0, nil, errors.New("window too short")
	}
	top, k := binary.Uvarint(b[1:])
	if k <= 0 {
		return 0, nil, errors.New("window top unreadable")
	}
	rest := b[1+k:]
	span := uint64(segment.SeqWindow)
	if b[0] == winBitsV1 || b[0] == winRunsV1 {
		span = segment.SeqWindowV1
	}
	lo := lowest(top, span)
	// Numbers below lo are seen: below 1 never handed out, below a V1
	// window's span counted as repeats when it was written.
	w = fullWindow()
	w.slide(lo-1, top)
	switch b[0] {
	case winBits, winBitsV1:
		words := span / 64
		if uint64(len(rest)) != 8*words {
			return 0, nil, fmt.Errorf("window of %d bytes", len(rest))
		}
		for i := range words {
			x := binary.LittleEndian.Uint64(rest[8*i:])
			for x != 0 {
				j := uint64(bits.TrailingZeros64(x))
				x &= x - 1
				if s := lo + 64*i + j; s <= top {
					w.set(s)
				}
			}
		}
	case winRuns, winRunsV1:
		s, seen := lo, false
		for len(rest) > 0 {
			n, k := binary.Uvarint(rest)
			if k <= 0 || n > top+1-s {
				return 0, nil, errors.New("window runs overflow")
			}
			rest = rest[k:]
			if seen {
				for i := range n {
					w.set(s + i)
				}
			}
			s += n
			seen = !seen
		}
	default:
		return 0, nil, fmt.Errorf("window format %d", b[0])
	}
	return top, w, nil
}

// takeDirty returns the window cells of the keys changed since the last
// call, at epoch, and those keys (for remark, if the checkpoint fails).
func (d *dedup) takeDirty(prefix string, epoch int64, cells []store.Cell) ([]store.Cell, []*agentKey) {
	keys := d.dirty
	d.dirty = nil
	for _, k := range keys {
		k.dirty = false
		if d.keys[k.key] != k || k.win == nil {
			continue // forgotten since
		}
		k.stored = true
		cells = append(cells, store.Cell{Row: prefix + k.key, Column: "w", Timestamp: epoch, Value: encodeWindow(k.seq, k.win)})
	}
	return cells, keys
}

// remark marks keys changed again after a failed checkpoint.
func (d *dedup) remark(keys []*agentKey) {
	for _, k := range keys {
		d.markDirty(k)
	}
}

// goneRow is the window row of a forgotten key, to delete up to epoch
// once a commit without the key is made; key "" for a row of no key of
// its dedup (a joined backfill's).
type goneRow struct {
	key, row string
	epoch    int64
}

// loadWindows purges window versions above the committed epoch up to
// purgeTo (attempts that never committed; recover) and gives the
// recovered keys their windows as of it, without the versions of aborted
// epochs (a stale owner's late puts, fence.go), as the cells.
func (s *shard) loadWindows(ctx context.Context, at commitState, purgeTo int64) error {
	st, tbl := s.p.deps.Store, s.p.cfg.Table
	prefix := dedupPrefix(s.category, s.bucket)
	if err := st.DeleteBetween(ctx, tbl, prefix, store.PrefixEnd(prefix), at.Epoch, purgeTo); err != nil {
		return fmt.Errorf("purge uncommitted windows: %w", err)
	}
	if at.Epoch == 0 {
		return nil
	}
	return s.readWindows(ctx, at, s.highWater, prefix, prefix+backfillMark)
}

// backfillMark starts the suffix of a backfill's window rows under the
// shard's window prefix: a byte no key (valid UTF-8) starts with.
const backfillMark = "\xff"

// backfillWindowPrefix starts the window rows of the backfill of app.
func backfillWindowPrefix(category string, bucket int, app string) string {
	return dedupPrefix(category, bucket) + backfillMark + app + "/"
}

// readWindows gives the keys of d their windows from the rows in [prefix,
// stop) as of at; a row of no key of d, or of another top, is stale and
// deleted after the next commit.
func (s *shard) readWindows(ctx context.Context, at commitState, d *dedup, prefix, stop string) error {
	st, tbl := s.p.deps.Store, s.p.cfg.Table
	return st.Scan(ctx, tbl, prefix, stop, at.Epoch, func(row string, cells []store.Cell) error {
		cs, err := committedVersions(ctx, st, tbl, row, cells, at.Aborted)
		if err != nil {
			return err
		}
		for _, c := range cs {
			if c.Column != "w" {
				continue
			}
			top, w, err := decodeWindow(c.Value)
			if err != nil {
				return fmt.Errorf("window row %q: %w", row, err)
			}
			name := strings.TrimPrefix(row, prefix)
			if k := d.keys[name]; k != nil && k.seq == top {
				d.setWin(k, w)
				k.stored = true
				continue
			}
			// The row of a key the code before kept as sent, now kept
			// hashed (storedKey): its window is the key's, written under
			// its name at the next checkpoint; the old row is deleted
			// after that commit.
			if k := d.keys[storedKey(name)]; k != nil && k.key != name && k.seq == top && k.win == nil {
				d.setWin(k, w)
				d.markDirty(k)
			}
			d.gone = append(d.gone, goneRow{name, row, at.Epoch})
		}
		return nil
	})
}

// deleteGoneWindows deletes the rows of keys forgotten by a commit at or
// after their epoch, the shard's and its backfills'; what fails is tried
// again after the next commit.
func (s *shard) deleteGoneWindows(ctx context.Context, committed int64) {
	s.mu.Lock()
	ds := []*dedup{s.highWater}
	for _, bf := range s.backfills {
		ds = append(ds, bf.dedup)
	}
	s.mu.Unlock()
	for _, d := range ds {
		s.deleteGone(ctx, d, committed)
	}
}

func (s *shard) deleteGone(ctx context.Context, d *dedup, committed int64) {
	s.mu.Lock()
	gone := d.gone
	d.gone = nil
	s.mu.Unlock()
	var left []goneRow
	for _, g := range gone {
		s.mu.RLock()
		k := d.keys[g.key]
		s.mu.RUnlock()
		if k != nil && g.key != "" {
			continue // the key came back: its row is its own again
		}
		if g.epoch > committed {
			left = append(left, g)
			continue
		}
		start, stop := rowRange(g.row)
		if err := s.p.deps.Store.DeleteUpTo(ctx, s.p.cfg.Table, start, stop, g.epoch); err != nil {
			s.log.Warn("cannot delete the window of a forgotten agent key; will retry", "err", err)
			left = append(left, g)
		}
	}
	s.mu.Lock()
	d.gone = append(left, d.gone...)
	s.mu.Unlock()
}

// takeWindows puts the changed windows of the shard and of its backfills
// in cells at epoch, and schedules the rows of keys forgotten since the
// last checkpoint; the function it returns marks them changed again (the
// checkpoint failed). s.mu is held.
func (s *shard) takeWindows(epoch int64, cells []store.Cell) ([]store.Cell, func()) {
	prefix := dedupPrefix(s.category, s.bucket)
	cells, keys := s.highWater.takeDirty(prefix, epoch, cells)
	s.highWater.schedule(prefix, epoch)
	remarks := []func(){func() { s.highWater.remark(keys) }}
	for _, bf := range s.backfills {
		d := bf.dedup
		p := backfillWindowPrefix(s.category, s.bucket, bf.live.app.Name())
		var keys []*agentKey
		cells, keys = d.takeDirty(p, epoch, cells)
		d.schedule(p, epoch)
		remarks = append(remarks, func() { d.remark(keys) })
	}
	return cells, func() {
		for _, r := range remarks {
			r()
		}
	}
}

// dropBackfillWindows hands the window rows of a backfill that joined
// (or was dropped) to the shard, to delete after the next commit. s.mu
// is held.
func (s *shard) dropBackfillWindows(bf *backfill) {
	p := backfillWindowPrefix(s.category, s.bucket, bf.live.app.Name())
	for key, k := range bf.dedup.keys {
		if k.stored {
			s.highWater.forgotRows = append(s.highWater.forgotRows, p+key)
		}
	}
	for key := range bf.dedup.forgot {
		s.highWater.forgotRows = append(s.highWater.forgotRows, p+key)
	}
	for _, g := range bf.dedup.gone {
		s.highWater.forgotRows = append(s.highWater.forgotRows, g.row)
	}
}

// schedule gives the rows of the keys forgotten since the last checkpoint
// the epoch of this one, after whose commit they are deleted.
func (d *dedup) schedule(prefix string, epoch int64) {
	for key := range d.forgot {
		d.gone = append(d.gone, goneRow{key, prefix + key, epoch})
	}
	clear(d.forgot)
	for _, row := range d.forgotRows {
		d.gone = append(d.gone, goneRow{"", row, epoch}) // "": no key of d
	}
	d.forgotRows = nil
}

// rowGoing reports whether key's window row waits for its deletion.
func (d *dedup) rowGoing(key string) bool {
	for _, g := range d.gone {
		if g.key == key {
			return true
		}
	}
	return false
}
