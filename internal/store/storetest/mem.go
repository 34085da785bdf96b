package storetest

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/freeway-dev/freeway/internal/store"
)

// Mem is an in-memory store.Store for tests that run a protocol over the
// store many times over (crash tests: Faulty). It keeps store.MinVersions
// versions of a column, as the embedded store does, and where the
// contract leaves room it behaves as HBase does: a delete leaves its
// markers behind, which hide a version put later at a timestamp they
// cover (DeleteNewer and DeleteBetween delete each version they find at
// its own timestamp, DeleteUpTo every timestamp up to its own), so that a
// caller that puts again where it deleted loses that version here as it
// would on HBase. It passes the conformance suite.
type Mem struct {
	mu     sync.Mutex
	tables map[string]map[string]*memRow // table → row
}

var _ store.Store = (*Mem)(nil)

type memRow struct {
	cols map[string][]store.Cell // column → versions, newest first
	// HBase's delete markers: the exact versions deleted, by column, and
	// the newest row-wide marker (versions up to it are deleted; -1:
	// none).
	deleted map[string]map[int64]bool
	upTo    int64
}

// NewMem returns an empty store.
func NewMem() *Mem { return &Mem{tables: map[string]map[string]*memRow{}} }

func (m *Mem) row(table, row string) *memRow {
	rows := m.tables[table]
	if rows == nil {
		rows = map[string]*memRow{}
		m.tables[table] = rows
	}
	r := rows[row]
	if r == nil {
		r = &memRow{cols: map[string][]store.Cell{}, deleted: map[string]map[int64]bool{}, upTo: -1}
		rows[row] = r
	}
	return r
}

func checkCells(cells []store.Cell) error {
	for _, c := range cells {
		switch {
		case c.Row == "":
			return fmt.Errorf("%w: empty row", store.ErrInvalid)
		case c.Column == "":
			return fmt.Errorf("%w: empty column", store.ErrInvalid)
		case c.Timestamp < 0:
			return fmt.Errorf("%w: negative timestamp %d", store.ErrInvalid, c.Timestamp)
		}
	}
	return nil
}

// put writes cells; m.mu is held.
func (m *Mem) put(table string, cells []store.Cell) {
	for _, c := range cells {
		r := m.row(table, c.Row)
		if c.Timestamp <= r.upTo || r.deleted[c.Column][c.Timestamp] {
			continue // hidden by a delete marker
		}
		vs := slices.DeleteFunc(r.cols[c.Column], func(v store.Cell) bool { return v.Timestamp == c.Timestamp })
		vs = append(vs, store.Cell{Row: c.Row, Column: c.Column, Timestamp: c.Timestamp, Value: append([]byte{}, c.Value...)})
		slices.SortFunc(vs, func(a, b store.Cell) int { return cmp.Compare(b.Timestamp, a.Timestamp) })
		r.cols[c.Column] = vs[:min(len(vs), store.MinVersions)]
	}
}

// get is Get on r; m.mu is held.
func (r *memRow) get(asOf int64) []store.Cell {
	var out []store.Cell
	for _, vs := range r.cols {
		for _, v := range vs {
			if v.Timestamp <= asOf {
				v.Value = bytes.Clone(v.Value)
				out = append(out, v)
				break
			}
		}
	}
	slices.SortFunc(out, func(a, b store.Cell) int { return strings.Compare(a.Column, b.Column) })
	return out
}

// Put implements store.Store.
func (m *Mem) Put(ctx context.Context, table string, cells []store.Cell) error {
	if err := checkCells(cells); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.put(table, cells)
	return nil
}

// Get implements store.Store.
func (m *Mem) Get(ctx context.Context, table, row string, asOf int64) ([]store.Cell, error) {
	if row == "" {
		return nil, fmt.Errorf("%w: empty row", store.ErrInvalid)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.tables[table][row]
	if r == nil {
		return nil, nil
	}
	return r.get(asOf), nil
}

// rowsIn lists the rows of table in [start, stop), sorted; m.mu is held.
func (m *Mem) rowsIn(table, start, stop string) []string {
	var keys []string
	for k := range m.tables[table] {
		if k >= start && (stop == "" || k < stop) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// Scan implements store.Store. fn is called without the store locked,
// so it may call the store.
func (m *Mem) Scan(ctx context.Context, table, start, stop string, asOf int64, fn func(row string, cells []store.Cell) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	type found struct {
		row   string
		cells []store.Cell
	}
	var rows []found
	m.mu.Lock()
	for _, k := range m.rowsIn(table, start, stop) {
		if cells := m.tables[table][k].get(asOf); len(cells) > 0 {
			rows = append(rows, found{k, cells})
		}
	}
	m.mu.Unlock()
	for _, r := range rows {
		if err := fn(r.row, r.cells); err != nil {
			return err
		}
	}
	return nil
}

// DeleteNewer implements store.Store.
func (m *Mem) DeleteNewer(ctx context.Context, table, start, stop string, ts int64) error {
	return m.DeleteBetween(ctx, table, start, stop, ts, store.Latest)
}

// DeleteBetween implements store.Store: each version found is deleted
// at its own timestamp, as the HBase store does.
func (m *Mem) DeleteBetween(ctx context.Context, table, start, stop string, after, upTo int64) error {
	return m.eachRow(ctx, table, start, stop, func(r *memRow) {
		for col, vs := range r.cols {
			r.cols[col] = slices.DeleteFunc(vs, func(v store.Cell) bool {
				if v.Timestamp <= after || v.Timestamp > upTo {
					return false
				}
				if r.deleted[col] == nil {
					r.deleted[col] = map[int64]bool{}
				}
				r.deleted[col][v.Timestamp] = true
				return true
			})
		}
	})
}

// DeleteUpTo implements store.Store: a row-wide marker at ts, as the
// HBase store does, in each row that has a version up to ts.
func (m *Mem) DeleteUpTo(ctx context.Context, table, start, stop string, ts int64) error {
	return m.eachRow(ctx, table, start, stop, func(r *memRow) {
		if len(r.get(ts)) == 0 {
			return
		}
		r.upTo = max(r.upTo, ts)
		for col, vs := range r.cols {
			r.cols[col] = slices.DeleteFunc(vs, func(v store.Cell) bool { return v.Timestamp <= ts })
		}
	})
}

// eachRow calls fn, with m locked, for each row of table in [start,
// stop).
func (m *Mem) eachRow(ctx context.Context, table, start, stop string, fn func(r *memRow)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, k := range m.rowsIn(table, start, stop) {
		fn(m.tables[table][k])
	}
	return nil
}

// CheckAndPut implements store.Store.
func (m *Mem) CheckAndPut(ctx context.Context, table, row, column string, expected []byte, cells []store.Cell) (bool, error) {
	if row == "" || column == "" {
		return false, fmt.Errorf("%w: empty row or column", store.ErrInvalid)
	}
	if err := checkCells(cells); err != nil {
		return false, err
	}
	for _, c := range cells {
		if c.Row != row {
			return false, fmt.Errorf("%w: CheckAndPut on row %q got a cell of row %q", store.ErrInvalid, row, c.Row)
		}
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var current []byte
	if r := m.tables[table][row]; r != nil {
		for _, c := range r.get(store.Latest) {
			if c.Column == column {
				current = c.Value
			}
		}
	}
	if (expected == nil) != (current == nil) || !bytes.Equal(expected, current) {
		return false, nil
	}
	m.put(table, cells)
	return true, nil
}

// Clone returns a copy of m, markers and all, that shares nothing with
// it: a state to start several runs of a test from.
func (m *Mem) Clone() *Mem {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := NewMem()
	for table, rows := range m.tables {
		c.tables[table] = map[string]*memRow{}
		for key, r := range rows {
			n := &memRow{cols: map[string][]store.Cell{}, deleted: map[string]map[int64]bool{}, upTo: r.upTo}
			for col, vs := range r.cols {
				n.cols[col] = cloneCells(vs)
			}
			for col, ts := range r.deleted {
				n.deleted[col] = maps.Clone(ts)
			}
			c.tables[table][key] = n
		}
	}
	return c
}

// String implements store.Store.
func (m *Mem) String() string { return "mem://storetest" }

// Close implements store.Store.
func (m *Mem) Close() error { return nil }
