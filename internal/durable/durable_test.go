package durable

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// Every directory made has its parent synced, top down, and none above
// top; one whose parent's sync failed is not left behind.
func TestMkdirAll(t *testing.T) {
	top := t.TempDir()
	var synced []string
	sync := func(dir string) error { synced = append(synced, dir); return SyncDir(dir) }
	dir := filepath.Join(top, "a", "b", "c")
	if err := MkdirAll(top, dir, sync); err != nil {
		t.Fatal(err)
	}
	want := []string{top, filepath.Join(top, "a"), filepath.Join(top, "a", "b")}
	if !slices.Equal(synced, want) {
		t.Fatalf("synced %q, want %q", synced, want)
	}
	synced = nil
	if err := MkdirAll(top, dir, sync); err != nil || len(synced) != 0 {
		t.Fatalf("again: %v, synced %q", err, synced)
	}

	failed := errors.New("sync failed")
	next := filepath.Join(top, "x", "y")
	err := MkdirAll(top, next, func(d string) error {
		if d == filepath.Join(top, "x") {
			return failed
		}
		return nil
	})
	if !errors.Is(err, failed) {
		t.Fatalf("err %v, want %v", err, failed)
	}
	if _, err := os.Stat(next); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s left after its parent's sync failed: %v", next, err)
	}
	if _, err := os.Stat(filepath.Join(top, "x")); err != nil {
		t.Fatalf("x, whose parent was synced: %v", err)
	}
}
