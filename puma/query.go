package puma

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/ratelog"
)

// Query asks for an app's aggregates over windows starting in [FromMs, ToMs).
type Query struct {
	App    string
	FromMs int64
	ToMs   int64
	// GroupBy: nil means the app's full key; empty (non-nil) merges all
	// keys; otherwise a subset of the app's group_by.
	GroupBy []string
	// AllWindows merges every window in the range into one row per key.
	AllWindows bool
	// WindowMs is the length of the rows' windows: 0 for the app's
	// shortest, else one of the app's windows, or a multiple of one whose
	// windows are then rolled up (a row of a rolled-up window holds every
	// window it is made of; its start is in [FromMs, ToMs)). Not with
	// AllWindows.
	WindowMs int64
	// Limit bounds the rows (0: no limit).
	Limit int
	// Where keeps only the cells whose key has, for each group key named,
	// one of the values listed: conditions on different keys all hold,
	// the values of one key are alternatives. The keys are any of the
	// app's group_by, grouped by or not. Nil or empty: every cell.
	Where map[string][]string
	// OrderBy names an aggregate whose value orders the rows (largest
	// first with Desc), rows without a value last; ties in answer order
	// (window start, then key). With Limit it is a top-N: the first Limit
	// rows of that order. "": answer order.
	OrderBy string
	Desc    bool
}

// Row is one (window, key) of an answer.
type Row struct {
	WindowStartMs int64
	WindowEndMs   int64
	Key           map[string]string
	// Values: name → a float64, a string (first, last of text),
	// agg.Quantiles (percentile), []agg.TopItem (topk), or nil when there
	// is no value.
	Values map[string]any
}

// Result is a query's answer.
type Result struct {
	App  string
	Rows []Row
	// Truncated: Limit cut rows off.
	Truncated bool
	// AsOf says how recent the answer's data is.
	AsOf AsOf
	// Missing lists the shards of the app's category whose data the
	// answer lacks; empty when the answer is complete.
	Missing []MissingShard
	// StaleShards ("<category>/<bucket>") are the shards whose committed
	// state stands in the answer for their fresh one: serving's fan-out
	// found no owner for them or had no answer from it in time.
	StaleShards []string
}

// AsOf says how recent an answer's data is.
type AsOf struct {
	// TimeMs is the time of the data, Unix ms. From memory (Puma.Query):
	// when the shards were read, so the answer holds every line read from
	// the dfs by then. From the store (Committed.Query): the oldest
	// commit time of the shards that answered, so the answer holds at
	// least what every one of them had read by then. 0: no shard
	// answered with data (none running, none committed).
	TimeMs int64
	// WatermarkMs is the app's watermark over the shards that answered:
	// the highest event time any of them had aggregated (as of TimeMs; 0
	// when none had aggregated a line). Windows well before it minus the
	// app's allowed_lateness are final.
	WatermarkMs int64
}

// Partial reports whether the answer lacks the data of some shards.
func (r *Result) Partial() bool { return len(r.Missing) > 0 }

// MissingShard is a shard whose data an answer lacks, and why.
type MissingShard struct {
	Category string
	Bucket   int
	// State is StateRecovering, StateFailed or StateElsewhere, or
	// StateIncomplete for a shard whose data is in the answer but lacks
	// segments it never read.
	State ShardState
	// Error says why, when known.
	Error string
}

// BadQueryError is a query the caller got wrong (unknown app, bad
// group_by): serving answers it with 400. What it quotes of the query
// is clipped (ratelog.Clip).
type BadQueryError struct{ Msg string }

func (e *BadQueryError) Error() string { return e.Msg }

func badQuery(format string, args ...any) error {
	return &BadQueryError{Msg: fmt.Sprintf(format, args...)}
}

// plan is a query resolved against its app.
type plan struct {
	q      Query
	app    *apps.App
	layout *layout
	// span is the index of the window length read (app.WindowsMs), srcMs
	// that length; rowMs the length of the answer's windows: srcMs, a
	// multiple of it (rolled up), or 0 (AllWindows).
	span         int
	srcMs, rowMs int64
	// from and to bound the starts of the windows read.
	from, to int64
	// project[i] is the index in the app's key of the query's i-th key.
	project []int
	names   []string
	// whole: the query's key is the app's key, as stored
	whole bool
	// where: the conditions of q.Where on the app's key, by position in it
	where []keyCond
	// points: when where fixes every field of the app's key, the keys it
	// allows (at most maxPoints), looked up in each window rather than
	// every cell scanned; nil otherwise.
	points []string
	// order: the index in the app's aggregates of q.OrderBy, or -1;
	// orderFixed its slots when it is a fixed aggregate with a number
	// read unboxed.
	order      int
	orderFixed *fixedAgg
}

// keyCond holds when the value at position i of a cell's key is one of vals.
type keyCond struct {
	i    int
	vals map[string]bool
}

func newPlan(app *apps.App, q Query) (*plan, error) {
	if q.ToMs <= q.FromMs {
		return nil, badQuery("the range is empty: from must be before to")
	}
	if q.Limit < 0 {
		return nil, badQuery("limit must not be negative")
	}
	l, err := newLayout(app)
	if err != nil {
		return nil, err
	}
	pl := &plan{q: q, app: app, layout: l}
	if err := pl.pickWindows(); err != nil {
		return nil, err
	}
	groupBy := q.GroupBy
	if groupBy == nil {
		groupBy = app.Spec.GroupBy
	}
	for _, g := range groupBy {
		i := slices.Index(app.Spec.GroupBy, g)
		if i < 0 {
			return nil, badQuery("app %s does not group by %q (it groups by %s)", app.Name(), ratelog.Clip(g), strings.Join(app.Spec.GroupBy, ", "))
		}
		if slices.Contains(pl.names, g) {
			return nil, badQuery("group_by names %q twice", ratelog.Clip(g))
		}
		pl.project = append(pl.project, i)
		pl.names = append(pl.names, g)
	}
	pl.whole = slices.Equal(pl.names, app.Spec.GroupBy)
	for _, k := range slices.Sorted(maps.Keys(q.Where)) {
		i := slices.Index(app.Spec.GroupBy, k)
		if i < 0 {
			return nil, badQuery("where: app %s has no group key %q (it groups by %s)", app.Name(), ratelog.Clip(k), strings.Join(app.Spec.GroupBy, ", "))
		}
		c := keyCond{i: i, vals: map[string]bool{}}
		for _, v := range q.Where[k] {
			// Stored keys hold no NUL (apps.EncodeKey replaces it).
			c.vals[strings.ReplaceAll(v, "\x00", "\uFFFD")] = true
		}
		if len(c.vals) == 0 {
			return nil, badQuery("where: no value given for %q", ratelog.Clip(k))
		}
		pl.where = append(pl.where, c)
	}
	if n := len(app.Spec.GroupBy); n > 0 && len(pl.where) == n {
		pl.points = pointKeys(pl.where, n)
	}
	pl.order = -1
	if q.OrderBy != "" {
		pl.order = slices.IndexFunc(app.Aggs, func(a apps.Agg) bool { return a.Name == q.OrderBy })
		if pl.order < 0 {
			var names []string
			for _, a := range app.Aggs {
				names = append(names, a.Name)
			}
			return nil, badQuery("order_by: app %s has no aggregate %q (it has %s)", app.Name(), ratelog.Clip(q.OrderBy), strings.Join(names, ", "))
		}
		for j, f := range l.fixed {
			if f.i == pl.order && f.fn.NumberSlots != nil {
				pl.orderFixed = &l.fixed[j]
			}
		}
	}
	return pl, nil
}

// pickWindows chooses the window length to read and the range of window
// starts.
func (pl *plan) pickWindows() error {
	q, ws := pl.q, pl.app.WindowsMs
	pl.from, pl.to = q.FromMs, q.ToMs
	switch {
	case q.AllWindows && q.WindowMs != 0:
		return badQuery("a window length and all windows cannot be asked together")
	case q.AllWindows:
		// The longest windows that cover exactly what the shortest do:
		// fewer cells to merge, and sketches merged fewer times. Windows
		// starting in [from, to) cover that range exactly when both ends
		// are on boundaries of both lengths.
		for i, ms := range ws {
			if q.FromMs%ms == 0 && q.ToMs%ms == 0 && q.FromMs%ws[0] == 0 && q.ToMs%ws[0] == 0 {
				pl.span = i
			}
		}
		pl.srcMs = ws[pl.span]
		return nil
	case q.WindowMs == 0:
		pl.srcMs, pl.rowMs = ws[0], ws[0]
		return nil
	case q.WindowMs < 0:
		return badQuery("the window length must be positive")
	}
	pl.span = -1
	for i, ms := range ws {
		if q.WindowMs%ms == 0 {
			pl.span = i // the longest that divides it
		}
	}
	if pl.span < 0 {
		names := make([]string, len(ws))
		for i, ms := range ws {
			names[i] = config.Duration(time.Duration(ms) * time.Millisecond).String()
		}
		return badQuery("window %v is not one of app %s's windows (%s) nor a multiple of one",
			config.Duration(time.Duration(q.WindowMs)*time.Millisecond), pl.app.Name(), strings.Join(names, ", "))
	}
	pl.srcMs, pl.rowMs = ws[pl.span], q.WindowMs
	if pl.rowMs != pl.srcMs {
		// Rows whose start is in [from, to), each whole: the windows read
		// start in [ceil(from), ceil(to)) on the rows' boundaries.
		ceil := func(t int64) int64 { return apps.WindowStart(t+pl.rowMs-1, pl.rowMs) }
		pl.from, pl.to = ceil(q.FromMs), ceil(q.ToMs)
	}
	return nil
}

// maxPoints bounds the keys a point query looks up in each window: a
// where that allows more of them (several values of each key multiply)
// scans the cells instead.
const maxPoints = 4096

// pointKeys returns the encoded keys of n fields that conditions on all
// n of them allow (the product of their values), or nil if there are
// more than maxPoints.
func pointKeys(where []keyCond, n int) []string {
	vals := make([][]string, n)
	total := 1
	for _, c := range where {
		vals[c.i] = slices.Sorted(maps.Keys(c.vals))
		if total *= len(vals[c.i]); total > maxPoints {
			return nil
		}
	}
	keys := make([]string, 0, total)
	cur := make([]string, n)
	var walk func(i int)
	walk = func(i int) {
		if i == n {
			keys = append(keys, apps.EncodeKey(cur))
			return
		}
		for _, v := range vals[i] {
			cur[i] = v
			walk(i + 1)
		}
	}
	walk(0)
	return keys
}

// eachCell calls fn for the cells of span sp whose window is in the
// plan's range and that its where keeps.
func (pl *plan) eachCell(sp *span, fn func(window int64, key string, c cell)) {
	for w := range sp.windows {
		if w >= pl.from && w < pl.to {
			pl.eachCellIn(sp, w, func(key string, c cell) { fn(w, key, c) })
		}
	}
}

// eachCellIn calls fn for the cells of window w of span sp that the
// plan's where keeps: with point keys, each looked up (a window of a
// million cells costs the lookups of the keys asked), otherwise every
// cell of the window tested.
func (pl *plan) eachCellIn(sp *span, w int64, fn func(key string, c cell)) {
	if pl.points != nil && len(pl.points) < sp.windows[w].len() {
		for _, key := range pl.points {
			if c, ok := sp.get(w, key); ok {
				fn(key, c)
			}
		}
		return
	}
	sp.eachIn(w, func(key string, c cell) {
		if pl.keep(key) {
			fn(key, c)
		}
	})
}

// anyIn reports whether window w of span sp has a cell the plan's where
// keeps.
func (pl *plan) anyIn(sp *span, w int64) bool {
	wc := sp.windows[w]
	if pl.points != nil && len(pl.points) < wc.len() {
		for _, key := range pl.points {
			if _, ok := wc.find(key); ok {
				return true
			}
		}
		return false
	}
	if wc == nil {
		return false
	}
	for i := range int32(wc.len()) {
		if pl.keep(wc.key(i)) {
			return true
		}
	}
	return false
}

// keep reports whether a cell's key (the app's full key, encoded) meets
// the query's where conditions.
func (pl *plan) keep(key string) bool {
	if len(pl.where) == 0 {
		return true
	}
	for _, c := range pl.where {
		if !c.vals[keyField(key, c.i)] {
			return false
		}
	}
	return true
}

// keyField is the i-th value of an encoded key (apps.EncodeKey), "" if it
// has fewer, without the allocations of decoding it: a query may look at
// millions of keys.
func keyField(key string, i int) string {
	for ; i > 0; i-- {
		j := strings.IndexByte(key, 0)
		if j < 0 {
			return ""
		}
		key = key[j+1:]
	}
	if j := strings.IndexByte(key, 0); j >= 0 {
		return key[:j]
	}
	return key
}

// merger accumulates partial cells into result rows.
type merger struct {
	pl   *plan
	rows map[cellKey]*mrow
}

type mrow struct {
	start, end int64
	cell       cell
}

func newMerger(pl *plan) *merger { return &merger{pl: pl, rows: map[cellKey]*mrow{}} }

// add merges one stored or in-memory cell of the plan's window length if
// its window is in range.
func (m *merger) add(window int64, key string, c cell) {
	pl := m.pl
	if window < pl.from || window >= pl.to || !pl.keep(key) {
		return
	}
	k := cellKey{window: window}
	switch {
	case pl.whole:
		k.key = key
	case len(pl.project) == 1:
		// One value is its own encoding (it holds no NUL).
		k.key = keyField(key, pl.project[0])
	case len(pl.project) > 0:
		full := apps.DecodeKey(key, len(pl.app.Spec.GroupBy))
		vals := make([]string, len(pl.project))
		for i, j := range pl.project {
			if j < len(full) {
				vals[i] = full[j]
			}
		}
		k.key = apps.EncodeKey(vals)
	}
	start, end := window, window+pl.srcMs
	switch {
	case pl.q.AllWindows:
		k.window = 0
	case pl.rowMs != pl.srcMs:
		start = apps.WindowStart(window, pl.rowMs)
		k.window, end = start, start+pl.rowMs
	}
	r, ok := m.rows[k]
	if !ok {
		r = &mrow{start: start, end: end, cell: pl.layout.newCell()}
		m.rows[k] = r
	}
	r.start = min(r.start, start)
	r.end = max(r.end, end)
	pl.layout.merge(r.cell, c)
}

func (m *merger) result() (*Result, error) {
	rows, truncated, err := m.first(m.pl.q.Limit)
	if err != nil {
		return nil, err
	}
	return m.pl.result(rows, truncated), nil
}

// result is the answer made of rows, in their order. The rows' keys are
// copied into one string of their own: a key read from a window is a
// view of the window's key bytes (windowCells.key), which an answer kept
// by its caller would otherwise keep alive whole.
func (pl *plan) result(rows []keyed, truncated bool) *Result {
	res := &Result{App: pl.app.Name(), Rows: make([]Row, 0, len(rows)), Truncated: truncated}
	n := 0
	for _, kr := range rows {
		n += len(kr.key)
	}
	var b strings.Builder
	b.Grow(n)
	for _, kr := range rows {
		b.WriteString(kr.key)
	}
	all := b.String()
	for _, kr := range rows {
		own := all[:len(kr.key)]
		all = all[len(kr.key):]
		key := make(map[string]string, len(pl.names))
		for i, v := range apps.DecodeKey(own, len(pl.names)) {
			key[pl.names[i]] = v
		}
		res.Rows = append(res.Rows, Row{WindowStartMs: kr.r.start, WindowEndMs: kr.r.end, Key: key, Values: pl.layout.results(kr.r.cell)})
	}
	return res
}

// keyed is a merged row with its (projected) key, in answer order by
// window start, then key. The order is total: no two rows share both.
// With an order_by, v is the row's value of that aggregate (has: it
// has one).
type keyed struct {
	start int64 // r.start
	key   string
	r     *mrow
	v     float64
	has   bool
}

func compareKeyed(a, b keyed) int {
	if c := cmp.Compare(a.start, b.start); c != 0 {
		return c
	}
	return strings.Compare(a.key, b.key)
}

// byValue orders rows by their order_by value (descending when desc),
// rows without a value last, ties in answer order.
func byValue(desc bool) func(a, b keyed) int {
	return func(a, b keyed) int {
		switch {
		case a.has != b.has:
			if a.has {
				return -1
			}
			return 1
		case a.has && a.v != b.v:
			// cmp.Compare, not a.v != b.v, says whether they tie: two
			// NaNs are unequal yet compare equal, and fall to the key
			// as a tie does, so that the order stays total.
			if c := cmp.Compare(a.v, b.v); c != 0 {
				if desc {
					c = -c
				}
				return c
			}
		}
		return compareKeyed(a, b)
	}
}

// keyed returns a merged row with its order_by value.
func (m *merger) keyed(key string, r *mrow) (keyed, error) {
	x := keyed{start: r.start, key: key, r: r}
	err := m.pl.orderValue(&x, r.cell)
	return x, err
}

// orderValue sets x's order_by value from cell c.
func (pl *plan) orderValue(x *keyed, c cell) error {
	if i := pl.order; i >= 0 {
		if f := pl.orderFixed; f != nil {
			x.v, x.has = f.fn.NumberSlots(c.f[f.off : f.off+f.n])
			return nil
		}
		switch v := pl.layout.result(c, i).(type) {
		case float64:
			x.v, x.has = v, true
		case nil:
		default:
			return badQuery("order_by: aggregate %s (%s) has values that are not numbers", pl.q.OrderBy, pl.app.Aggs[i].Fn.Name)
		}
	}
	return nil
}

// less is the order of the answer's rows.
func (pl *plan) less() func(a, b keyed) int {
	if pl.order >= 0 {
		return byValue(pl.q.Desc)
	}
	return compareKeyed
}

// first returns the first limit rows in the answer's order (every row
// when limit is 0) and whether rows were left out. With a limit it keeps
// the limit first rows seen in a bounded max-heap, so that a limit of 10
// over a million rows costs a million comparisons with the heap's top,
// not a sort of a million rows.
func (m *merger) first(limit int) ([]keyed, bool, error) {
	less := m.pl.less()
	if limit <= 0 || limit >= len(m.rows) {
		rows := make([]keyed, 0, len(m.rows))
		for k, r := range m.rows {
			x, err := m.keyed(k.key, r)
			if err != nil {
				return nil, false, err
			}
			rows = append(rows, x)
		}
		slices.SortFunc(rows, less)
		return rows, false, nil
	}
	h := make([]keyed, 0, limit) // max-heap: h[0] is the last row kept
	for k, r := range m.rows {
		x, err := m.keyed(k.key, r)
		if err != nil {
			return nil, false, err
		}
		if len(h) < limit {
			h = append(h, x)
			siftUp(h, len(h)-1, less)
			continue
		}
		if less(x, h[0]) < 0 {
			h[0] = x
			siftDown(h, 0, less)
		}
	}
	slices.SortFunc(h, less)
	return h, true, nil
}

// heapify makes h a max-heap (h[0] the last in less's order).
func heapify(h []keyed, less func(a, b keyed) int) {
	for i := len(h)/2 - 1; i >= 0; i-- {
		siftDown(h, i, less)
	}
}

func siftUp(h []keyed, i int, less func(a, b keyed) int) {
	for i > 0 {
		parent := (i - 1) / 2
		if less(h[i], h[parent]) <= 0 {
			return
		}
		h[i], h[parent] = h[parent], h[i]
		i = parent
	}
}

func siftDown(h []keyed, i int, less func(a, b keyed) int) {
	for {
		big, l, r := i, 2*i+1, 2*i+2
		if l < len(h) && less(h[l], h[big]) > 0 {
			big = l
		}
		if r < len(h) && less(h[r], h[big]) > 0 {
			big = r
		}
		if big == i {
			return
		}
		h[i], h[big] = h[big], h[i]
		i = big
	}
}

// cellSink takes the cells of a query's range: a merger, or a topN.
type cellSink interface {
	add(window int64, key string, c cell)
	// fresh is an empty sink of the same query, absorb adds one's rows.
	fresh() cellSink
	absorb(o cellSink)
	// count counts the rows so far; result is the answer.
	count() int
	result() (*Result, error)
	plan() *plan
}

func (m *merger) fresh() cellSink { return newMerger(m.pl) }
func (m *merger) count() int      { return len(m.rows) }
func (m *merger) plan() *plan     { return m.pl }

// cellRows reports whether each row of pl's answer is one cell of one
// shard: the query's key is the app's, its windows are the span's (not
// rolled up nor merged), and a single shard answers (the same key and
// window in two shards merge into one row). A row can then be judged by
// its cell alone, as it is read.
func (pl *plan) cellRows(shards int) bool {
	return pl.whole && !pl.q.AllWindows && pl.rowMs == pl.srcMs && shards == 1
}

// topN answers a query with a limit whose rows are cells (cellRows): it
// keeps the first limit rows in a bounded max-heap as the cells are read,
// so that a top-10 of a million cells costs a million comparisons with
// the heap's top and builds ten rows, not a million: a cell's row (its
// cell copied, its key decoded) is made only once it enters the heap.
// The order is the answer's (plan.less, total: no two rows share window
// and key), so the rows kept are those a sort of every row would put
// first.
type topN struct {
	pl    *plan
	less  func(a, b keyed) int
	h     []keyed // max-heap once full: h[0] is the last row kept (push)
	rows  []mrow  // the rows' room, allocated a slab at a time (row)
	n     int     // rows offered
	err   error   // the first order_by value that is not a number
	limit int
}

// newTopN's heap grows as rows enter it: a limit is a bound, not a size
// (serving gives every query max_rows as its limit, millions of rows of
// room for a point query's one).
func newTopN(pl *plan) *topN {
	return &topN{pl: pl, less: pl.less(), limit: pl.q.Limit, h: make([]keyed, 0, min(pl.q.Limit, 64))}
}

func (t *topN) fresh() cellSink { return newTopN(t.pl) }
func (t *topN) count() int      { return t.n }
func (t *topN) plan() *plan     { return t.pl }

func (t *topN) add(window int64, key string, c cell) {
	pl := t.pl
	if window < pl.from || window >= pl.to || !pl.keep(key) || t.err != nil {
		return
	}
	t.n++
	t.offer(window, key, c)
}

// offer judges a cell of the range that the where keeps (counted in n).
func (t *topN) offer(window int64, key string, c cell) {
	pl := t.pl
	x := keyed{start: window, key: key}
	if err := pl.orderValue(&x, c); err != nil {
		t.err = err
		return
	}
	if len(t.h) == t.limit && t.less(x, t.h[0]) >= 0 {
		return
	}
	// The cell belongs to the shard's table: copy it, since ingest
	// changes it once the shard is unlocked.
	x.r = t.row()
	*x.r = mrow{start: window, end: window + pl.srcMs, cell: pl.layout.newCell()}
	pl.layout.merge(x.r.cell, c)
	t.push(x)
}

// rowSlab is how many rows a topN allocates at a time.
const rowSlab = 256

// row returns room for a row that enters the heap: one allocation for
// rowSlab rows rather than one each (a query without a limit of its own
// keeps every row). A slab lives while one of its rows is in the heap.
func (t *topN) row() *mrow {
	if len(t.rows) == cap(t.rows) {
		t.rows = make([]mrow, 0, rowSlab)
	}
	t.rows = t.rows[:len(t.rows)+1]
	return &t.rows[len(t.rows)-1]
}

// room makes room in the heap for the rows of a window of n cells that
// may enter it before it is full, in one allocation rather than growing
// the heap a row at a time.
func (t *topN) room(n int) {
	if free := t.limit - len(t.h); free > 0 {
		t.h = slices.Grow(t.h, min(free, n))
	}
}

// scannable reports whether scan can read the plan's cells: an order_by
// whose value is a fixed slot of the cell (agg.Func.Slot0Value), and no
// where (every cell of the range is a row, so none is judged by its key).
func (t *topN) scannable() bool {
	f := t.pl.orderFixed
	return f != nil && f.fn.Slot0Value && len(t.pl.where) == 0 && t.pl.points == nil && t.err == nil
}

// scan offers every cell of span sp in the plan's range (scannable), as
// eachCell and add would, but judges a cell by its slot first: once the
// heap is full, a cell whose value is worse than the heap's top value
// cannot enter it (the order is by value first, so neither its window
// nor its key matters), and the loop over the window's slot array passes
// it by with one comparison, without a call, its key or a cell view.
// Every other cell (a value equal to the top's, one that is better, no
// value, or a heap not yet full) goes through offer, the general path.
// Only a value that NumberSlots reports (finite for sum, min, max) is
// in the order; the slots without one are ±Inf or NaN: NaN compares
// false and goes to offer, -Inf (desc) or +Inf (asc) is passed by, and
// rightly, since a row without a value sorts after any with one.
func (t *topN) scan(sp *span) {
	pl := t.pl
	off := pl.orderFixed.off
	desc := pl.q.Desc
	for w, wc := range sp.windows {
		if w < pl.from || w >= pl.to || wc.len() == 0 {
			continue
		}
		n, stride := wc.len(), wc.stride
		t.n += n
		t.room(n)
		slots := wc.slots[off:]
		for i := 0; i < n; i++ {
			if len(t.h) == t.limit && t.h[0].has {
				thr, at := t.h[0].v, i*stride
				if desc {
					for i < n && slots[at] < thr {
						i, at = i+1, at+stride
					}
				} else {
					for i < n && slots[at] > thr {
						i, at = i+1, at+stride
					}
				}
				if i == n {
					break
				}
			}
			t.offer(w, wc.key(int32(i)), wc.cell(int32(i)))
			if t.err != nil {
				return
			}
		}
	}
}

// keyScannable reports whether scanKeys can read the plan's cells: no
// order_by (rows in window and key order) and no where.
func (t *topN) keyScannable() bool {
	return t.pl.order < 0 && len(t.pl.where) == 0 && t.pl.points == nil && t.err == nil
}

// scanKeys offers every cell of window w (keyScannable), as add would,
// but once the heap is full it passes a cell by on its window and key
// alone: a window later than the top's holds no row that enters, and in
// the top's window a key at or after the top's does not either. The
// loop compares strings in place, without a call or a cell view.
func (t *topN) scanKeys(w int64, wc *windowCells) {
	pl := t.pl
	n := wc.len()
	if n == 0 || w < pl.from || w >= pl.to {
		return
	}
	t.n += n
	t.room(n)
	for i := 0; i < n; i++ {
		if len(t.h) == t.limit {
			top := t.h[0]
			if w > top.start {
				return
			}
			if w == top.start {
				for i < n && wc.key(int32(i)) >= top.key {
					i++
				}
				if i == n {
					return
				}
			}
		}
		t.offer(w, wc.key(int32(i)), wc.cell(int32(i)))
		if t.err != nil {
			return
		}
	}
}

// push adds x to the rows kept. Until the limit is reached the rows are
// only appended, and made a heap once, when they reach it (heapify): a
// query whose limit is at least its rows (one without a limit of its
// own gets max_rows as one) never orders them as a heap, and result
// sorts them once. No one looks at h[0] before the limit is reached.
func (t *topN) push(x keyed) {
	if len(t.h) < t.limit {
		t.h = append(t.h, x)
		if len(t.h) == t.limit {
			heapify(t.h, t.less)
		}
		return
	}
	t.h[0] = x
	siftDown(t.h, 0, t.less)
}

func (t *topN) absorb(o cellSink) {
	ot := o.(*topN)
	t.n += ot.n
	if t.err == nil {
		t.err = ot.err
	}
	for _, x := range ot.h {
		if len(t.h) < t.limit || t.less(x, t.h[0]) < 0 {
			t.push(x)
		}
	}
}

func (t *topN) result() (*Result, error) {
	if t.err != nil {
		return nil, t.err
	}
	slices.SortFunc(t.h, t.less)
	return t.pl.result(t.h, t.n > t.limit), nil
}

// queryShards returns the shards of pl's app's category running on this node
// among buckets (nil: all of them), and the others, with their state, as
// missing; a running shard whose state lacks part of the range from
// fromMs, or builds the span pl reads, is returned and listed as
// incomplete as well.
func (p *Puma) queryShards(pl *plan, buckets []int, fromMs int64) ([]*shard, []MissingShard) {
	cat := pl.app.Spec.Category
	if buckets == nil {
		for b := 0; b < p.deps.Buckets(cat); b++ {
			buckets = append(buckets, b)
		}
	}
	var shards []*shard
	var missing []MissingShard
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, b := range buckets {
		id := shardID{cat, b}
		if s, ok := p.shards[id]; ok && isReady(s) {
			shards = append(shards, s)
			s.mu.RLock()
			why := s.incomplete(pl, fromMs)
			s.mu.RUnlock()
			if why != "" {
				missing = append(missing, MissingShard{Category: cat, Bucket: b, State: StateIncomplete, Error: why})
			}
			continue
		}
		st := p.status(id)
		missing = append(missing, MissingShard{Category: cat, Bucket: b, State: st.State, Error: st.Error})
	}
	return shards, missing
}

// Query answers from memory: fresh, including what is not yet committed.
// It covers the shards running on this node; the answer lists the others
// of the app's category (recovering, failed, or held elsewhere) in
// Missing.
func (p *Puma) Query(ctx context.Context, q Query) (*Result, error) {
	app, ok := p.apps[q.App]
	if !ok {
		return nil, badQuery("unknown app %q", ratelog.Clip(q.App))
	}
	pl, err := newPlan(app, q)
	if err != nil {
		return nil, err
	}
	cat := app.Spec.Category
	shards, missing := p.queryShards(pl, nil, q.FromMs)
	asOf := AsOf{TimeMs: p.deps.Now().UnixMilli()}
	if len(shards) == 0 {
		asOf.TimeMs = 0
	}
	for _, s := range shards {
		s.snapshot(func(tables []*table) {
			for _, t := range tables {
				if t.app == app && t.watermark > asOf.WatermarkMs {
					asOf.WatermarkMs = t.watermark
				}
			}
		})
	}
	// A limit over rows that are cells keeps the first rows as the cells
	// are read (topN); other answers merge every row first.
	var m cellSink = newMerger(pl)
	if q.Limit > 0 && pl.cellRows(len(shards)) {
		m = newTopN(pl)
	}
	var res *Result
	if q.Limit > 0 && !q.AllWindows && q.OrderBy == "" && !hasEvicted(shards, pl) {
		res, err = firstWindows(ctx, app, shards, m)
		if err != nil {
			return nil, err
		}
		// It reads memory only: if windows of the range were evicted
		// meanwhile, answer again with the store's.
		if hasEvicted(shards, pl) {
			res, m = nil, m.fresh()
		}
	}
	if res == nil {
		for _, s := range shards {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			// Evicted windows come from the store: a shard that cannot
			// read them is left out whole, and said to be.
			if err := s.mergeShard(ctx, pl, m); err != nil {
				if cerr := ctx.Err(); cerr != nil {
					return nil, cerr
				}
				missing = append(missing, MissingShard{Category: cat, Bucket: s.bucket, State: StateFailed, Error: clipError(err.Error())})
			}
		}
		if res, err = m.result(); err != nil {
			return nil, err
		}
	}
	res.Missing = missing
	res.AsOf = asOf
	return res, nil
}

// firstWindows answers a query with a limit and one row per window and
// key. Its rows come in window order, and a row's window merges only
// cells of that window (or of the windows it rolls up), so it merges the
// windows of the range one row window at a time, oldest first, and stops
// at the first that completes the limit: a limit of 10 over a million
// cells merges one window, not the million. The answer is the one a
// merge of every cell would give.
//
// It reads each shard's cells window by window (the shard locked for one
// window at a time, so that ingest is not held up for the whole answer).
func firstWindows(ctx context.Context, app *apps.App, shards []*shard, m cellSink) (*Result, error) {
	pl := m.plan()
	q := pl.q
	// The window starts in range of every shard's table of the app.
	seen := map[int64]bool{}
	var windows []int64
	for _, s := range shards {
		s.snapshot(func(tables []*table) {
			for _, t := range tables {
				if t.app != app {
					continue
				}
				for w := range t.spans[pl.span].windows {
					if w >= pl.from && w < pl.to && !seen[w] {
						seen[w] = true
						windows = append(windows, w)
					}
				}
			}
		})
	}
	slices.Sort(windows)
	// merge adds window w's cells, or with dry only reports whether it has
	// any (retention may have dropped it since it was listed).
	merge := func(w int64, dry bool) (found bool) {
		for _, s := range shards {
			s.snapshot(func(tables []*table) {
				for _, t := range tables {
					if t.app != app {
						continue
					}
					sp := t.spans[pl.span]
					if dry {
						// Only a cell the where filter keeps is a row left out.
						found = found || pl.anyIn(sp, w)
						continue
					}
					found = found || sp.windows[w].len() > 0
					if tn, ok := m.(*topN); ok && tn.keyScannable() {
						tn.scanKeys(w, sp.windows[w])
						continue
					}
					pl.eachCellIn(sp, w, func(key string, c cell) { m.add(w, key, c) })
				}
			})
			if dry && found {
				return true
			}
		}
		return found
	}
	more := false
	for i, w := range windows {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		merge(w, false)
		// A rolled-up row is complete once its last window is merged.
		last := i+1 == len(windows) || apps.WindowStart(windows[i+1], pl.rowMs) != apps.WindowStart(w, pl.rowMs)
		if last && m.count() >= q.Limit {
			for _, later := range windows[i+1:] {
				if more = merge(later, true); more {
					break
				}
			}
			break
		}
	}
	res, err := m.result()
	if err != nil {
		return nil, err
	}
	res.Truncated = res.Truncated || more
	return res, nil
}
