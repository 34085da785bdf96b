package boltstore

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/freeway-dev/freeway/internal/store"
)

// TestPutPrunesToVersions: after puts of many versions of many columns,
// in Puts of one cell and in one Put of them all (the keys and values cut
// from shared buffers), the file holds exactly the newest Versions
// versions of each column, newest first, whatever the order they came
// in, and nothing else.
func TestPutPrunesToVersions(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const rows, versions = 300, 8
	var batch []store.Cell
	for ts := range int64(versions) {
		for r := range rows {
			c := store.Cell{Row: fmt.Sprintf("r\x00%03d", r), Column: "v", Timestamp: (ts*7 + int64(r)) % versions, Value: fmt.Appendf(nil, "%03d/%d", r, (ts*7+int64(r))%versions)}
			if r%2 == 0 {
				if err := s.Put(ctx, "t", []store.Cell{c}); err != nil {
					t.Fatal(err)
				}
			} else {
				batch = append(batch, c)
			}
		}
	}
	if err := s.Put(ctx, "t", batch); err != nil {
		t.Fatal(err)
	}
	got := map[string][]int64{}
	for _, db := range s.parts {
		if err := db.View(func(tx *bolt.Tx) error {
			return pruned(tx, got)
		}); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != rows {
		t.Fatalf("%d rows stored, want %d", len(got), rows)
	}
	for row, ts := range got {
		slices.Sort(ts)
		if want := []int64{versions - 3, versions - 2, versions - 1}; Versions != 3 || !slices.Equal(ts, want) {
			t.Fatalf("row %q keeps versions %v, want %v", row, ts, want)
		}
	}
}

// pruned adds the versions of table t's rows in tx to got, checking
// their values and order.
func pruned(tx *bolt.Tx, got map[string][]int64) error {
	return tableToRead(tx, "t").ForEach(func(k, v []byte) error {
		row, column, err := parseCellKey(k)
		if err != nil {
			return err
		}
		if string(column) != "v" {
			return fmt.Errorf("row %q: column %q", row, column)
		}
		rest, err := versionsOf(v)
		for err == nil && len(rest) > 0 {
			var ts int64
			var val []byte
			if ts, val, rest, err = nextVersion(rest); err != nil {
				break
			}
			if want := fmt.Sprintf("%s/%d", row[2:], ts); string(val) != want {
				return fmt.Errorf("%q@%d holds %q, want %q", row, ts, val, want)
			}
			if n := len(got[row]); n > 0 && got[row][n-1] <= ts {
				return fmt.Errorf("%q: version %d after %d: not newest first", row, ts, got[row][n-1])
			}
			got[row] = append(got[row], ts)
		}
		return err
	})
}
