package dfstest_test

import (
	"testing"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
)

func TestCrashFSConformance(t *testing.T) {
	t.Run("local", func(t *testing.T) {
		dfstest.Run(t, func(t *testing.T) dfs.FS { return dfstest.NewCrashFS() })
	})
	t.Run("hdfslike", func(t *testing.T) {
		dfstest.Run(t, func(t *testing.T) dfs.FS { return dfstest.NewCrashFS().LikeHDFS() })
	})
}

// The images of a crash keep what the contract makes durable, and no
// more: synced bytes under a synced name; a rename once it returned; a
// remove only once a later sync of its directory.
func TestCrashFSImages(t *testing.T) {
	f := dfstest.NewCrashFS()
	w, err := f.Create("d/a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("one")); err != nil {
		t.Fatal(err)
	}
	s := f.Snapshot()
	if got := s.PowerLoss(nil).Files; len(got) != 0 {
		t.Errorf("power loss before any sync: %q, want nothing", got)
	}
	if got := s.Killed().Files["d/a"]; string(got) != "one" {
		t.Errorf("killed: %q, want one", got)
	}
	if !s.PowerLoss(nil).Dirs["d"] {
		t.Error("the directory Create made is not durable")
	}
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("two")); err != nil {
		t.Fatal(err)
	}
	if got := f.Snapshot().PowerLoss(nil).Files["d/a"]; string(got) != "one" {
		t.Errorf("power loss after a sync: %q, want one", got)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Rename("d/a", "d/b"); err != nil {
		t.Fatal(err)
	}
	if got := f.Snapshot().PowerLoss(nil).Files; string(got["d/b"]) != "onetwo" || got["d/a"] != nil {
		t.Errorf("power loss after a rename: %q", got)
	}
	if err := f.Remove("d/b"); err != nil {
		t.Fatal(err)
	}
	if got := f.Snapshot().PowerLoss(nil).Files; string(got["d/b"]) != "onetwo" {
		t.Errorf("power loss after a remove, before a directory sync: %q, want d/b back", got)
	}
	if err := dfs.WriteFile(f, "d/c", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if got := f.Snapshot().PowerLoss(nil).Files; got["d/b"] != nil || string(got["d/c"]) != "x" {
		t.Errorf("power loss after a later sync of the directory: %q", got)
	}
}
