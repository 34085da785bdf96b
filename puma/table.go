package puma

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	mathbits "math/bits"
	"slices"
	"strings"
	"sync/atomic"
	"unsafe"

	"github.com/cespare/xxhash/v2"

	"github.com/freeway-dev/freeway/internal/agg"
	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/ratelog"
)

// cellKey is a cell's place in a span of an app's table.
type cellKey struct {
	window int64 // window start, Unix ms
	key    string
}

// table is one app's cells in one shard, in one span per window length of
// the app. Guarded by the shard's mutex.
type table struct {
	app    *apps.App
	layout *layout
	// spans[i] holds the windows of length app.WindowsMs[i]; a line goes
	// to one window of each.
	spans     []*span
	ncells    int   // over the spans
	bytes     int64 // approximate memory of the cells (cellOverhead + stored state bytes)
	watermark int64 // highest event time aggregated, ms
	extractor *apps.Extractor
	// seed hashes the keys of every window of the table (keyIndex).
	seed maphash.Seed
	deps tableDeps
	// appBudget bounds the app's cells over the node's shards (its
	// max_cells); nil: no bound of its own.
	appBudget *cellBudget
	// refused is the bound (boundNodeCells...) that refused the last new
	// cell, for the rejection's message.
	refused int
	// ev is what eviction took out of memory (evict.go).
	ev evictState
	// pending counts the spans a backfill is building (backfill.go).
	pending int
	// building: the table is a backfill's, over pending spans; it takes
	// every line's cells (committed state is never refused, and a
	// backfill builds what was committed before), accounted in the
	// budgets.
	building bool

	// drops counts records not aggregated since start, by reason (bad
	// values: inputs); samples keeps the last lines of each reason.
	drops   [nReasons]uint64
	samples [nReasons]sampleRing
	logKeys [nReasons]string
	nextLog [nReasons]int64 // ms before which the reason is not logged again
}

// span is the cells of one window length of a table.
type span struct {
	ms int64 // window length
	// fp identifies the shape of the span's state (window length,
	// group_by, aggregates); stored rows carry it so that a changed app
	// does not read state of another shape.
	fp string
	// seed is the table's, for the windows' key indexes.
	seed maphash.Seed
	// windows holds the cells by window start, so that a query visits
	// only the windows of its range and retention drops whole windows.
	windows map[int64]*windowCells
	// stride and nvars are the shape of a cell in the windows' arrays
	// (layout.stride, len(layout.vars)).
	stride, nvars int
	// lastW and last cache the window of the previous record: most
	// records land in the current window. last is nil if that window has
	// no cells yet.
	lastW int64
	last  *windowCells
	// horizon: the span's windows that end at or before it were evicted
	// to the store (evict.go).
	horizon int64
	// pending: a backfill is building the span (backfill.go); live lines
	// skip it until the backfill has caught up.
	pending bool
}

// windowCells is one window of a span. Its cells live in arrays: cell
// i's fixed slots are slots[i*stride:(i+1)*stride], its variable states
// states[i*nvars:(i+1)*nvars], its key keyBytes[ends[i-1]:ends[i]] (from 0
// for cell 0); index finds i by key. One array for every cell of a window
// rather than an allocation per cell (or per key): a million cells are a
// few allocations, not a million (less heap and less for the GC to mark),
// and a scan of the window (a top-N, a checkpoint) reads memory in order
// instead of a cell at a random place per key.
//
// Cells are only ever added: a window is dropped whole (retention,
// eviction), so a cell's index holds for the window's life. Its slots
// move when the array grows: a cell (a view of its slots) holds until the
// next cell is added to its window. The bytes of keys are never written
// twice (keyBytes only grows by append), so that a key read as a string view
// of them (key) stays valid, and the same, for as long as it is held,
// even once the array has grown or the window was dropped.
type windowCells struct {
	keyBytes []byte
	ends     []int
	index    keyIndex
	slots    []float64
	states   []agg.State
	stride   int
	nvars    int
	// dirty has bit i set while cell i waits for a checkpoint (a bit, not
	// a slot or a list entry: a cell changed costs no memory of its own);
	// ndirty counts them.
	dirty  []uint64
	ndirty int
}

// keyIndex finds a window's cells by key: an open-addressing hash table
// with linear probing of the cells' indexes, at most 3/4 full. An entry
// is 8 bytes, the high half of the key's hash above the cell's index + 1
// (0: empty), so that a probe compares a key's bytes only when the hash
// halves agree: a map[string]int32 took 16 bytes of string header a key
// in the map and as much again in a key list, and its spare room.
// The hash is maphash's, seeded per table: the spans of a table share
// the seed, so that a line's key is hashed once for all of them.
type keyIndex struct {
	seed  maphash.Seed
	slots []uint64
}

// hashKey is the hash of key in the windows of seed.
func hashKey(seed maphash.Seed, key string) uint64 { return maphash.String(seed, key) }

// minIndex is the size of a window's first index.
const minIndex = 8

func newSpan(app *apps.App, l *layout, ms int64, seed maphash.Seed) *span {
	return &span{ms: ms, fp: fingerprint(app, ms), seed: seed, windows: map[int64]*windowCells{}, stride: l.stride(), nvars: len(l.vars), horizon: noHorizon}
}

// len is the window's number of cells; a nil window has none.
func (wc *windowCells) len() int {
	if wc == nil {
		return 0
	}
	return len(wc.ends)
}

// key is cell i's key, a view of the window's key bytes (see
// windowCells: they never change).
func (wc *windowCells) key(i int32) string {
	from := 0
	if i > 0 {
		from = wc.ends[i-1]
	}
	b := wc.keyBytes[from:wc.ends[i]]
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// find returns the index of key's cell.
func (wc *windowCells) find(key string) (int32, bool) {
	if wc == nil {
		return 0, false
	}
	return wc.lookup(hashKey(wc.index.seed, key), key)
}

// lookup is find with the key's hash (hashKey) computed already.
func (wc *windowCells) lookup(h uint64, key string) (int32, bool) {
	if wc == nil || len(wc.index.slots) == 0 {
		return 0, false
	}
	slots := wc.index.slots
	mask := uint64(len(slots) - 1)
	tag := h >> 32
	for p := h & mask; ; p = (p + 1) & mask {
		e := slots[p]
		if e == 0 {
			return 0, false
		}
		if e>>32 == tag {
			if i := int32(uint32(e) - 1); wc.key(i) == key {
				return i, true
			}
		}
	}
}

// insert puts cell i, whose key hashes to h, in the index, which has
// room for it.
func (wc *windowCells) insert(h uint64, i int32) {
	slots := wc.index.slots
	mask := uint64(len(slots) - 1)
	p := h & mask
	for slots[p] != 0 {
		p = (p + 1) & mask
	}
	slots[p] = h>>32<<32 | uint64(uint32(i)+1)
}

// grow doubles the index (or makes the first one) and puts every cell in
// it again.
func (wc *windowCells) grow() {
	wc.index.slots = make([]uint64, max(2*len(wc.index.slots), minIndex))
	for i := range int32(wc.len()) {
		wc.insert(hashKey(wc.index.seed, wc.key(i)), i)
	}
}

// cell is cell i, a view of the window's arrays.
func (wc *windowCells) cell(i int32) cell {
	at := int(i) * wc.stride
	c := cell{f: wc.slots[at : at+wc.stride : at+wc.stride]}
	if wc.nvars > 0 {
		at = int(i) * wc.nvars
		c.x = wc.states[at : at+wc.nvars : at+wc.nvars]
	}
	return c
}

// add appends an empty cell for key, whose hash is h (not in the
// window), and returns its index. The key's bytes are copied.
func (wc *windowCells) add(h uint64, key string, l *layout) int32 {
	i := int32(len(wc.ends))
	if 4*(len(wc.ends)+1) > 3*len(wc.index.slots) {
		wc.grow()
	}
	wc.keyBytes = append(wc.keyBytes, key...)
	wc.ends = append(wc.ends, len(wc.keyBytes))
	wc.insert(h, i)
	at := len(wc.slots)
	wc.slots = append(wc.slots, make([]float64, wc.stride)...)
	for _, a := range l.fixed {
		a.fn.InitSlots(wc.slots[at+a.off : at+a.off+a.n])
	}
	for _, a := range l.vars {
		wc.states = append(wc.states, a.kind.Init())
	}
	return i
}

// mark records that cell i changed since the last checkpoint.
func (wc *windowCells) mark(i int32) {
	w := int(i >> 6)
	for len(wc.dirty) <= w {
		wc.dirty = append(wc.dirty, 0)
	}
	if bit := uint64(1) << (i & 63); wc.dirty[w]&bit == 0 {
		wc.dirty[w] |= bit
		wc.ndirty++
	}
}

// each calls fn for every cell, in the order they were added.
func (wc *windowCells) each(fn func(key string, c cell)) {
	if wc == nil {
		return
	}
	for i := range int32(wc.len()) {
		fn(wc.key(i), wc.cell(i))
	}
}

// at makes window w the current one of the span.
func (sp *span) at(w int64) {
	if sp.last == nil || w != sp.lastW {
		sp.lastW, sp.last = w, sp.windows[w] // nil if the window has no cells yet
	}
}

// atTime makes the window of time ts the current one: a time in the
// current window (most lines) needs no division to find its start.
func (sp *span) atTime(ts int64) {
	if sp.last != nil && ts >= sp.lastW && ts < sp.lastW+sp.ms {
		return
	}
	sp.at(apps.WindowStart(ts, sp.ms))
}

// current returns the cell of key, whose hash is h, in the current
// window and its index there.
func (sp *span) current(h uint64, key string) (cell, int32, bool) {
	i, ok := sp.last.lookup(h, key)
	if !ok {
		return cell{}, 0, false
	}
	return sp.last.cell(i), i, true
}

// get returns the cell of window w and key.
func (sp *span) get(w int64, key string) (cell, bool) {
	wc := sp.windows[w]
	i, ok := wc.find(key)
	if !ok {
		return cell{}, false
	}
	return wc.cell(i), true
}

// window returns window w, made empty if it has no cells yet.
func (sp *span) window(w int64) *windowCells {
	wc, ok := sp.windows[w]
	if !ok {
		wc = &windowCells{index: keyIndex{seed: sp.seed}, stride: sp.stride, nvars: sp.nvars}
		sp.windows[w] = wc
		if w == sp.lastW {
			sp.last = nil // make at() look again
		}
	}
	return wc
}

// put stores a copy of cell c as the cell of window w and key; it
// reports whether the key was new there. The key is copied when it is
// (into the window's key bytes): a key read from the store is part of
// its row's string, which it would keep alive.
func (sp *span) put(w int64, key string, c cell, l *layout) (added bool) {
	wc := sp.window(w)
	h := hashKey(sp.seed, key)
	i, ok := wc.lookup(h, key)
	if !ok {
		i = wc.add(h, key, l)
	}
	dst := wc.cell(i)
	copy(dst.f, c.f)
	copy(dst.x, c.x)
	return !ok
}

// eachIn calls fn for every cell of window w.
func (sp *span) eachIn(w int64, fn func(key string, c cell)) {
	sp.windows[w].each(fn)
}

// changed is the number of the span's cells changed since the last
// checkpoint.
func (sp *span) changed() int {
	n := 0
	for _, wc := range sp.windows {
		n += wc.ndirty
	}
	return n
}

// drop removes window w.
func (sp *span) drop(w int64) {
	delete(sp.windows, w)
	if w == sp.lastW {
		sp.last = nil
	}
}

// tableDeps is what a table shares with its node; the zero value (for
// tests) bounds nothing and logs nothing.
type tableDeps struct {
	budget *cellBudget
	// apps bounds each app's cells on the node (the app's max_cells), by
	// app name; an app not in it has no bound of its own.
	apps     map[string]*cellBudget
	limiter  *ratelog.Limiter
	category string
	bucket   int
	// evict drops the shard's closed, committed windows and returns the
	// cells it dropped: what a line that needs a new cell tries before it
	// is refused. Nil: nothing is evicted.
	evict func() int
}

// blockTime is what a table is told of the block a line came in.
type blockTime struct {
	// arrivalMs is the block's arrival time: the event time of apps
	// without a time field.
	arrivalMs int64
	// refMs bounds event times: a line more than the app's max_future
	// beyond it is rejected. It is the arrival time, or Puma's clock
	// when the arrival time is later or missing: an arrival time comes
	// from another process and is not trusted blindly.
	refMs int64
	nowMs int64 // Puma's clock, for samples
}

// newBlockTime returns the times of a block that arrived at arrivalMs,
// read at nowMs.
func newBlockTime(arrivalMs, nowMs int64) blockTime {
	ref := arrivalMs
	if ref <= 0 || ref > nowMs {
		ref = nowMs
	}
	return blockTime{arrivalMs: arrivalMs, refMs: ref, nowMs: nowMs}
}

func newTable(app *apps.App, deps tableDeps) (*table, error) {
	l, err := newLayout(app)
	if err != nil {
		return nil, err
	}
	t := &table{
		app:       app,
		layout:    l,
		watermark: -1 << 62,
		extractor: app.NewExtractor(),
		seed:      maphash.MakeSeed(),
		deps:      deps,
		appBudget: deps.apps[app.Name()],
		ev:        newEvictState(len(app.WindowsMs)),
	}
	for _, ms := range app.WindowsMs {
		t.spans = append(t.spans, newSpan(app, l, ms, t.seed))
	}
	for r, name := range reasonNames {
		t.logKeys[r] = "puma reject " + app.Name() + " " + name
	}
	return t, nil
}

// cellBudget bounds the cells a node holds in memory (puma.max_cells and
// puma.memory_limit, across its shards and apps; or an app's max_cells,
// across its shards), and sums their approximate bytes. A nil budget, or
// a zero bound, bounds nothing.
type cellBudget struct {
	max      int64 // cells; 0: no bound
	maxBytes int64 // approximate bytes; 0: no bound
	n        atomic.Int64
	bytes    atomic.Int64
}

// Which bound refused a new cell (why.b of a max_cells rejection).
const (
	boundNodeCells = iota // puma.max_cells
	boundNodeBytes        // puma.memory_limit
	boundAppCells         // the app's max_cells
)

// take reserves room for n new cells (one per window length of a line);
// it is the one place where the bounds are checked. The byte bound is
// checked before the cells are made: a node stops taking new cells once
// their accounted bytes reach it, and the bytes of the cells it holds may
// then grow past it a little: a sketch grows as it aggregates, and shards
// that check at once may each take a line's cells (at most one cell per
// window length and shard).
func (b *cellBudget) take(n int) bool {
	if b == nil {
		return true
	}
	if b.maxBytes > 0 && b.bytes.Load() >= b.maxBytes {
		return false
	}
	if b.max > 0 && b.n.Add(int64(n)) > b.max {
		b.n.Add(-int64(n))
		return false
	}
	if b.max <= 0 {
		b.n.Add(int64(n))
	}
	return true
}

// add accounts for cells that come without asking (loaded from the store:
// committed state is always loaded whole) or go (n < 0), and for bytes.
func (b *cellBudget) add(n int, bytes int64) {
	if b != nil {
		b.n.Add(int64(n))
		b.bytes.Add(bytes)
	}
}

// fingerprint identifies the shape of an app's state in windows of
// windowMs: what changes the stored cells (the window, the group key, the
// aggregates and the parameters that shape their state), and nothing else,
// so that an app changed otherwise reads its stored cells, and one whose
// state changed shape starts afresh rather than misreading them. An app
// of fixed-slot aggregates has the fingerprint it had before the variable
// states existed.
func fingerprint(app *apps.App, windowMs int64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d|%q|", windowMs, app.Spec.GroupBy)
	for _, a := range app.Aggs {
		fmt.Fprintf(&b, "%s:%s:%s|", a.Name, a.Fn.Name, a.Field)
		if shape := a.Fn.Shape(a.Params); shape != "" {
			fmt.Fprintf(&b, "%s|", shape)
		}
	}
	return fmt.Sprintf("%08x", uint32(xxhash.Sum64String(b.String())))
}

// readsOf is a hash of how app reads its lines into cells, beyond the
// shape of its state (fingerprint): the format and its parameters, the
// time field and the where filter. Cells counted under other reads have
// the same shape but hold other lines, so the commit row keeps it by app
// (Reads) and a change builds the app again (planBackfills).
func readsOf(app *apps.App) string { return readsHash(app, app.Spec.Where) }

// readsFormOf is readsOf with the where filter as parsed (WhereForm), not
// as written: the same for a filter written otherwise.
func readsFormOf(app *apps.App) string { return readsHash(app, app.WhereForm()) }

func readsHash(app *apps.App, where string) string {
	s := app.Spec
	var b strings.Builder
	fmt.Fprintf(&b, "%q|%q|%q|%q|", s.Format, s.Pattern, s.Fields, s.Separator)
	if s.Time != nil {
		fmt.Fprintf(&b, "%q|%q|", s.Time.Field, s.Time.Layout)
	}
	fmt.Fprintf(&b, "%q", where)
	return fmt.Sprintf("%08x", uint32(xxhash.Sum64String(b.String())))
}

// readsChanged reports whether app reads its lines otherwise than it did
// for the cells of st: by ReadsForm where the row has it, else (a row of
// the code before it) by Reads. An app the row has neither for is taken
// as unchanged.
func (st commitState) readsChanged(app *apps.App) bool {
	if r, ok := st.ReadsForm[app.Name()]; ok {
		return r != readsFormOf(app)
	}
	r, ok := st.Reads[app.Name()]
	return ok && r != readsOf(app)
}

// apply feeds one line to the table. A line it rejects changes nothing
// but the counters and samples (not the watermark, not a cell), except
// that a line refused for want of room (puma.max_cells) moves the
// watermark like any line with a good time.
func (t *table) apply(line []byte, bt blockTime) {
	if t.pending == len(t.spans) {
		return // the backfill builds every span
	}
	ex, err := t.extractor.Extract(line, bt.arrivalMs)
	t.applyExtracted(line, bt, ex, err)
}

// applyExtracted is apply with the line extracted already (by the
// table's own parse, or a parse shared with the other apps of the
// category: parse.go).
func (t *table) applyExtracted(line []byte, bt blockTime, ex *apps.Extracted, err error) {
	if err != nil {
		switch {
		case errors.Is(err, apps.ErrFiltered):
			t.reject(1, why{reason: reasonFiltered}, line, bt)
		case isBadTime(err):
			t.reject(1, why{reason: reasonBadTime, err: err}, line, bt)
		default:
			t.reject(1, why{reason: reasonParse, err: err}, line, bt)
		}
		return
	}
	ts := ex.TimeMs
	if ts > bt.refMs+t.app.MaxFutureMs {
		t.reject(1, why{reason: reasonFuture, a: ts, b: bt.refMs, c: t.app.MaxFutureMs}, line, bt)
		return
	}
	// Late against the watermark before this line: a line later than the
	// watermark is never late.
	if ts < t.watermark-t.app.LatenessMs || ts < t.ev.lateBefore {
		t.reject(1, why{reason: reasonLate, a: ts, b: t.watermark, c: t.app.LatenessMs}, line, bt)
		return
	}
	if len(t.spans) == 1 {
		t.place(t.spans[0], ex, line, bt)
		return
	}
	// The line's cell in each span: found or missing. The key is hashed
	// once for every span (they share the table's seed).
	key := keyView(ex.Key)
	h := hashKey(t.seed, key)
	var cells [apps.MaxWindows]cell
	var idx [apps.MaxWindows]int32
	missing := 0
	for i, sp := range t.spans {
		if sp.pending && !t.building {
			continue
		}
		sp.atTime(ts)
		c, j, ok := sp.current(h, key)
		if !ok {
			missing++
		}
		cells[i], idx[i] = c, j
	}
	// All or nothing: a line counts in every span or in none, so that the
	// spans agree.
	if missing > 0 && !t.take(missing) {
		t.refuse(ts, line, bt)
		return
	}
	t.watermark = max(t.watermark, ts)
	bad, first := 0, true
	for i, sp := range t.spans {
		if sp.pending && !t.building {
			continue
		}
		c, j := cells[i], idx[i]
		if c.f == nil {
			c, j = t.newCell(sp, h, key)
		}
		// Every span sees the same inputs: count their bad ones once.
		if b := t.layout.add(c, ex, ts, bt.arrivalMs); first {
			bad, first = b, false
		}
		sp.last.mark(j)
	}
	if bad > 0 {
		t.reject(uint64(bad), why{reason: reasonBadValue, a: int64(bad)}, line, bt)
	}
}

// place is apply's end for an app of one window length, the common case,
// kept as short as it was before apps had several.
func (t *table) place(sp *span, ex *apps.Extracted, line []byte, bt blockTime) {
	ts := ex.TimeMs
	sp.atTime(ts)
	key := keyView(ex.Key)
	h := hashKey(t.seed, key)
	c, i, ok := sp.current(h, key)
	if !ok {
		if !t.take(1) {
			t.refuse(ts, line, bt)
			return
		}
		c, i = t.newCell(sp, h, key)
	}
	if ts > t.watermark {
		t.watermark = ts
	}
	if bad := t.layout.add(c, ex, ts, bt.arrivalMs); bad > 0 {
		t.reject(uint64(bad), why{reason: reasonBadValue, a: int64(bad)}, line, bt)
	}
	sp.last.mark(i)
}

// take reserves room for n new cells in the node's budget and the app's,
// evicting the shard's closed windows when there is none; on refusal it
// leaves both as they were and notes which bound refused.
func (t *table) take(n int) bool {
	if t.building {
		t.account(n, 0)
		return true
	}
	if t.takeRoom(n) {
		return true
	}
	return t.deps.evict != nil && t.deps.evict() > 0 && t.takeRoom(n)
}

func (t *table) takeRoom(n int) bool {
	b := t.deps.budget
	if !b.take(n) {
		t.refused = boundNodeCells
		if b.maxBytes > 0 && b.bytes.Load() >= b.maxBytes {
			t.refused = boundNodeBytes
		}
		return false
	}
	if !t.appBudget.take(n) {
		b.add(-n, 0)
		t.refused = boundAppCells
		return false
	}
	return true
}

// account adds n cells and bytes to the node's budget and the app's.
func (t *table) account(n int, bytes int64) {
	t.deps.budget.add(n, bytes)
	t.appBudget.add(n, bytes)
}

// refuse rejects a line for want of room (puma.max_cells,
// puma.memory_limit or the app's max_cells). The line's time is good: it
// moves the watermark, so that retention frees room once time moves on
// (every line of a new window needs a new cell).
func (t *table) refuse(ts int64, line []byte, bt blockTime) {
	t.watermark = max(t.watermark, ts)
	w := why{reason: reasonMaxCells, b: int64(t.refused)}
	switch t.refused {
	case boundNodeCells:
		w.a = t.deps.budget.max
	case boundNodeBytes:
		w.a = t.deps.budget.maxBytes
	case boundAppCells:
		w.a = t.appBudget.max
	}
	t.reject(1, w, line, bt)
}

// newCell adds an empty cell for key, whose hash is h, to the span's
// current window and returns it with its index there; its room was
// taken from the budget. The window copies the key's bytes (key may be
// a view of the extractor's buffer).
func (t *table) newCell(sp *span, h uint64, key string) (cell, int32) {
	if sp.last == nil {
		sp.last = sp.window(sp.lastW)
	}
	i := sp.last.add(h, key, t.layout)
	t.ncells++
	n := t.layout.cellOverhead(key)
	t.bytes += n
	t.account(0, n)
	return sp.last.cell(i), i
}

// load puts a cell read from the store into span i (not dirty), with
// the bytes its states took there. Committed cells are loaded even beyond
// puma.max_cells: they are what the store says.
func (t *table) load(i int, w int64, key string, c cell, stored int64) {
	sp := t.spans[i]
	t.layout.setStoredBytes(c, stored)
	n := t.layout.cellOverhead(key) + stored
	if old, ok := sp.get(w, key); ok {
		n -= t.layout.cellOverhead(key) + t.layout.storedBytes(old)
	} else {
		t.ncells++
		t.account(1, 0)
	}
	sp.put(w, key, c, t.layout)
	t.bytes += n
	t.account(0, n)
}

// repairWatermark returns the start of the latest window loaded, a
// watermark the table's cells are consistent with.
func (t *table) repairWatermark() int64 {
	wm := int64(-1 << 62)
	for _, sp := range t.spans {
		for w := range sp.windows {
			wm = max(wm, w)
		}
	}
	return wm
}

// release gives the table's cells back to the node's budget (the shard
// stops).
func (t *table) release() {
	t.account(-t.ncells, -t.bytes)
	t.ncells, t.bytes = 0, 0
}

// each calls fn for every cell whose window starts in [from, to).
func (sp *span) each(from, to int64, fn func(window int64, key string, c cell)) {
	for w := range sp.windows {
		if w < from || w >= to {
			continue
		}
		sp.eachIn(w, func(key string, c cell) { fn(w, key, c) })
	}
}

// takenMarks are the change marks takeDirty cleared in a span, by
// window, for remark should their write fail.
type takenMarks []takenWindow

type takenWindow struct {
	w     int64
	cells *windowCells
	dirty []uint64
}

// takeDirty calls fn for each changed cell of span i, in row order
// (windows oldest first, then keys in byte order: the store writes keys
// in order fastest), clears the changes and returns them, for remark
// should their write fail. fn returns the bytes the cell's variable
// states now take in the store.
func (t *table) takeDirty(i int, fn func(k cellKey, c cell) int64) takenMarks {
	sp := t.spans[i]
	var taken takenMarks
	for w, wc := range sp.windows {
		if wc.ndirty > 0 {
			taken = append(taken, takenWindow{w: w, cells: wc, dirty: wc.dirty})
		}
	}
	slices.SortFunc(taken, func(a, b takenWindow) int { return cmp.Compare(a.w, b.w) })
	var order []int32
	var ranks []keyRank
	for _, tw := range taken {
		wc := tw.cells
		order = slices.Grow(order[:0], wc.ndirty)
		for j, bits := range tw.dirty {
			for ; bits != 0; bits &= bits - 1 {
				order = append(order, int32(j<<6+mathbits.TrailingZeros64(bits)))
			}
		}
		ranks = wc.sortByKey(order, ranks)
		wc.dirty, wc.ndirty = nil, 0
		for _, j := range order {
			c := wc.cell(j)
			stored := fn(cellKey{window: tw.w, key: wc.key(j)}, c)
			if d := stored - t.layout.storedBytes(c); d != 0 {
				t.layout.setStoredBytes(c, stored)
				t.bytes += d
				t.account(0, d)
			}
		}
	}
	return taken
}

// keyRank is a cell's index with the first 8 bytes of its key as an
// integer (keyHead).
type keyRank struct {
	head uint64
	i    int32
}

// parallelSortMin is the number of keys from which sortByKey sorts the
// two halves of its indexes at once, one of them on a goroutine of its
// own (a variable for the tests).
var parallelSortMin = 1 << 15

// sortByKey sorts idx, indexes of cells of the window, by their keys
// (byte order), and returns ranks, its scratch, for the next call. The
// first 8 bytes of each key, read once into an integer, decide most
// comparisons: a sort of a million indexes by the keys alone reached a
// key's bytes (a cache miss) twice a comparison, and took a second.
//
// From parallelSortMin keys on, each half of idx is ranked and sorted at
// once on the two cores, and the halves are merged into idx: a
// checkpoint's writer waits for this sort before its first Put, its core
// idle meanwhile (a million keys: ~0.1 s of sort). The caller holds the
// shard's lock, under which the keys are only read.
func (wc *windowCells) sortByKey(idx []int32, ranks []keyRank) []keyRank {
	ranks = slices.Grow(ranks[:0], len(idx))[:len(idx)]
	if len(idx) < parallelSortMin {
		wc.rankSorted(idx, ranks)
		for j, r := range ranks {
			idx[j] = r.i
		}
		return ranks
	}
	half := len(idx) / 2
	done := make(chan struct{})
	go func() {
		defer close(done)
		wc.rankSorted(idx[:half], ranks[:half])
	}()
	wc.rankSorted(idx[half:], ranks[half:])
	<-done
	a, b := ranks[:half], ranks[half:]
	for j := range idx {
		if len(b) == 0 || (len(a) > 0 && wc.compareRanks(a[0], b[0]) < 0) {
			idx[j], a = a[0].i, a[1:]
		} else {
			idx[j], b = b[0].i, b[1:]
		}
	}
	return ranks
}

// rankSorted fills ranks (as long as idx) with the ranks of the cells of
// idx, sorted by key.
func (wc *windowCells) rankSorted(idx []int32, ranks []keyRank) {
	for j, i := range idx {
		ranks[j] = keyRank{head: keyHead(wc.key(i)), i: i}
	}
	slices.SortFunc(ranks, wc.compareRanks)
}

// compareRanks orders two cells of the window by key.
func (wc *windowCells) compareRanks(a, b keyRank) int {
	if c := cmp.Compare(a.head, b.head); c != 0 {
		return c
	}
	return strings.Compare(wc.key(a.i), wc.key(b.i))
}

// keyHead is the first 8 bytes of key, big-endian, zero-padded: heads
// that differ order as their keys do (a zero pad sorts as the end of a
// shorter key would), equal heads leave the keys to compare.
func keyHead(key string) uint64 {
	var b [8]byte
	copy(b[:], key)
	return binary.BigEndian.Uint64(b[:])
}

// remark marks the cells of taken changed again, those whose windows
// are still in span i.
func (t *table) remark(i int, taken takenMarks) {
	sp := t.spans[i]
	for _, tw := range taken {
		if sp.windows[tw.w] != tw.cells {
			continue // expired since (and perhaps back, with other cells)
		}
		for j, bits := range tw.dirty {
			for ; bits != 0; bits &= bits - 1 {
				tw.cells.mark(int32(j<<6 + mathbits.TrailingZeros64(bits)))
			}
		}
	}
}

// expire drops the windows of span i that ended before watermark -
// retention and returns their starts.
func (t *table) expire(i int) []int64 {
	sp := t.spans[i]
	kept := retainedFrom(t.app, t.watermark, sp.ms)
	var gone []int64
	for w, cells := range sp.windows {
		if w < kept {
			bytes := t.windowBytes(cells)
			t.ncells -= cells.len()
			t.bytes -= bytes
			t.account(-cells.len(), -bytes)
			sp.drop(w)
			gone = append(gone, w)
		}
	}
	return gone
}

// retainedFrom is the start of the first window of length ms that app's
// retention keeps under watermark wm: the windows before it end at or
// before wm - retention. A checkpoint drops them from memory and deletes
// their rows after its commit; until the delete is done (a crash or a
// failed delete leaves it to a later checkpoint) the rows are still in
// the store, so every read of the store skips them.
func retainedFrom(app *apps.App, wm, ms int64) int64 {
	return resident(wm-app.RetentionMs, ms)
}

// windowBytes is the accounted memory of a window's cells.
func (t *table) windowBytes(wc *windowCells) int64 {
	var bytes int64
	wc.each(func(key string, c cell) { bytes += t.layout.cellOverhead(key) + t.layout.storedBytes(c) })
	return bytes
}

// keyView is an extracted key (the extractor's buffer) as a string
// without a copy, for the lookups and the add of one line: valid until
// the extractor's next line, and never kept (a window copies the bytes
// of a key it adds).
func keyView(key []byte) string {
	return unsafe.String(unsafe.SliceData(key), len(key))
}
