package localfs

import (
	"path/filepath"
	"slices"
	"testing"
)

// TestFirstSyncMakesTheNameDurable: a new file's first Sync (or its
// Close) fsyncs its directory, and the parents of the directories its
// Create made, once: a writer answers OK after a Sync, and the file's
// fsync alone does not make its name durable.
func TestFirstSyncMakesTheNameDurable(t *testing.T) {
	fsys, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var synced []string
	orig := syncDir
	syncDir = func(dir string) error {
		synced = append(synced, dir)
		return orig(dir)
	}
	t.Cleanup(func() { syncDir = orig })
	root := fsys.Root()
	check := func(what string, want ...string) {
		t.Helper()
		if !slices.Equal(synced, want) {
			t.Fatalf("%s: directories synced %q, want %q", what, synced, want)
		}
		synced = nil
	}

	f, err := fsys.Create("cat/0/seg")
	if err != nil {
		t.Fatal(err)
	}
	check("create")
	if _, err := f.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	check("first sync", filepath.Join(root, "cat/0"), filepath.Join(root, "cat"), root)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	check("second sync and close")

	g, err := fsys.Create("cat/0/other")
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	check("close without a sync", filepath.Join(root, "cat/0"))
}

// TestMkdirAllMakesTheNamesDurable: MkdirAll fsyncs the parent of every
// directory it makes. A writer makes its bucket's directory with MkdirAll
// when it takes the bucket, then answers OK after its segments' Syncs,
// which fsync the bucket directory alone (Create made none): without
// this, the bucket's and a new category's names could be lost in a
// machine crash with every acknowledged segment under them.
func TestMkdirAllMakesTheNamesDurable(t *testing.T) {
	fsys, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var synced []string
	orig := syncDir
	syncDir = func(dir string) error {
		synced = append(synced, dir)
		return orig(dir)
	}
	t.Cleanup(func() { syncDir = orig })
	root := fsys.Root()
	check := func(what string, want ...string) {
		t.Helper()
		if !slices.Equal(synced, want) {
			t.Fatalf("%s: directories synced %q, want %q", what, synced, want)
		}
		synced = nil
	}

	if err := fsys.MkdirAll("cat/0"); err != nil {
		t.Fatal(err)
	}
	check("new category and bucket", filepath.Join(root, "cat"), root)
	if err := fsys.MkdirAll("cat/0"); err != nil {
		t.Fatal(err)
	}
	check("existing bucket")
	if err := fsys.MkdirAll("cat/1"); err != nil {
		t.Fatal(err)
	}
	check("new bucket", filepath.Join(root, "cat"))

	f, err := fsys.Create("cat/1/seg")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	check("first sync in the bucket", filepath.Join(root, "cat/1"))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
