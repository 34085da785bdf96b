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
// in Puts of one cell and in one Put of them all (the keys cut from
// shared buffers), the file holds exactly the newest Versions versions of
// each column, whatever the order they came in, and nothing else.
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
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("t")).ForEach(func(k, v []byte) error {
			pk, err := parseKey(k)
			if err != nil {
				return err
			}
			if want := fmt.Sprintf("%s/%d", pk.row[2:], pk.ts); string(v) != want {
				return fmt.Errorf("%q@%d holds %q, want %q", pk.row, pk.ts, v, want)
			}
			got[pk.row] = append(got[pk.row], pk.ts)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
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
