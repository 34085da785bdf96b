package boltstore

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/freeway-dev/freeway/internal/store"
)

// pageCells are n cells of one table, in row order, at timestamp ts.
func pageCells(n int, ts int64) []store.Cell {
	cells := make([]store.Cell, n)
	for i := range cells {
		cells[i] = store.Cell{Row: fmt.Sprintf("s/t/0/w/r%06d", i), Column: "v", Timestamp: ts, Value: fmt.Appendf(nil, "%d-%d", i, ts)}
	}
	return cells
}

// checkCells reads every row back as of asOf and wants exactly want.
func checkCells(t *testing.T, s *Store, asOf int64, want []store.Cell) {
	t.Helper()
	i := 0
	err := s.Scan(context.Background(), "t", "", "", asOf, func(row string, cells []store.Cell) error {
		for _, c := range cells {
			if i >= len(want) {
				return fmt.Errorf("more cells than the %d put: %+v", len(want), c)
			}
			if w := want[i]; c.Row != w.Row || c.Column != w.Column || c.Timestamp != w.Timestamp || string(c.Value) != string(w.Value) {
				return fmt.Errorf("cell %d: %+v, want %+v", i, c, w)
			}
			i++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if i != len(want) {
		t.Fatalf("read %d cells back, want %d", i, len(want))
	}
}

// TestNewFilePageSize: a file Open creates has pages of pageSize, and
// keeps them when opened again.
func TestNewFilePageSize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	for range 2 {
		s, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, db := range s.parts {
			if got := db.Info().PageSize; got != pageSize {
				t.Fatalf("%s: page size %d, want %d", db.Path(), got, pageSize)
			}
		}
		if err := s.Put(context.Background(), "t", pageCells(5000, 1)); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOtherPageSizeKept: a file made with 4 KiB pages (bbolt's default,
// every file of this package before ckpt4) keeps them: Open (its check,
// then the writer) reads the page size from the file, and the cells put
// in it before and after read back exactly, through a reopen.
func TestOtherPageSizeKept(t *testing.T) {
	const old = 4096
	if old == pageSize {
		t.Skip("pageSize is bbolt's default")
	}
	path := filepath.Join(t.TempDir(), "store.db")
	db, err := bolt.Open(path, 0o644, &bolt.Options{PageSize: old})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := tableToWrite(tx, "t")
		if err != nil {
			return err
		}
		return putCells(b, pageCells(5000, 1))
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	want := pageCells(5000, 1)
	for round := range 2 {
		s, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.parts[0].Info().PageSize; got != old {
			t.Fatalf("round %d: page size %d, want the file's %d", round, got, old)
		}
		checkCells(t, s, int64(round+1), want)
		// A new version of every other cell and new rows after them.
		var put []store.Cell
		for i, c := range pageCells(5000, int64(round+2)) {
			if i%2 == 0 {
				put = append(put, c)
				want[i] = c
			}
		}
		more := pageCells(5000+1000*(round+1), int64(round+2))[5000+1000*round:]
		put = append(put, more...)
		want = append(want, more...)
		if err := s.Put(context.Background(), "t", put); err != nil {
			t.Fatal(err)
		}
		checkCells(t, s, int64(round+2), want)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
