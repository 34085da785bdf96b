package puma

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/freeway-dev/freeway/internal/apps"
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
}

// NewCommitted returns a reader of committed state.
func NewCommitted(st store.Store, table string, appList []*apps.App, buckets func(string) int) *Committed {
	c := &Committed{st: st, table: table, apps: map[string]*apps.App{}, buckets: buckets}
	for _, a := range appList {
		c.apps[a.Name()] = a
	}
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

// Query answers q from committed state.
func (c *Committed) Query(ctx context.Context, q Query) (*Result, error) {
	app, ok := c.apps[q.App]
	if !ok {
		return nil, badQuery("unknown app %q", q.App)
	}
	pl, err := newPlan(app, q)
	if err != nil {
		return nil, err
	}
	fp := fingerprint(app)
	m := newMerger(pl)
	cat := app.Spec.Category
	for b := 0; b < c.buckets(cat); b++ {
		cells, err := c.st.Get(ctx, c.table, commitRow(cat, b), store.Latest)
		if err != nil {
			return nil, fmt.Errorf("read commit of %s/%d: %w", cat, b, err)
		}
		var st commitState
		for _, cell := range cells {
			if cell.Column == "commit" {
				if err := json.Unmarshal(cell.Value, &st); err != nil {
					return nil, fmt.Errorf("decode commit of %s/%d: %w", cat, b, err)
				}
			}
		}
		if st.Epoch == 0 {
			continue
		}
		prefix := appPrefix(cat, b, app, fp)
		from, to := prefix+windowKey(q.FromMs), prefix+windowKey(q.ToMs)
		err = c.st.Scan(ctx, c.table, from, to, st.Epoch, func(row string, cs []store.Cell) error {
			wk, key, ok := strings.Cut(strings.TrimPrefix(row, prefix), "/")
			w, wok := parseWindowKey(wk)
			if !ok || !wok {
				return fmt.Errorf("malformed cell row %q", row)
			}
			for _, cell := range cs {
				if cell.Column != "v" {
					continue
				}
				slots, err := pl.layout.decodeCell(cell.Value)
				if err != nil {
					return err
				}
				m.add(w, key, slots)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("scan %s/%d: %w", cat, b, err)
		}
	}
	return m.result(), nil
}
