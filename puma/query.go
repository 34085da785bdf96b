package puma

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/freeway-dev/freeway/internal/apps"
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
	// Limit bounds the rows (0: no limit).
	Limit int
}

// Row is one (window, key) of an answer.
type Row struct {
	WindowStartMs int64
	WindowEndMs   int64
	Key           map[string]string
	Values        map[string]any // float64, or nil when there is no value
}

// Result is a query's answer.
type Result struct {
	App  string
	Rows []Row
	// Truncated: Limit cut rows off.
	Truncated bool
	// Missing lists the shards of the app's category whose data the
	// answer lacks; empty when the answer is complete.
	Missing []MissingShard
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
	// project[i] is the index in the app's key of the query's i-th key.
	project []int
	names   []string
	// whole: the query's key is the app's key, as stored
	whole bool
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
	return pl, nil
}

// merger accumulates partial cells into result rows.
type merger struct {
	pl   *plan
	rows map[cellKey]*mrow
}

type mrow struct {
	start, end int64
	cell       []float64
}

func newMerger(pl *plan) *merger { return &merger{pl: pl, rows: map[cellKey]*mrow{}} }

// add merges one stored or in-memory cell if its window is in range.
func (m *merger) add(window int64, key string, cell []float64) {
	pl := m.pl
	if window < pl.q.FromMs || window >= pl.q.ToMs {
		return
	}
	k := cellKey{window: window}
	switch {
	case pl.whole:
		k.key = key
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
	if pl.q.AllWindows {
		k.window = 0
	}
	r, ok := m.rows[k]
	if !ok {
		r = &mrow{start: window, end: window + pl.app.WindowMs, cell: pl.layout.newCell()}
		m.rows[k] = r
	}
	r.start = min(r.start, window)
	r.end = max(r.end, window+pl.app.WindowMs)
	pl.layout.merge(r.cell, cell)
}

func (m *merger) result() *Result {
	pl := m.pl
	rows, truncated := m.first(pl.q.Limit)
	res := &Result{App: pl.app.Name(), Rows: make([]Row, 0, len(rows)), Truncated: truncated}
	for _, kr := range rows {
		key := make(map[string]string, len(pl.names))
		for i, v := range apps.DecodeKey(kr.key, len(pl.names)) {
			key[pl.names[i]] = v
		}
		res.Rows = append(res.Rows, Row{WindowStartMs: kr.r.start, WindowEndMs: kr.r.end, Key: key, Values: pl.layout.results(kr.r.cell)})
	}
	return res
}

// keyed is a merged row with its (projected) key, in answer order by
// window start, then key. The order is total: no two rows share both.
type keyed struct {
	key string
	r   *mrow
}

func compareKeyed(a, b keyed) int {
	if c := cmp.Compare(a.r.start, b.r.start); c != 0 {
		return c
	}
	return strings.Compare(a.key, b.key)
}

// first returns the first limit rows in answer order (every row when limit
// is 0) and whether rows were left out. With a limit it keeps the limit
// smallest rows seen in a bounded max-heap, so that a limit of 10 over a
// million rows costs a million comparisons with the heap's top, not a
// sort of a million rows.
func (m *merger) first(limit int) ([]keyed, bool) {
	if limit <= 0 || limit >= len(m.rows) {
		rows := make([]keyed, 0, len(m.rows))
		for k, r := range m.rows {
			rows = append(rows, keyed{k.key, r})
		}
		slices.SortFunc(rows, compareKeyed)
		return rows, false
	}
	h := make([]keyed, 0, limit) // max-heap: h[0] is the last row kept
	for k, r := range m.rows {
		x := keyed{k.key, r}
		if len(h) < limit {
			h = append(h, x)
			siftUp(h, len(h)-1)
			continue
		}
		if compareKeyed(x, h[0]) < 0 {
			h[0] = x
			siftDown(h, 0)
		}
	}
	slices.SortFunc(h, compareKeyed)
	return h, true
}

func siftUp(h []keyed, i int) {
	for i > 0 {
		parent := (i - 1) / 2
		if compareKeyed(h[i], h[parent]) <= 0 {
			return
		}
		h[i], h[parent] = h[parent], h[i]
		i = parent
	}
}

func siftDown(h []keyed, i int) {
	for {
		big, l, r := i, 2*i+1, 2*i+2
		if l < len(h) && compareKeyed(h[l], h[big]) > 0 {
			big = l
		}
		if r < len(h) && compareKeyed(h[r], h[big]) > 0 {
			big = r
		}
		if big == i {
			return
		}
		h[i], h[big] = h[big], h[i]
		i = big
	}
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
	var shards []*shard
	var missing []MissingShard
	cat := app.Spec.Category
	p.mu.RLock()
	for b := 0; b < p.deps.Buckets(cat); b++ {
		id := shardID{cat, b}
		if s, ok := p.shards[id]; ok && isReady(s) {
			shards = append(shards, s)
			s.mu.RLock()
			why := s.gap.incomplete(app, q.FromMs)
			s.mu.RUnlock()
			if why != "" {
				missing = append(missing, MissingShard{Category: cat, Bucket: b, State: StateIncomplete, Error: why})
			}
			continue
		}
		st := p.status(id)
		missing = append(missing, MissingShard{Category: cat, Bucket: b, State: st.State, Error: st.Error})
	}
	p.mu.RUnlock()
	m := newMerger(pl)
	var res *Result
	if q.Limit > 0 && !q.AllWindows {
		res, err = firstWindows(ctx, app, shards, m)
		if err != nil {
			return nil, err
		}
	} else {
		for _, s := range shards {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			s.snapshot(func(tables []*table) {
				for _, t := range tables {
					if t.app != app {
						continue
					}
					t.each(q.FromMs, q.ToMs, m.add)
				}
			})
		}
		res = m.result()
	}
	res.Missing = missing
	return res, nil
}

// firstWindows answers a query with a limit and one row per window and
// key. Its rows come in window order, and a window's rows merge only
// cells of that window, so it merges the windows of the range one at a
// time, oldest first, and stops at the first window that completes the
// limit: a limit of 10 over a million cells merges one window, not the
// million. The answer is the one a merge of every cell would give.
//
// It reads each shard's cells window by window (the shard locked for one
// window at a time, so that ingest is not held up for the whole answer).
func firstWindows(ctx context.Context, app *apps.App, shards []*shard, m *merger) (*Result, error) {
	q := m.pl.q
	// The window starts in range of every shard's table of the app.
	seen := map[int64]bool{}
	var windows []int64
	for _, s := range shards {
		s.snapshot(func(tables []*table) {
			for _, t := range tables {
				if t.app != app {
					continue
				}
				for w := range t.windows {
					if w >= q.FromMs && w < q.ToMs && !seen[w] {
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
					cells := t.windows[w]
					found = found || len(cells) > 0
					if dry {
						continue
					}
					for key, cell := range cells {
						m.add(w, key, cell)
					}
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
		if len(m.rows) >= q.Limit {
			for _, later := range windows[i+1:] {
				if more = merge(later, true); more {
					break
				}
			}
			break
		}
	}
	res := m.result()
	res.Truncated = res.Truncated || more
	return res, nil
}
