package durable

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

func TestSyncDataSyncsAndReportsFailure(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "data"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("some bytes")); err != nil {
		t.Fatal(err)
	}
	if err := SyncData(f); err != nil {
		t.Fatalf("sync of a written file: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := SyncData(f); err == nil || !strings.Contains(err.Error(), f.Name()) {
		t.Fatalf("sync of a closed file: %v, want an error naming it", err)
	}
}

// TestSyncDataReportsTheSyscallsError: fdatasync(2) refuses a pipe
// (EINVAL); its error is SyncData's, not lost on the way.
func TestSyncDataReportsTheSyscallsError(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if err := SyncData(w); err == nil {
		t.Fatal("fdatasync of a pipe succeeded")
	}
}
