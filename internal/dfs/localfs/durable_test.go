package localfs

import (
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

// TestFirstSyncMakesTheNameDurable: a new file's first Sync (or its
// Close) fsyncs its directory, once: a writer answers OK after a Sync,
// and the file's fsync alone does not make its name durable. The parents
// of the directories its Create made are fsynced by the Create.
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
	check("create", root, filepath.Join(root, "cat"))
	if _, err := f.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	check("first sync", filepath.Join(root, "cat/0"))
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
	check("new category and bucket", root, filepath.Join(root, "cat"))
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

// TestCreateInADirectoryAnotherCreateMade: of two files created at once
// in a new directory, the one Create found the directory for is synced,
// closed (and published, and recorded as done: the copier's merge writes
// several buckets' files in a new hour's directory) while the other is
// still written. Its name is durable then: the directories the other
// Create made are, however long the other file stays open.
func TestCreateInADirectoryAnotherCreateMade(t *testing.T) {
	fsys, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	synced := map[string]bool{}
	orig := syncDir
	syncDir = func(dir string) error {
		synced[dir] = true
		return orig(dir)
	}
	t.Cleanup(func() { syncDir = orig })
	root := fsys.Root()

	first, err := fsys.Create("cat/dt=2026-12-03/hh=14/.part-0.inprogress")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close() // written for the whole test
	second, err := fsys.Create("cat/dt=2026-12-03/hh=14/.part-1.inprogress")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := second.Write([]byte("lines\n")); err != nil {
		t.Fatal(err)
	}
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"cat/dt=2026-12-03/hh=14", "cat/dt=2026-12-03", "cat", ""} {
		if !synced[filepath.Join(root, dir)] {
			t.Errorf("the second file is closed, and %q, on its path, was not synced", filepath.Join(root, dir))
		}
	}
}

// TestMkdirAllRetriedAfterAFailedSync: a directory whose parent's fsync
// failed was left in place, and a retry of MkdirAll found it there and
// synced nothing: the writer then answered OK for segments under a name
// that could be lost in a machine crash. Now the retry makes its name
// durable.
func TestMkdirAllRetriedAfterAFailedSync(t *testing.T) {
	fsys, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	root := fsys.Root()
	var synced []string
	fail := true
	orig := syncDir
	syncDir = func(dir string) error {
		if dir == root && fail {
			fail = false
			return &fs.PathError{Op: "sync", Path: dir, Err: syscall.EIO}
		}
		err := orig(dir)
		if err == nil {
			synced = append(synced, dir)
		}
		return err
	}
	t.Cleanup(func() { syncDir = orig })

	if err := fsys.MkdirAll("cat/0"); !errors.Is(err, syscall.EIO) {
		t.Fatalf("MkdirAll with a failing fsync of the root = %v", err)
	}
	synced = nil
	if err := fsys.MkdirAll("cat/0"); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{root, filepath.Join(root, "cat")} {
		if !slices.Contains(synced, dir) {
			t.Errorf("the retried MkdirAll synced %q, not %q", synced, dir)
		}
	}
}
