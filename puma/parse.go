package puma

import "github.com/freeway-dev/freeway/internal/apps"

// lineParse parses each line once for the apps of a shard's category
// that read lines alike (apps.ParseGroups: every JSON app, say), instead
// of once per app; an app alone in its group keeps its own parse. A JSON
// line is read by a scan of the fields the apps use (internal/jsonscan),
// which builds no object: the record keeps the scan's fields where they
// lie in the line, valid while the line is applied; each table's
// extraction (ExtractRecord) and its cells' update (layout.add) read them
// there, and what a table keeps (a new cell's key, a text a state holds)
// is copied. Used under the shard's lock.
type lineParse struct {
	tables []*table
	group  []int                // table index → its group, -1: its own parse
	shared []*apps.SharedParser // by group
	recs   []*apps.Record       // by group, for the current line
	errs   []error              // by group
	done   []bool               // by group: parsed for the current line
}

func newLineParse(tables []*table) *lineParse {
	list := make([]*apps.App, len(tables))
	for i, t := range tables {
		list[i] = t.app
	}
	lp := &lineParse{tables: tables, group: make([]int, len(tables))}
	for i := range lp.group {
		lp.group[i] = -1
	}
	for _, g := range apps.ParseGroups(list) {
		if len(g) < 2 {
			continue
		}
		members := make([]*apps.App, len(g))
		for j, i := range g {
			members[j] = list[i]
			lp.group[i] = len(lp.shared)
		}
		lp.shared = append(lp.shared, apps.NewSharedParser(members))
	}
	lp.recs = make([]*apps.Record, len(lp.shared))
	lp.errs = make([]error, len(lp.shared))
	lp.done = make([]bool, len(lp.shared))
	return lp
}

// applyLine feeds a line to every table of the shard, in their order.
func (s *shard) applyLine(line []byte, bt blockTime) {
	lp := s.parse
	clear(lp.done)
	for i, t := range lp.tables {
		g := lp.group[i]
		if g < 0 || t.pending == len(t.spans) {
			t.apply(line, bt)
			continue
		}
		if !lp.done[g] {
			lp.recs[g], lp.errs[g] = lp.shared[g].Parse(line)
			lp.done[g] = true
		}
		if err := lp.errs[g]; err != nil {
			t.applyExtracted(line, bt, nil, err)
			continue
		}
		ex, err := t.extractor.ExtractRecord(lp.recs[g], bt.arrivalMs)
		t.applyExtracted(line, bt, ex, err)
	}
}
