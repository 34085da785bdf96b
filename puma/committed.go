package puma

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/store"
)

// Committed answers queries from the store alone: what the shards last
// committed, read as of each shard's committed epoch. It is what a serving
// process without a Puma node answers from, and it needs no lease.
type Committed struct {
	st      store.Store
	table   string
	apps    map[string]*apps.App
	buckets func(category string) int
	maxRows int // of a query's rows before order and limit (0: DefaultMaxPartialRows)
}

// NewCommitted returns a reader of committed state.
func NewCommitted(st store.Store, table string, appList []*apps.App, buckets func(string) int) *Committed {
	c := &Committed{st: st, table: table, apps: map[string]*apps.App{}, buckets: buckets}
	for _, a := range appList {
		c.apps[a.Name()] = a
	}
	return c
}

// WithMaxRows bounds the rows a Query builds before its order and limit
// (puma.max_partial_rows; 0: DefaultMaxPartialRows), as a node bounds
// its partials: a query over it is refused whole with a TooLargeError.
// It returns c.
func (c *Committed) WithMaxRows(n int) *Committed {
	c.maxRows = n
	return c
}

// Apps lists the apps, sorted by name.
func (c *Committed) Apps() []*apps.App {
	out := make([]*apps.App, 0, len(c.apps))
	for _, a := range c.apps {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

// Query answers q from committed state. A shard whose commit row or
// cells cannot be read or decoded (a store error, a damaged row) is left
// out of the answer and listed in Missing as failed, with its error; the
// other shards answer. A shard that never committed has no committed
// state and is not missing. When no shard of the category can be read,
// the query fails: an answer without any data is an error, not an answer.
// A query whose rows before order and limit would be more than its max
// rows (WithMaxRows) is refused whole with a TooLargeError, the rows
// counted as they are read.
func (c *Committed) Query(ctx context.Context, q Query) (*Result, error) {
	app, ok := c.apps[q.App]
	if !ok {
		return nil, badQuery("unknown app %q", ratelog.Clip(q.App))
	}
	pl, err := newPlan(app, q)
	if err != nil {
		return nil, err
	}
	m := newMerger(pl)
	cat := app.Spec.Category
	n := c.buckets(cat)
	var missing []MissingShard
	var first error
	failed := 0
	var asOf AsOf
	bounds := PartialBounds{Rows: c.maxRows}
	if bounds.Rows <= 0 {
		bounds.Rows = DefaultMaxPartialRows
	}
	var taken int64
	for b := 0; b < n; b++ {
		st, err := c.boundedShard(ctx, pl, b, m, bounds, &taken)
		if IsTooLarge(err) {
			return nil, err
		}
		if err == nil {
			if st.Epoch != 0 {
				if asOf.TimeMs == 0 || st.CommitMs < asOf.TimeMs {
					asOf.TimeMs = st.CommitMs
				}
				asOf.WatermarkMs = max(asOf.WatermarkMs, st.Watermarks[app.Name()])
			}
			if why := st.incomplete(pl, q.FromMs); why != "" {
				missing = append(missing, MissingShard{Category: cat, Bucket: b, State: StateIncomplete, Error: why})
			}
			continue
		}
		if cerr := ctx.Err(); cerr != nil {
			return nil, cerr
		}
		if first == nil {
			first = err
		}
		failed++
		missing = append(missing, MissingShard{Category: cat, Bucket: b, State: StateFailed, Error: clipError(err.Error())})
	}
	if n > 0 && failed == n {
		return nil, fmt.Errorf("no shard of category %s can be read: %w", cat, first)
	}
	res, err := m.result()
	if err != nil {
		return nil, err
	}
	res.Missing = missing
	res.AsOf = asOf
	return res, nil
}

// ShardStatuses lists every shard of the apps' categories as the store
// knows it: the node of its last commit (Owner), its epoch, position,
// time and watermarks, and what its committed state lacks (Incomplete).
// State is empty (the store does not know whether a node runs the shard
// now); a shard whose commit row cannot be read has Error set; one that
// never committed has Epoch 0.
func (c *Committed) ShardStatuses(ctx context.Context) []Status {
	seen := map[string]bool{}
	var cats []string
	for _, a := range c.apps {
		if !seen[a.Spec.Category] {
			seen[a.Spec.Category] = true
			cats = append(cats, a.Spec.Category)
		}
	}
	sort.Strings(cats)
	var out []Status
	for _, cat := range cats {
		for b := 0; b < c.buckets(cat); b++ {
			st := Status{Category: cat, Bucket: b}
			_, cs, _, err := readCommit(ctx, c.st, c.table, cat, b)
			switch {
			case err != nil:
				st.Error = clipError(err.Error())
			case cs.Epoch != 0:
				st.Owner, st.Epoch, st.Committed = cs.Owner, cs.Epoch, cs.Position.String()
				st.LastCommit, st.Watermarks = time.UnixMilli(cs.CommitMs), cs.Watermarks
			}
			if err == nil && cs.Gap != nil {
				st.Incomplete = clipError(cs.Gap.String())
			}
			out = append(out, st)
		}
	}
	return out
}
