package localfs

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/freeway-dev/freeway/internal/testkit"
)

// TestMkdirAllOnAFullDisk: a full disk lets MkdirAll make the category's
// directory and refuses the bucket's (here: a tmpfs out of inodes). The
// parent of the one it made was never fsynced, and the retry, once there
// was room, found it and synced only it for the bucket: the category's
// name, and every acknowledged segment under it, could be lost in a
// machine crash. Now each directory's parent is fsynced as soon as it is
// made.
func TestMkdirAllOnAFullDisk(t *testing.T) {
	// Three inodes: the root, a filler, the category's directory.
	mnt := testkit.MountTmpfs(t, "size=1m,nr_inodes=3")
	filler := filepath.Join(mnt, "filler")
	if err := os.WriteFile(filler, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fsys, err := New(mnt)
	if err != nil {
		t.Fatal(err)
	}
	root := fsys.Root()
	var synced []string
	orig := syncDir
	syncDir = func(dir string) error {
		err := orig(dir)
		if err == nil {
			synced = append(synced, dir)
		}
		return err
	}
	t.Cleanup(func() { syncDir = orig })

	if err := fsys.MkdirAll("cat/0"); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("MkdirAll out of inodes = %v, want ENOSPC", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := fsys.MkdirAll("cat/0"); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{root, filepath.Join(root, "cat")} {
		if !slices.Contains(synced, dir) {
			t.Errorf("directories synced %q, not %q", synced, dir)
		}
	}
}
