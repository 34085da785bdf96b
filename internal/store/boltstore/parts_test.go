package boltstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/storetest"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// TestConformanceParts: a store of three parts is a store.Store.
func TestConformanceParts(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (store.Store, string) {
		s, err := OpenWith(filepath.Join(t.TempDir(), "store.db"), Options{parts: 3})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s, "t"
	})
}

// openPartsFor opens path as a store of parts parts (if it makes one),
// logging to log.
func openPartsFor(t *testing.T, path string, parts int, log *testkit.LogBuffer) *Store {
	t.Helper()
	opts := Options{parts: parts}
	if log != nil {
		opts.Log = slog.New(slog.NewTextHandler(log, nil))
	}
	s, err := OpenWith(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// rowsOf lists the rows of table t in db.
func rowsOf(t *testing.T, db *bolt.DB) []string {
	t.Helper()
	var rows []string
	if err := db.View(func(tx *bolt.Tx) error {
		b := tableToRead(tx, "t")
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, _ []byte) error {
			row, _, err := parseCellKey(k)
			rows = append(rows, row)
			return err
		})
	}); err != nil {
		t.Fatal(err)
	}
	return rows
}

func partCells(n int) []store.Cell {
	cells := make([]store.Cell, n)
	for i := range cells {
		row := fmt.Sprintf("s/c/0/a@f/8000018c2a3e0000/k%05d", i)
		cells[i] = store.Cell{Row: row, Column: "v", Timestamp: 1, Value: []byte(row)}
	}
	return cells
}

// TestPartsHoldTheirRows: each row is in the part partIndex gives it,
// every part holds some, and a store keeps the parts it was made with
// whatever a later open asks for.
func TestPartsHoldTheirRows(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openPartsFor(t, path, 3, nil)
	ctx := context.Background()
	cells := partCells(300)
	if err := s.Put(ctx, "t", cells); err != nil {
		t.Fatal(err)
	}
	for k, db := range s.parts {
		rows := rowsOf(t, db)
		if len(rows) == 0 || len(rows) == len(cells) {
			t.Fatalf("part %d holds %d of %d rows", k, len(rows), len(cells))
		}
		for _, row := range rows {
			if partIndex(row, 3) != k {
				t.Fatalf("row %q in part %d, its part is %d", row, k, partIndex(row, 3))
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openPartsFor(t, path, 1, nil)
	defer s.Close()
	if len(s.parts) != 3 {
		t.Fatalf("reopened with %d parts, made with 3", len(s.parts))
	}
	if got := scanLines(t, s, "t", store.Latest); len(got) != len(cells) {
		t.Fatalf("%d cells read back, want %d", len(got), len(cells))
	}
}

// TestPutWritesThePartsAtOnce: a Put's transactions run at once, one a
// part: with the first part's writer held, the second part's cells
// are written (and readable) before the Put returns.
func TestPutWritesThePartsAtOnce(t *testing.T) {
	s := openPartsFor(t, filepath.Join(t.TempDir(), "store.db"), 2, nil)
	defer s.Close()
	held, err := s.parts[0].Begin(true)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Put(context.Background(), "t", partCells(100)) }()
	deadline := time.Now().Add(30 * time.Second)
	for len(rowsOf(t, s.parts[1])) == 0 {
		if time.Now().After(deadline) {
			_ = held.Rollback()
			t.Fatalf("the second part was not written while the first part's writer was held (the Put then: %v)", <-done)
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("the Put returned (%v) before its first part was written", err)
	default:
	}
	if err := held.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := scanLines(t, s, "t", store.Latest); len(got) != 100 {
		t.Fatalf("%d cells read back, want 100", len(got))
	}
}

// partsFilled makes a store of two parts at path, holding cells, and
// closes it.
func partsFilled(t *testing.T, path string) {
	t.Helper()
	s := openPartsFor(t, path, 2, nil)
	if err := s.Put(context.Background(), "t", partCells(3000)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// wantAllAside checks that opening the store at path found it damaged
// for reason, moved every one of its files aside, and made a fresh
// store of two parts that works.
func wantAllAside(t *testing.T, path, reason string, files int) {
	t.Helper()
	var log testkit.LogBuffer
	s := openPartsFor(t, path, 2, &log)
	defer s.Close()
	moved, _ := filepath.Glob(path + "*.damaged-*")
	if len(moved) != files {
		t.Fatalf("moved aside: %v, want %d files", moved, files)
	}
	if strings.Count(log.String(), "level=ERROR") != 1 || !strings.Contains(log.String(), "store file is damaged; moved it aside") ||
		!strings.Contains(log.String(), reason) {
		t.Fatalf("log:\n%s\nwant one error line with %q", log.String(), reason)
	}
	if n := damageCount(t, s, "open"); n != 1 {
		t.Fatalf("damage at open counted %v times", n)
	}
	if len(s.parts) != 2 {
		t.Fatalf("the fresh store has %d parts, want 2", len(s.parts))
	}
	if got := scanLines(t, s, "t", store.Latest); len(got) != 0 {
		t.Fatalf("the fresh store holds %d cells", len(got))
	}
	if err := s.Put(context.Background(), "t", partCells(10)); err != nil {
		t.Fatal(err)
	}
}

// TestMissingPartIsDamage: a store whose part is gone is damaged as a
// whole: a store missing rows would recover checkpoints without them.
func TestMissingPartIsDamage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	partsFilled(t, path)
	if err := os.Remove(partPath(path, 1)); err != nil {
		t.Fatal(err)
	}
	wantAllAside(t, path, "is missing", 1)
}

// TestPartOfAnotherStoreIsDamage: a part file of another store in its
// place is found.
func TestPartOfAnotherStoreIsDamage(t *testing.T) {
	dir := t.TempDir()
	path, other := filepath.Join(dir, "store.db"), filepath.Join(dir, "other.db")
	partsFilled(t, path)
	partsFilled(t, other)
	if err := os.Rename(partPath(other, 1), partPath(path, 1)); err != nil {
		t.Fatal(err)
	}
	wantAllAside(t, path, "is not part 1 of 2 of this store", 2)
}

// TestDamagedPartMovesTheStoreAside: a part cut short moves every file
// of the store aside, the first one too.
func TestDamagedPartMovesTheStoreAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	partsFilled(t, path)
	p := partPath(path, 1)
	_, _, used := pages(t, p)
	if err := os.Truncate(p, used/2); err != nil {
		t.Fatal(err)
	}
	wantAllAside(t, path, "part "+p+": the file is", 2)
}

// TestFileBeforePartsKeepsOnePart: a file with tables and no parts
// record (every file before parts) stays a store of one file.
func TestFileBeforePartsKeepsOnePart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openPartsFor(t, path, 1, nil)
	if err := s.Put(context.Background(), "t", partCells(50)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openPartsFor(t, path, 3, nil)
	defer s.Close()
	if len(s.parts) != 1 {
		t.Fatalf("%d parts, want 1", len(s.parts))
	}
	if _, err := os.Stat(partPath(path, 1)); !os.IsNotExist(err) {
		t.Fatalf("a part file was made: %v", err)
	}
	if got := topLevel(t, s.parts[0]); len(got) != 1 || got[0] != tablesBucket {
		t.Fatalf("top level %q: want the tables alone (a file older binaries read)", got)
	}
	if got := scanLines(t, s, "t", store.Latest); len(got) != 50 {
		t.Fatalf("%d cells read back, want 50", len(got))
	}
}

// TestStoreMadeAgainAfterACrashWhileMade: a first file without a table
// or a record (a crash before its record, the last step of making a
// store) is made again; a part file found there then is of no store and
// is moved aside.
func TestStoreMadeAgainAfterACrashWhileMade(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "store.db")
	partsFilled(t, filepath.Join(dir, "other.db"))
	if err := os.Rename(partPath(filepath.Join(dir, "other.db"), 1), partPath(path, 1)); err != nil {
		t.Fatal(err)
	}
	s := openPartsFor(t, path, 1, nil) // the first file, empty, no record
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	var log testkit.LogBuffer
	s = openPartsFor(t, path, 2, &log)
	defer s.Close()
	if len(s.parts) != 2 {
		t.Fatalf("%d parts, want 2", len(s.parts))
	}
	if moved, _ := filepath.Glob(partPath(path, 1) + ".damaged-*"); len(moved) != 1 || !strings.Contains(log.String(), "part file without the store's first file") {
		t.Fatalf("the stale part file moved to %v; log:\n%s", moved, log.String())
	}
	if got := scanLines(t, s, "t", store.Latest); len(got) != 0 {
		t.Fatalf("the new store holds %d cells of the stale part", len(got))
	}
}

// TestPartIndexSpreadsAndStays: rows of a checkpoint's shape (one
// shard, one window, keys in order) spread evenly over the parts, and a
// row's part is what it was when stores were made with it: the hash is
// part of the format (a change would put rows where no read looks).
func TestPartIndexSpreadsAndStays(t *testing.T) {
	for _, n := range []int{2, 3, 4} {
		counts := make([]int, n)
		const rows = 30000
		for i := range rows {
			counts[partIndex(fmt.Sprintf("s/orders/0003/orders@1a2b3c4d/8000018c2a3e0000/k%06d", i), n)]++
		}
		for k, c := range counts {
			if c < rows/n*9/10 || c > rows/n*11/10 {
				t.Errorf("%d parts: part %d holds %d of %d rows", n, k, c, rows)
			}
		}
	}
	for row, want := range map[string][3]int{
		"c/orders/3": {0, 1, 0},
		"s/orders/0003/orders@1a2b3c4d/8000018c2a3e0000/k000001": {0, 0, 2},
		"p/web%2Faccess/12": {0, 2, 2},
		"a":                 {1, 2, 1},
	} {
		got := [3]int{partIndex(row, 2), partIndex(row, 3), partIndex(row, 4)}
		if got != want {
			t.Errorf("row %q: parts %v of 2, 3, 4; want %v", row, got, want)
		}
	}
}

// TestScanStopsWhenCancelled: a caller that has what it needs cancels
// the Scan's context (Puma's bounded partials do), and gets no row
// after, though every part has read rows ahead.
func TestScanStopsWhenCancelled(t *testing.T) {
	for _, parts := range []int{1, 3} {
		s := openPartsFor(t, filepath.Join(t.TempDir(), "store.db"), parts, nil)
		if err := s.Put(context.Background(), "t", partCells(3000)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		n := 0
		err := s.Scan(ctx, "t", "", "", store.Latest, func(string, []store.Cell) error {
			if n++; n == 5 {
				cancel()
			}
			return nil
		})
		if n != 5 || !errors.Is(err, context.Canceled) {
			t.Fatalf("%d parts: %d rows given, the last 5th at the cancel; Scan: %v", parts, n, err)
		}
		cancel()
		s.Close()
	}
}
