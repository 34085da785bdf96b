// Package storetest is the conformance suite for store.Store. Every
// implementation runs it: bbolt always, HBase whenever FREEWAY_TEST_HBASE
// names a Thrift2 gateway (and always under `make test`).
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/freeway-dev/freeway/internal/store"
)

// Run runs the suite. newStore returns a store and a table name that no
// other subtest uses; it registers its own cleanup.
func Run(t *testing.T, newStore func(t *testing.T) (store.Store, string)) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store, table string)
	}{
		{"PutGet", testPutGet},
		{"MissingRowAndTable", testMissing},
		{"AsOfVersions", testAsOf},
		{"SameTimestampReplaces", testSameTimestamp},
		{"KeepsMinVersions", testKeepsVersions},
		{"ScanRangeAndOrder", testScan},
		{"ScanManyRows", testScanMany},
		{"ScanStopsOnError", testScanError},
		{"DeleteNewer", testDeleteNewer},
		{"DeleteBetween", testDeleteBetween},
		{"DeleteUpTo", testDeleteUpTo},
		{"CheckAndPut", testCheckAndPut},
		{"CheckAndPutRace", testCheckAndPutRace},
		{"BinaryKeysAndValues", testBinary},
		{"InvalidArguments", testInvalid},
		{"CheckpointRecovery", testCheckpointRecovery},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, table := newStore(t)
			tc.fn(t, s, table)
		})
	}
}

var ctx = context.Background()

func put(t *testing.T, s store.Store, table string, cells ...store.Cell) {
	t.Helper()
	if err := s.Put(ctx, table, cells); err != nil {
		t.Fatalf("put: %v", err)
	}
}

func get(t *testing.T, s store.Store, table, row string, asOf int64) map[string]string {
	t.Helper()
	cells, err := s.Get(ctx, table, row, asOf)
	if err != nil {
		t.Fatalf("get %s: %v", row, err)
	}
	m := map[string]string{}
	last := ""
	for _, c := range cells {
		if c.Row != row {
			t.Fatalf("get %s returned a cell of row %s", row, c.Row)
		}
		if c.Column <= last {
			t.Fatalf("get %s: columns not sorted: %q after %q", row, c.Column, last)
		}
		last = c.Column
		m[c.Column] = fmt.Sprintf("%s@%d", c.Value, c.Timestamp)
	}
	return m
}

func cell(row, col string, ts int64, v string) store.Cell {
	return store.Cell{Row: row, Column: col, Timestamp: ts, Value: []byte(v)}
}

func expect(t *testing.T, what string, got map[string]string, want ...string) {
	t.Helper()
	w := map[string]string{}
	for i := 0; i+1 < len(want); i += 2 {
		w[want[i]] = want[i+1]
	}
	if fmt.Sprint(got) != fmt.Sprint(w) {
		t.Fatalf("%s = %v, want %v", what, got, w)
	}
}

func testPutGet(t *testing.T, s store.Store, table string) {
	put(t, s, table, cell("r1", "a", 1, "x"), cell("r1", "b", 1, "y"), cell("r2", "a", 5, "z"))
	expect(t, "r1", get(t, s, table, "r1", store.Latest), "a", "x@1", "b", "y@1")
	expect(t, "r2", get(t, s, table, "r2", store.Latest), "a", "z@5")
}

func testMissing(t *testing.T, s store.Store, table string) {
	expect(t, "missing row of a missing table", get(t, s, table, "nope", store.Latest))
	put(t, s, table, cell("r", "c", 1, "v"))
	expect(t, "missing row", get(t, s, table, "nope", store.Latest))
	n := 0
	if err := s.Scan(ctx, table, "s", "", store.Latest, func(string, []store.Cell) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("scan past the last row saw %d rows", n)
	}
}

func testAsOf(t *testing.T, s store.Store, table string) {
	put(t, s, table, cell("r", "c", 10, "v10"))
	put(t, s, table, cell("r", "c", 20, "v20"), cell("r", "d", 20, "d20"))
	put(t, s, table, cell("r", "c", 15, "v15")) // written late, older timestamp
	expect(t, "latest", get(t, s, table, "r", store.Latest), "c", "v20@20", "d", "d20@20")
	expect(t, "as of 19", get(t, s, table, "r", 19), "c", "v15@15")
	expect(t, "as of 14", get(t, s, table, "r", 14), "c", "v10@10")
	expect(t, "as of 10", get(t, s, table, "r", 10), "c", "v10@10")
	expect(t, "as of 9", get(t, s, table, "r", 9))
}

func testSameTimestamp(t *testing.T, s store.Store, table string) {
	put(t, s, table, cell("r", "c", 7, "first"))
	put(t, s, table, cell("r", "c", 7, "second"))
	expect(t, "after rewrite", get(t, s, table, "r", store.Latest), "c", "second@7")
}

func testKeepsVersions(t *testing.T, s store.Store, table string) {
	for ts := int64(1); ts <= 10; ts++ {
		put(t, s, table, cell("r", "c", ts, fmt.Sprint("v", ts)))
	}
	for ts := int64(10); ts > 10-store.MinVersions; ts-- {
		expect(t, fmt.Sprint("as of ", ts), get(t, s, table, "r", ts), "c", fmt.Sprintf("v%d@%d", ts, ts))
	}
}

func scanAll(t *testing.T, s store.Store, table, start, stop string, asOf int64) []string {
	t.Helper()
	var rows []string
	err := s.Scan(ctx, table, start, stop, asOf, func(row string, cells []store.Cell) error {
		var parts []string
		for _, c := range cells {
			if c.Row != row {
				t.Fatalf("scan row %s has a cell of row %s", row, c.Row)
			}
			parts = append(parts, fmt.Sprintf("%s=%s", c.Column, c.Value))
		}
		rows = append(rows, fmt.Sprintf("%s%v", row, parts))
		return nil
	})
	if err != nil {
		t.Fatalf("scan: %v", err)
	}
	return rows
}

func testScan(t *testing.T, s store.Store, table string) {
	put(t, s, table,
		cell("shard/1/b", "x", 1, "1"),
		cell("shard/1/a", "x", 1, "2"),
		cell("shard/10/a", "x", 1, "3"),
		cell("shard/2/a", "x", 1, "4"),
		cell("shard/1/c", "x", 5, "5"),
		cell("other", "x", 1, "6"),
	)
	got := scanAll(t, s, table, "shard/1/", store.PrefixEnd("shard/1/"), store.Latest)
	want := []string{"shard/1/a[x=2]", "shard/1/b[x=1]", "shard/1/c[x=5]"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("prefix scan = %v, want %v", got, want)
	}
	got = scanAll(t, s, table, "shard/1/", store.PrefixEnd("shard/1/"), 4)
	want = want[:2]
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("scan as of 4 = %v, want %v", got, want)
	}
	got = scanAll(t, s, table, "", "", store.Latest)
	if len(got) != 6 || got[0] != "other[x=6]" || got[5] != "shard/2/a[x=4]" {
		t.Fatalf("full scan = %v", got)
	}
}

func testScanMany(t *testing.T, s store.Store, table string) {
	const n = 1500
	var cells []store.Cell
	for i := range n {
		cells = append(cells, cell(fmt.Sprintf("row%05d", i), "a", 1, fmt.Sprint(i)), cell(fmt.Sprintf("row%05d", i), "b", 1, "b"))
	}
	put(t, s, table, cells...)
	i := 0
	err := s.Scan(ctx, table, "", "", store.Latest, func(row string, cs []store.Cell) error {
		if want := fmt.Sprintf("row%05d", i); row != want || len(cs) != 2 || string(cs[0].Value) != fmt.Sprint(i) {
			return fmt.Errorf("row %d: got %s with %d cells", i, row, len(cs))
		}
		i++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if i != n {
		t.Fatalf("scanned %d rows, want %d", i, n)
	}
}

func testScanError(t *testing.T, s store.Store, table string) {
	put(t, s, table, cell("a", "c", 1, "1"), cell("b", "c", 1, "1"), cell("c", "c", 1, "1"))
	stop := errors.New("stop here")
	n := 0
	err := s.Scan(ctx, table, "", "", store.Latest, func(string, []store.Cell) error {
		n++
		if n == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 2 {
		t.Fatalf("scan returned %v after %d rows", err, n)
	}
}

func testDeleteNewer(t *testing.T, s store.Store, table string) {
	put(t, s, table, cell("p/1", "c", 5, "committed"), cell("p/2", "c", 5, "committed"), cell("q/1", "c", 5, "committed"))
	put(t, s, table, cell("p/1", "c", 6, "uncommitted"), cell("p/1", "d", 6, "uncommitted"), cell("q/1", "c", 6, "other-shard"))
	if err := s.DeleteNewer(ctx, table, "p/", store.PrefixEnd("p/"), 5); err != nil {
		t.Fatal(err)
	}
	expect(t, "p/1", get(t, s, table, "p/1", store.Latest), "c", "committed@5")
	expect(t, "p/2", get(t, s, table, "p/2", store.Latest), "c", "committed@5")
	expect(t, "q/1 (outside the range)", get(t, s, table, "q/1", store.Latest), "c", "other-shard@6")
	// A new epoch writes above the deleted one.
	put(t, s, table, cell("p/1", "c", 7, "next"))
	expect(t, "p/1 after next epoch", get(t, s, table, "p/1", store.Latest), "c", "next@7")
}

func testDeleteBetween(t *testing.T, s store.Store, table string) {
	put(t, s, table, cell("p/1", "c", 5, "committed"), cell("p/1", "c", 6, "aborted"), cell("p/1", "d", 7, "aborted"), cell("p/1", "c", 8, "later"))
	put(t, s, table, cell("p/2", "c", 7, "aborted"), cell("q/1", "c", 6, "other-shard"))
	if err := s.DeleteBetween(ctx, table, "p/", store.PrefixEnd("p/"), 5, 7); err != nil {
		t.Fatal(err)
	}
	expect(t, "p/1", get(t, s, table, "p/1", store.Latest), "c", "later@8")
	expect(t, "p/1 as of 7", get(t, s, table, "p/1", 7), "c", "committed@5")
	expect(t, "p/2", get(t, s, table, "p/2", store.Latest))
	expect(t, "q/1 (outside the range)", get(t, s, table, "q/1", store.Latest), "c", "other-shard@6")
	if err := s.DeleteBetween(ctx, table, "p/", store.PrefixEnd("p/"), 8, 8); err != nil {
		t.Fatal(err)
	}
	expect(t, "p/1 after an empty range", get(t, s, table, "p/1", store.Latest), "c", "later@8")
}

func testDeleteUpTo(t *testing.T, s store.Store, table string) {
	put(t, s, table, cell("w/1", "c", 3, "old"), cell("w/2", "c", 3, "old"), cell("w/2", "c", 8, "new"), cell("x", "c", 1, "keep"))
	if err := s.DeleteUpTo(ctx, table, "w/", store.PrefixEnd("w/"), 5); err != nil {
		t.Fatal(err)
	}
	expect(t, "w/1", get(t, s, table, "w/1", store.Latest))
	expect(t, "w/2", get(t, s, table, "w/2", store.Latest), "c", "new@8")
	expect(t, "x", get(t, s, table, "x", store.Latest), "c", "keep@1")
	if rows := scanAll(t, s, table, "w/", store.PrefixEnd("w/"), store.Latest); len(rows) != 1 {
		t.Fatalf("scan after delete = %v", rows)
	}
	put(t, s, table, cell("w/1", "c", 9, "again"))
	expect(t, "w/1 rewritten", get(t, s, table, "w/1", store.Latest), "c", "again@9")
}

func testCheckAndPut(t *testing.T, s store.Store, table string) {
	ok, err := s.CheckAndPut(ctx, table, "commit", "epoch", nil, []store.Cell{cell("commit", "epoch", 1, "1"), cell("commit", "pos", 1, "a")})
	if err != nil || !ok {
		t.Fatalf("first commit: %v %v", ok, err)
	}
	ok, err = s.CheckAndPut(ctx, table, "commit", "epoch", nil, []store.Cell{cell("commit", "epoch", 2, "2")})
	if err != nil || ok {
		t.Fatalf("commit expecting absence over an existing column: %v %v", ok, err)
	}
	ok, err = s.CheckAndPut(ctx, table, "commit", "epoch", []byte("7"), []store.Cell{cell("commit", "epoch", 2, "2")})
	if err != nil || ok {
		t.Fatalf("commit with a wrong expectation: %v %v", ok, err)
	}
	expect(t, "after refused commits", get(t, s, table, "commit", store.Latest), "epoch", "1@1", "pos", "a@1")
	ok, err = s.CheckAndPut(ctx, table, "commit", "epoch", []byte("1"), []store.Cell{cell("commit", "epoch", 2, "2"), cell("commit", "pos", 2, "b")})
	if err != nil || !ok {
		t.Fatalf("second commit: %v %v", ok, err)
	}
	expect(t, "after second commit", get(t, s, table, "commit", store.Latest), "epoch", "2@2", "pos", "b@2")
	if _, err := s.CheckAndPut(ctx, table, "commit", "epoch", []byte("2"), []store.Cell{cell("elsewhere", "x", 3, "3")}); err == nil {
		t.Fatal("CheckAndPut accepted a cell of another row")
	}
	// Check one column, write another: Puma's fenced attempt marker.
	ok, err = s.CheckAndPut(ctx, table, "commit", "epoch", []byte("2"), []store.Cell{cell("commit", "attempt", 3, "3")})
	if err != nil || !ok {
		t.Fatalf("check epoch, write attempt: %v %v", ok, err)
	}
	ok, err = s.CheckAndPut(ctx, table, "commit", "epoch", []byte("1"), []store.Cell{cell("commit", "attempt", 4, "4")})
	if err != nil || ok {
		t.Fatalf("stale check, write attempt: %v %v", ok, err)
	}
	expect(t, "after markers", get(t, s, table, "commit", store.Latest), "attempt", "3@3", "epoch", "2@2", "pos", "b@2")
}

// testCheckAndPutRace: of several owners racing to commit over the same
// expected value, exactly one wins (the fence between a stale and a new
// Puma owner).
func testCheckAndPutRace(t *testing.T, s store.Store, table string) {
	put(t, s, table, cell("commit", "owner", 1, "none"))
	const n = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	var winners []int
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := s.CheckAndPut(ctx, table, "commit", "owner", []byte("none"), []store.Cell{cell("commit", "owner", 2, fmt.Sprint("owner", i))})
			if err != nil {
				t.Errorf("racer %d: %v", i, err)
				return
			}
			if ok {
				mu.Lock()
				winners = append(winners, i)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("%d winners: %v", len(winners), winners)
	}
	expect(t, "owner", get(t, s, table, "commit", store.Latest), "owner", fmt.Sprintf("owner%d@2", winners[0]))
}

func testBinary(t *testing.T, s store.Store, table string) {
	row := "k\x00\x01\xff/é"
	val := []byte{0, 1, 2, 0xff, 0}
	put(t, s, table, store.Cell{Row: row, Column: "c\x00", Timestamp: 1, Value: val}, store.Cell{Row: row, Column: "empty", Timestamp: 1, Value: []byte{}})
	put(t, s, table, cell("k\x00", "c", 1, "shorter"), cell("k\x01", "c", 1, "after"))
	cells, err := s.Get(ctx, table, row, store.Latest)
	if err != nil {
		t.Fatal(err)
	}
	if len(cells) != 2 || cells[0].Column != "c\x00" || !bytes.Equal(cells[0].Value, val) || len(cells[1].Value) != 0 {
		t.Fatalf("binary row: %+v", cells)
	}
	rows := scanAll(t, s, table, "k", store.PrefixEnd("k"), store.Latest)
	if len(rows) != 3 || rows[0] != "k\x00[c=shorter]" || rows[2] != "k\x01[c=after]" {
		t.Fatalf("binary scan order: %q", rows)
	}
}

func testInvalid(t *testing.T, s store.Store, table string) {
	if err := s.Put(ctx, table, []store.Cell{cell("", "c", 1, "v")}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("empty row: %v", err)
	}
	if err := s.Put(ctx, table, []store.Cell{cell("r", "", 1, "v")}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("empty column: %v", err)
	}
	if err := s.Put(ctx, table, []store.Cell{cell("r", "c", -1, "v")}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("negative timestamp: %v", err)
	}
	if _, err := s.Get(ctx, table, "", store.Latest); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("get empty row: %v", err)
	}
}

// testCheckpointRecovery plays Puma's protocol: cells at the epoch as
// timestamp, the commit row last; a crash after writing cells but before
// the commit; recovery reads as of the committed epoch and purges the rest.
func testCheckpointRecovery(t *testing.T, s store.Store, table string) {
	commit := func(epoch int64, prev []byte, pos string) bool {
		ok, err := s.CheckAndPut(ctx, table, "shard/0/commit", "epoch", prev, []store.Cell{
			cell("shard/0/commit", "epoch", epoch, fmt.Sprint(epoch)),
			cell("shard/0/commit", "pos", epoch, pos),
		})
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	put(t, s, table, cell("shard/0/cell/a", "v", 1, "10"), cell("shard/0/cell/b", "v", 1, "20"))
	if !commit(1, nil, "seg1:100") {
		t.Fatal("commit 1 refused")
	}
	put(t, s, table, cell("shard/0/cell/a", "v", 2, "11"))
	if !commit(2, []byte("1"), "seg1:150") {
		t.Fatal("commit 2 refused")
	}
	// Epoch 3 writes cells, then the process dies before committing.
	put(t, s, table, cell("shard/0/cell/a", "v", 3, "99"), cell("shard/0/cell/c", "v", 3, "99"))

	// Recovery.
	cm := get(t, s, table, "shard/0/commit", store.Latest)
	expect(t, "commit row", cm, "epoch", "2@2", "pos", "seg1:150@2")
	if err := s.DeleteNewer(ctx, table, "shard/0/", store.PrefixEnd("shard/0/"), 2); err != nil {
		t.Fatal(err)
	}
	got := scanAll(t, s, table, "shard/0/cell/", store.PrefixEnd("shard/0/cell/"), 2)
	want := []string{"shard/0/cell/a[v=11]", "shard/0/cell/b[v=20]"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("recovered %v, want %v", got, want)
	}
	if got := scanAll(t, s, table, "shard/0/cell/", store.PrefixEnd("shard/0/cell/"), store.Latest); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("uncommitted versions survived the purge: %v", got)
	}
	// The next attempt uses a fresh epoch and commits normally.
	put(t, s, table, cell("shard/0/cell/a", "v", 4, "12"))
	if !commit(4, []byte("2"), "seg1:170") {
		t.Fatal("commit 4 refused")
	}
	expect(t, "a after epoch 4", get(t, s, table, "shard/0/cell/a", 4), "v", "12@4")
}
