package boltstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/store"
)

// model is what a store holds, kept the plain way: per table, row and
// column, the newest Versions versions, newest first.
type model map[string]map[string]map[string][]store.Cell

func (m model) put(table string, cells []store.Cell) {
	for _, c := range cells {
		if m[table] == nil {
			m[table] = map[string]map[string][]store.Cell{}
		}
		if m[table][c.Row] == nil {
			m[table][c.Row] = map[string][]store.Cell{}
		}
		vs := slices.DeleteFunc(m[table][c.Row][c.Column], func(v store.Cell) bool { return v.Timestamp == c.Timestamp })
		vs = append(vs, store.Cell{Row: c.Row, Column: c.Column, Timestamp: c.Timestamp, Value: slices.Clone(c.Value)})
		slices.SortFunc(vs, func(a, b store.Cell) int { return int(b.Timestamp - a.Timestamp) })
		m[table][c.Row][c.Column] = vs[:min(len(vs), Versions)]
	}
}

func (m model) deleteWhere(table, start, stop string, drop func(int64) bool) {
	for row, cols := range m[table] {
		if row < start || stop != "" && row >= stop {
			continue
		}
		for col, vs := range cols {
			cols[col] = slices.DeleteFunc(vs, func(v store.Cell) bool { return drop(v.Timestamp) })
		}
	}
}

// scan is what Scan should give: "row/column@ts=value" lines.
func (m model) scan(table string, asOf int64) []string {
	return m.scanRange(table, "", "", asOf)
}

// scanRange is what Scan of the rows in [start, stop) should give.
func (m model) scanRange(table, start, stop string, asOf int64) []string {
	var out []string
	for row, cols := range m[table] {
		if row < start || stop != "" && row >= stop {
			continue
		}
		for col, vs := range cols {
			for _, v := range vs {
				if v.Timestamp <= asOf {
					out = append(out, fmt.Sprintf("%q/%q@%d=%q", row, col, v.Timestamp, v.Value))
					break
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

func scanLines(t testing.TB, s store.Store, table string, asOf int64) []string {
	t.Helper()
	return scanRangeLines(t, s, table, "", "", asOf)
}

func scanRangeLines(t testing.TB, s store.Store, table, start, stop string, asOf int64) []string {
	t.Helper()
	var out []string
	var prev *string
	err := s.Scan(context.Background(), table, start, stop, asOf, func(row string, cells []store.Cell) error {
		if prev != nil && row <= *prev {
			return fmt.Errorf("scan gave row %q after %q: not in key order", row, *prev)
		}
		prev = &row
		for _, c := range cells {
			out = append(out, fmt.Sprintf("%q/%q@%d=%q", row, c.Column, c.Timestamp, c.Value))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// runModel applies the operations that ops draws (a number below n per
// call) to a store and to the model, and after each compares what they
// hold at every timestamp. Puts come in ascending key order, in random
// order, and with a key twice, so that the cursor walk of putCells and
// its seeks are both held to the model.
func runModel(t testing.TB, parts int, ops func(n int) int, count int) {
	ctx := context.Background()
	s, err := OpenWith(filepath.Join(t.TempDir(), "store.db"), Options{parts: parts})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := model{}
	rows := []string{"a", "a\x00", "a\x00b", "ab", "b", "b\xff", "s/0/w/k1", "s/0/w/k2", "s/0/w/k10", "s/1"}
	cols := []string{"v", "w", "v\x00", "commit"}
	const tables = "tu"
	for range count {
		table := string(tables[ops(len(tables))])
		switch op := ops(10); {
		case op < 6:
			var cells []store.Cell
			for range 1 + ops(12) {
				ts := int64(ops(8))
				cells = append(cells, store.Cell{Row: rows[ops(len(rows))], Column: cols[ops(len(cols))], Timestamp: ts, Value: fmt.Appendf(nil, "%d.%d", ts, ops(100))})
			}
			switch op {
			case 0, 1, 2:
				slices.SortStableFunc(cells, func(a, b store.Cell) int {
					return strings.Compare(a.Row+"\x00"+a.Column, b.Row+"\x00"+b.Column)
				})
			case 3:
				cells = append(cells, cells[len(cells)-1]) // a key twice in a row
			}
			if err := s.Put(ctx, table, cells); err != nil {
				t.Fatal(err)
			}
			m.put(table, cells)
		case op < 8:
			start, stop := rows[ops(len(rows))], ""
			if ops(2) == 0 {
				stop = rows[ops(len(rows))]
			}
			ts := int64(ops(8))
			if op == 6 {
				err = s.DeleteNewer(ctx, table, start, stop, ts)
				m.deleteWhere(table, start, stop, func(v int64) bool { return v > ts })
			} else {
				err = s.DeleteUpTo(ctx, table, start, stop, ts)
				m.deleteWhere(table, start, stop, func(v int64) bool { return v <= ts })
			}
			if err != nil {
				t.Fatal(err)
			}
		default:
			row, col := rows[ops(len(rows))], cols[ops(len(cols))]
			var expected []byte
			var exists bool
			if vs := m[table][row][col]; len(vs) > 0 {
				expected, exists = vs[0].Value, true
			}
			if ops(3) == 0 {
				expected = []byte("no such value")
			}
			c := store.Cell{Row: row, Column: cols[ops(len(cols))], Timestamp: int64(ops(8)), Value: []byte("cap")}
			ok, err := s.CheckAndPut(ctx, table, row, col, expected, []store.Cell{c})
			if err != nil {
				t.Fatal(err)
			}
			want := string(expected) != "no such value" || !exists && expected == nil
			if ok != want {
				t.Fatalf("check-and-put %q/%q expecting %q: %v, want %v", row, col, expected, ok, want)
			}
			if ok {
				m.put(table, []store.Cell{c})
			}
		}
		for _, table := range []string{"t", "u"} {
			for asOf := int64(0); asOf <= 8; asOf++ {
				if got, want := scanLines(t, s, table, asOf), m.scan(table, asOf); !slices.Equal(got, want) {
					t.Fatalf("table %s as of %d:\n got %q\nwant %q", table, asOf, got, want)
				}
			}
			// Get of every row, and a Scan of a range (as Puma reads a
			// commit row, and a shard's or a window's rows).
			asOf := int64(ops(9))
			for _, row := range rows {
				cells, err := s.Get(ctx, table, row, asOf)
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, c := range cells {
					got = append(got, fmt.Sprintf("%q/%q@%d=%q", row, c.Column, c.Timestamp, c.Value))
				}
				if want := m.scanRange(table, row, row+"\x00", asOf); !slices.Equal(got, want) {
					t.Fatalf("get %s %q as of %d:\n got %q\nwant %q", table, row, asOf, got, want)
				}
			}
			start, stop := rows[ops(len(rows))], rows[ops(len(rows))]
			if got, want := scanRangeLines(t, s, table, start, stop, asOf), m.scanRange(table, start, stop, asOf); !slices.Equal(got, want) {
				t.Fatalf("scan %s [%q, %q) as of %d:\n got %q\nwant %q", table, start, stop, asOf, got, want)
			}
		}
	}
}

// TestStoreAgainstModel: random puts, deletes and check-and-puts give the
// store the contents of the plain model, at every timestamp.
// With tiny blocks (smallBlocks) the Puts of up to 13 cells are encoded
// ahead on a goroutine, in blocks whose edges fall between a key and its
// repeat.
func TestStoreAgainstModel(t *testing.T) {
	for _, parts := range []int{1, 3} {
		for _, small := range []bool{false, true} {
			for seed := range uint64(4) {
				t.Run(fmt.Sprint("parts=", parts, "/", seed, "/small=", small), func(t *testing.T) {
					if small {
						smallBlocks(t, 2, 3)
					}
					rng := rand.New(rand.NewPCG(seed, 7))
					runModel(t, parts, rng.IntN, 150)
				})
			}
		}
	}
}

// smallBlocks sets putCells' blocks of encoded cells to block cells, and
// encodes on a goroutine Puts of ahead cells or more, for the test.
func smallBlocks(t *testing.T, block, ahead int) {
	b, a := encodeBlock, aheadMin
	encodeBlock, aheadMin = block, ahead
	t.Cleanup(func() { encodeBlock, aheadMin = b, a })
}

// FuzzStoreAgainstModel is TestStoreAgainstModel with the operations
// drawn from the fuzzer's bytes.
func FuzzStoreAgainstModel(f *testing.F) {
	f.Add([]byte{0, 0, 5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 3, 3, 1, 2, 3, 4, 5, 6, 7, 8, 1, 6, 2, 1, 3, 0, 9, 1, 1, 2})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 400 {
			return
		}
		i := 0
		ops := func(n int) int {
			if i >= len(data) {
				return 0
			}
			i++
			return int(data[i-1]) % n
		}
		runModel(t, 1+ops(3), ops, len(data)/8+1)
	})
}

// TestPutWalkAcrossLeaves: Puts of thousands of cells over many leaves,
// in key order, new keys between stored ones (inserted into leaves the
// walking cursor is on), keys twice, and then in random order, give the
// contents of the model; with putCells' blocks of encoded cells as they
// are, and small (many blocks a Put, encoded ahead).
func TestPutWalkAcrossLeaves(t *testing.T) {
	for _, parts := range []int{1, 3} {
		t.Run(fmt.Sprint("parts=", parts, "/blocks"), func(t *testing.T) { putWalkAcrossLeaves(t, parts) })
		t.Run(fmt.Sprint("parts=", parts, "/small"), func(t *testing.T) {
			smallBlocks(t, 7, 100)
			putWalkAcrossLeaves(t, parts)
		})
	}
}

func putWalkAcrossLeaves(t *testing.T, parts int) {
	ctx := context.Background()
	s, err := OpenWith(filepath.Join(t.TempDir(), "store.db"), Options{parts: parts})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m := model{}
	const n = 12_000
	cellAt := func(i int, ts int64) store.Cell {
		return store.Cell{Row: fmt.Sprintf("s/orders/0/w/%06d", i), Column: "v", Timestamp: ts, Value: fmt.Appendf(nil, "%d@%d", i, ts)}
	}
	put := func(cells []store.Cell) {
		t.Helper()
		if err := s.Put(ctx, "t", cells); err != nil {
			t.Fatal(err)
		}
		m.put("t", cells)
	}
	var cells []store.Cell
	for i := 0; i < n; i += 2 {
		cells = append(cells, cellAt(i, 1))
	}
	put(cells)
	for ts := int64(2); ts <= 5; ts++ {
		cells = cells[:0]
		for i := range n {
			if i%3 != int(ts%3) {
				cells = append(cells, cellAt(i, ts))
				if i%7 == 0 {
					cells = append(cells, cellAt(i, ts+10))
				}
			}
		}
		put(cells)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	rng.Shuffle(len(cells), func(i, j int) { cells[i], cells[j] = cells[j], cells[i] })
	for i := range cells {
		cells[i].Timestamp = 6
	}
	put(cells)
	for _, asOf := range []int64{1, 3, 5, 6, 20} {
		if got, want := scanLines(t, s, "t", asOf), m.scan("t", asOf); !slices.Equal(got, want) {
			t.Fatalf("as of %d: %d lines, want %d", asOf, len(got), len(want))
		}
	}
}
