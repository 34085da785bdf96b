package boltstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// TestOpensFileOfLayoutBefore: a file written by the store before the
// one-key-per-cell layout (testdata/layout1.db, written by the code of
// c82beac) opens, is migrated at once, and reads as it did: every
// version kept, escaped bytes in rows and columns, an emptied table.
func TestOpensFileOfLayoutBefore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	copyFile(t, "testdata/layout1.db", path)
	var log testkit.LogBuffer
	s, err := OpenWith(path, Options{Log: log.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "store file migrated") || !strings.Contains(log.String(), "tables=3") {
		t.Fatalf("log:\n%s", log.String())
	}
	check := func(s *Store) {
		t.Helper()
		ctx := context.Background()
		get := func(table, row string, asOf int64) string {
			t.Helper()
			cells, err := s.Get(ctx, table, row, asOf)
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, c := range cells {
				out = append(out, fmt.Sprintf("%q@%d=%q", c.Column, c.Timestamp, c.Value))
			}
			return strings.Join(out, " ")
		}
		for _, c := range []struct {
			table, row string
			asOf       int64
			want       string
		}{
			{"puma", "c/orders/0", store.Latest, `"attempt"@6="6" "commit"@5="commit 5"`},
			{"puma", "c/orders/0", 4, `"commit"@4="commit 4"`},
			{"puma", "c/orders/0", 3, `"commit"@3="commit 3"`},
			{"puma", "c/orders/0", 2, ``}, // versions 1 and 2 were pruned
			{"puma", "s/orders/0/a\x00b", store.Latest, `"v"@4="\x01\x00four" "w\x00x"@3="wx3"`},
			{"puma", "s/orders/0/a\x00b", 3, `"v"@2="\x01\x00two" "w\x00x"@3="wx3"`},
			{"puma", "s/orders/0/a", store.Latest, `"v"@7="a7"`},
			{"puma", "s/orders/1/k0299", store.Latest, `"v"@4="k0299@4"`},
			{"progress", "copier/x", store.Latest, `"pos"@9="nine"`},
			{"empty", "gone", store.Latest, ``},
		} {
			if got := get(c.table, c.row, c.asOf); got != c.want {
				t.Errorf("%s %q as of %d: %s, want %s", c.table, c.row, c.asOf, got, c.want)
			}
		}
		rows := 0
		if err := s.Scan(ctx, "puma", "s/orders/1/", "s/orders/10", store.Latest, func(string, []store.Cell) error { rows++; return nil }); err != nil || rows != 300 {
			t.Fatalf("scan: %d rows, %v", rows, err)
		}
		if got := topLevel(t, s.parts[0]); !slices.Equal(got, []string{tablesBucket}) {
			t.Fatalf("buckets at the top after the migration: %q", got)
		}
	}
	check(s)
	if err := s.Put(context.Background(), "empty", []store.Cell{{Row: "r", Column: "c", Timestamp: 2, Value: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	var log2 testkit.LogBuffer
	s, err = OpenWith(path, Options{Log: log2.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if strings.Contains(log2.String(), "migrat") {
		t.Fatalf("a migrated file was migrated again:\n%s", log2.String())
	}
	check(s)
}

// TestMigrationKilled: a process killed in the middle of a migration
// (SIGKILL, inside a transaction and between two) leaves a file that
// opens, goes on migrating, and ends with every version of every cell.
func TestMigrationKilled(t *testing.T) {
	if path := os.Getenv("FREEWAY_TEST_MIGRATE"); path != "" {
		// The process to kill: open path, and die at the named stage of
		// the named transaction of its migration.
		var stage string
		var at int
		if _, err := fmt.Sscanf(os.Getenv("FREEWAY_TEST_MIGRATE_KILL"), "%s %d", &stage, &at); err != nil {
			t.Fatal(err)
		}
		n := 0
		_, err := OpenWith(path, Options{migrateChunk: 1000, migrateHook: func(s string) {
			if s == stage {
				if n++; n == at {
					_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
					for {
						time.Sleep(time.Second) // not select{}: no deadlock report while the signal lands
					}
				}
			}
		}})
		t.Fatalf("the migration ended (%v) before its transaction %d", err, at)
	}
	path := filepath.Join(t.TempDir(), "store.db")
	m := model{}
	writeOld(t, path, m)
	killAt := func(stage string, at int) {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run", "^TestMigrationKilled$", "-test.count=1")
		cmd.Env = append(os.Environ(), "FREEWAY_TEST_MIGRATE="+path, fmt.Sprintf("FREEWAY_TEST_MIGRATE_KILL=%s %d", stage, at))
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("the migrating process was not killed: %v\n%s", err, out)
		}
	}
	killAt("committed", 3)
	moved := midway(t, path)
	killAt("moved", 4) // in its 4th transaction, before the commit
	if again := midway(t, path); again <= moved {
		t.Fatalf("the second run moved nothing: %d columns, %d before", again, moved)
	}
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := topLevel(t, s.parts[0]); !slices.Equal(got, []string{tablesBucket}) {
		t.Fatalf("buckets at the top after the migration: %q", got)
	}
	for _, table := range []string{"t", "u"} {
		for asOf := int64(0); asOf <= 6; asOf++ {
			if got, want := scanLines(t, s, table, asOf), m.scan(table, asOf); !slices.Equal(got, want) {
				t.Fatalf("table %s as of %d: %d cells, want %d", table, asOf, len(got), len(want))
			}
		}
	}
}

// midway checks that the file at path is part migrated: some columns in
// each layout, none in both. It returns the columns moved.
func midway(t *testing.T, path string) int {
	t.Helper()
	db, err := bolt.Open(path, 0o644, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	moved, left := 0, 0
	err = db.View(func(tx *bolt.Tx) error {
		tables := tx.Bucket([]byte(tablesBucket))
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if string(name) == tablesBucket {
				return b.ForEachBucket(func(n []byte) error {
					return b.Bucket(n).ForEach(func(k, _ []byte) error { moved++; return nil })
				})
			}
			return b.ForEach(func(k, _ []byte) error {
				left++
				pk, err := parseOldKey(k)
				if err != nil {
					return err
				}
				if nb := tables.Bucket(name); nb != nil && nb.Get(appendCellKey(nil, pk.row, pk.column)) != nil {
					return fmt.Errorf("%q/%q in both layouts", pk.row, pk.column)
				}
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if moved == 0 || left == 0 {
		t.Fatalf("not part migrated: %d columns moved, %d keys left", moved, left)
	}
	return moved
}

// writeOld writes a file of the layout before at path, with the cells it
// puts into m: two tables of 2,000 rows, two columns, up to Versions
// versions each (as that layout pruned them).
func writeOld(t *testing.T, path string, m model) {
	t.Helper()
	db, err := bolt.Open(path, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		for _, table := range []string{"t", "u"} {
			b, err := tx.CreateBucket([]byte(table))
			if err != nil {
				return err
			}
			for i := range 2000 {
				for j, col := range []string{"v", "w\x00"} {
					for ts := int64(1); ts <= int64(1+(i+j)%Versions); ts++ {
						c := store.Cell{Row: fmt.Sprintf("s/%s/%05d\x00x", table, i), Column: col, Timestamp: ts + int64(i%3), Value: fmt.Appendf(nil, "%d/%s@%d", i, col, ts)}
						key := appendEscaped(appendEscaped(nil, c.Row), c.Column)
						key = binary.BigEndian.AppendUint64(key, uint64(math.MaxInt64-c.Timestamp))
						if err := b.Put(key, c.Value); err != nil {
							return err
						}
						m.put(table, []store.Cell{c})
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func topLevel(t *testing.T, db *bolt.DB) []string {
	t.Helper()
	var names []string
	err := db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, _ *bolt.Bucket) error { names = append(names, string(name)); return nil })
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestMigrationLogsProgress: a migration says at its start how many keys
// it has to move and that no port answers until it is done, then logs
// its progress (keys moved of all, percent) every migrateProgressEvery
// while it runs, and its end: an operator whose first start after the
// upgrade takes a minute sees why. The code before logged its start and
// its end only.
func TestMigrationLogsProgress(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	m := model{}
	writeOld(t, path, m)
	total := 0
	for _, rows := range m {
		for _, cols := range rows {
			for _, vs := range cols {
				total += len(vs)
			}
		}
	}
	clock := time.Unix(1e9, 0)
	var log testkit.LogBuffer
	s, err := OpenWith(path, Options{Log: log.Logger(), migrateChunk: 1000, Now: func() time.Time {
		clock = clock.Add(time.Second) // every call of the clock a second later
		return clock
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := log.Lines("migrating it before the store opens", "no port answers", fmt.Sprintf("keys=%d", total)); len(got) != 1 {
		t.Fatalf("start of the migration logged %d times, want once with keys=%d:\n%s", len(got), total, log.String())
	}
	progress := log.Lines("migrating store file", fmt.Sprintf("keys=%d", total))
	if len(progress) < 2 {
		t.Fatalf("%d progress lines:\n%s", len(progress), log.String())
	}
	last := -1
	for _, l := range progress {
		var moved int
		_, field, _ := strings.Cut(l, "keys_moved=")
		if _, err := fmt.Sscanf(field, "%d", &moved); err != nil || moved <= last || moved > total {
			t.Fatalf("progress line %q after %d moved (%v)", l, last, err)
		}
		last = moved
	}
	if got := log.Lines("store file migrated", fmt.Sprintf("keys=%d", total)); len(got) != 1 {
		t.Fatalf("end of the migration:\n%s", log.String())
	}
}
