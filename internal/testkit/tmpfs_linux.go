package testkit

import (
	"os"
	"syscall"
	"testing"
)

// MountTmpfs mounts a tmpfs with the mount options opts ("size=256k",
// "size=1m,nr_inodes=3") on a new directory until the test ends, for
// tests of a disk that fills up. It needs root (as in CI); without it the
// test is skipped.
func MountTmpfs(t testing.TB, opts string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: mounting a tmpfs that can fill up needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, opts); err != nil {
		t.Fatalf("mount a tmpfs (%s) on %s as root: %v", opts, dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			_ = syscall.Unmount(dir, syscall.MNT_DETACH) // best effort, as the cleanup it is
		}
	})
	return dir
}
