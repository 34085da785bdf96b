package main

import (
	"context"
	"errors"
	"io/fs"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/hdfs"
	"github.com/freeway-dev/freeway/internal/enginetest"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/hbasestore"
	"github.com/freeway-dev/freeway/puma"
)

// TestRemoveEngineRoots: what a run leaves on the real engines (its dfs
// root with segments under it, Puma's table) is gone after
// removeEngineRoots, and the report has no note.
func TestRemoveEngineRoots(t *testing.T) {
	enginetest.Addr(t, enginetest.HDFS)
	enginetest.Addr(t, enginetest.HBase)
	enginetest.Addr(t, enginetest.ZK)
	be, err := engineBackends()
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := hdfs.Open(be.dfs)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	if err := dfs.WriteFile(fsys, "bench/0/segment", []byte("x")); err != nil {
		t.Fatal(err)
	}
	st, err := hbasestore.Open(be.store)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	table := puma.DefaultConfig().Table
	if err := st.Put(ctx, table, []store.Cell{{Row: "r", Column: "c", Timestamp: 1, Value: []byte("v")}}); err != nil {
		t.Fatal(err)
	}

	rep := &report{}
	removeEngineRoots(rep, be)
	if len(rep.Notes) > 0 {
		t.Fatalf("notes: %q", rep.Notes)
	}
	if _, err := fsys.Stat(""); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the run's dfs root after removeEngineRoots: %v, want fs.ErrNotExist", err)
	}
	// A new handle: the store remembers tables it has seen.
	st2, err := hbasestore.Open(be.store)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	if cells, err := st2.Get(ctx, table, "r", store.Latest); err != nil || len(cells) != 0 {
		t.Fatalf("Puma's table after removeEngineRoots: %v, %v", cells, err)
	}
}
