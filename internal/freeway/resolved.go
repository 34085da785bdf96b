package freeway

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/freeway-dev/freeway/calligraphus"
	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
)

// Resolved is the configuration as the components consume it, derived
// once from a validated Config (New does it, and hands the same value to
// every module): the compiled apps, which of them consume each category,
// each category's bucket count, and how the writers route it (shard key
// and buckets). Nothing derives these again elsewhere, so the writer's
// buckets, Puma's shards, serving's shards and retention's consumers
// cannot disagree.
type Resolved struct {
	// Apps are the compiled apps, in file order.
	Apps []*apps.App
	// Consumers lists the apps consuming each category, in file order.
	Consumers map[string][]*apps.App
	// Routes says how calligraphus buckets each category that is declared
	// under categories: or consumed by an app: the category's shard_key,
	// else the first app's shard_key, else its group_by.
	Routes map[string]calligraphus.Route

	categories map[string]CategoryConfig // as declared
	defBuckets int
}

// Resolved derives what the components consume from c, which must be
// valid; New calls it once.
func (c *Config) Resolved() (*Resolved, error) {
	r := &Resolved{Consumers: map[string][]*apps.App{}, Routes: map[string]calligraphus.Route{},
		categories: maps.Clone(c.Categories), defBuckets: c.Buckets}
	for i, s := range c.Apps {
		a, err := apps.Compile(s, fmt.Sprintf("$.apps[%d]", i))
		if err != nil {
			return nil, err
		}
		r.Apps = append(r.Apps, a)
		r.Consumers[s.Category] = append(r.Consumers[s.Category], a)
	}
	for name := range c.Categories {
		r.Routes[name] = calligraphus.Route{Buckets: r.BucketsOf(name)}
	}
	for cat, consumers := range r.Consumers {
		a := consumers[0] // the first app decides
		fields := c.Categories[cat].ShardKey
		if len(fields) == 0 {
			fields = a.Spec.ShardKey
		}
		if len(fields) == 0 {
			fields = a.Spec.GroupBy
		}
		rt := calligraphus.Route{Buckets: r.BucketsOf(cat)}
		if len(fields) > 0 {
			keys := slices.Clone(fields)
			rt.NewKeyFunc = func() func([]byte) (string, error) {
				return a.NewKeyExtractor(keys).Key
			}
			if a.Spec.Format == "json" {
				// The writer reads these itself, without a full parse.
				rt.JSONFields = keys
			}
		}
		r.Routes[cat] = rt
	}
	return r, nil
}

// BucketsOf is the bucket count of a category.
func (r *Resolved) BucketsOf(category string) int {
	return bucketsOf(r.categories, r.defBuckets, category)
}

// CheckBuckets refuses a bucket count lowered below what a consumed
// category already has in the dfs: Puma reads, serving answers and
// retention holds only the buckets below the count, so the lines of the
// higher ones (their unread segments and their shards' committed cells)
// would silently leave every answer, and retention would delete them
// unread. A category's bucket count can only grow.
func (r *Resolved) CheckBuckets(fsys dfs.FS) error {
	for _, cat := range r.Categories() {
		have, err := layout.Buckets(fsys, layout.CategoryDir(cat))
		if err != nil {
			return err
		}
		if n := r.BucketsOf(cat); len(have) > 0 && have[len(have)-1] >= n {
			return fmt.Errorf("category %q has bucket %d in the dfs but is configured with %d buckets: "+
				"the lines of its buckets from %d on would be neither read nor answered (a bucket count can only grow; "+
				"set buckets, or categories.<name>.buckets, to at least %d)", cat, have[len(have)-1], n, n, have[len(have)-1]+1)
		}
	}
	return nil
}

// Categories are the categories some app consumes.
func (r *Resolved) Categories() []string {
	out := make([]string, 0, len(r.Consumers))
	for c := range r.Consumers {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

// moduleNeeds are the modules each module needs built first when the
// target runs them too: the agent of `all` ships to the process's writer
// (it needs its address), serving reports the others' status. Start order
// comes from these (startOrder), not from the order a target lists its
// modules in; stop order is its reverse, so the agent drains into the
// writer before the writer stops.
var moduleNeeds = map[string][]string{
	Calligraphus: nil,
	Agent:        {Calligraphus},
	Puma:         nil,
	Copier:       nil,
	Retention:    nil,
	Serving:      {Agent, Calligraphus, Puma, Copier, Retention},
}

// startOrder orders mods so that each comes after the modules it needs
// (those of mods), keeping mods' own order where the graph leaves it
// free. A cycle or an unknown module is an error.
func startOrder(mods []string, needs map[string][]string) ([]string, error) {
	in := map[string]bool{}
	for _, m := range mods {
		if _, ok := needs[m]; !ok {
			return nil, fmt.Errorf("unknown module %q", m)
		}
		in[m] = true
	}
	var order []string
	state := map[string]int{} // 1: being visited, 2: done
	var visit func(m string, path []string) error
	visit = func(m string, path []string) error {
		switch state[m] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(path, m), " -> "))
		}
		state[m] = 1
		for _, d := range needs[m] {
			if in[d] {
				if err := visit(d, append(path, m)); err != nil {
					return err
				}
			}
		}
		state[m] = 2
		order = append(order, m)
		return nil
	}
	for _, m := range mods {
		if err := visit(m, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
