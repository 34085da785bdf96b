package boltstore

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/freeway-dev/freeway/internal/store"
)

func fillCells(ts int64, rows ...string) []store.Cell {
	cells := make([]store.Cell, len(rows))
	for i, r := range rows {
		cells[i] = store.Cell{Row: r, Column: "v", Timestamp: ts, Value: []byte("value")}
	}
	return cells
}

// TestPutFillsRunsFully: a Put of new keys in ascending order with no
// stored key among them fills its leaves fully; any other Put leaves
// bbolt's default fill, room for the next versions.
func TestPutFillsRunsFully(t *testing.T) {
	stored := []string{"b", "d", "f"}
	for _, tc := range []struct {
		name string
		rows []string
		run  bool
	}{
		{"into an empty table", nil, true},
		{"after the last key", []string{"g", "h", "i"}, true},
		{"one key after the last", []string{"z"}, true},
		{"into the gap between two keys", []string{"d\x01", "da", "e", "ez"}, true},
		{"before the first key", []string{"a", "a1"}, true},
		{"a stored key among them", []string{"c", "e"}, false},
		{"a stored key first", []string{"d", "e"}, false},
		{"a stored key last", []string{"e", "f"}, false},
		{"descending", []string{"i", "h"}, false},
		{"repeated", []string{"h", "h"}, false},
		{"new versions of stored keys", stored, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows := tc.rows
			if rows == nil {
				rows = []string{"a", "b", "c"}
			}
			db, err := bolt.Open(filepath.Join(t.TempDir(), "f.db"), 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			err = db.Update(func(tx *bolt.Tx) error {
				b, err := tableToWrite(tx, "t")
				if err != nil {
					return err
				}
				if tc.rows != nil {
					return putCells(b, fillCells(1, stored...))
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			var fill float64
			err = db.Update(func(tx *bolt.Tx) error {
				b, err := tableToWrite(tx, "t")
				if err != nil {
					return err
				}
				err = putCells(b, fillCells(2, rows...))
				fill = b.FillPercent
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			want := putFill
			if tc.run {
				want = fillRun
			}
			if fill != want {
				t.Errorf("Put of %q over %q: fill %v, want %v", rows, stored, fill, want)
			}
		})
	}
}

// TestRunLeavesFull: a run of new keys put in Puts of a checkpoint's
// shape leaves its leaves about full (half of the pages written), and
// the next version of every cell splits them back to bbolt's default;
// what is read back is what was put either way.
func TestRunLeavesFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n, chunk = 20000, 4096
	rows := make([]string, n)
	for i := range rows {
		rows[i] = fmt.Sprintf("s/orders/0/orders@1a2b3c4d/8000018c2a3e0000/k%06d", i)
	}
	ctx := context.Background()
	fill := func() float64 {
		var inuse, size int
		for _, db := range s.parts {
			if err := db.View(func(tx *bolt.Tx) error {
				st := tableToRead(tx, "t").Stats()
				inuse += st.LeafInuse
				size += st.LeafPageN * db.Info().PageSize
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		return float64(inuse) / float64(size)
	}
	for ts := int64(1); ts <= 2; ts++ {
		for i := 0; i < n; i += chunk {
			if err := s.Put(ctx, "t", fillCells(ts, rows[i:min(i+chunk, n)]...)); err != nil {
				t.Fatal(err)
			}
		}
		f := fill()
		t.Logf("after version %d: leaves %.0f%% full", ts, 100*f)
		switch {
		case ts == 1 && f < 0.9:
			t.Errorf("a run's leaves are %.0f%% full, want at least 90%%", 100*f)
		case ts == 2 && f > 0.8:
			t.Errorf("after a new version of every cell the leaves are %.0f%% full: no room left for the next", 100*f)
		}
		got := scanLines(t, s, "t", ts)
		if len(got) != n {
			t.Fatalf("scan as of %d: %d rows, want %d", ts, len(got), n)
		}
	}
}
