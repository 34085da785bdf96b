package durable

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// SyncData makes the bytes written to f durable, with what reading them
// back needs of its metadata (its size, its blocks), but not the rest (its
// times): fdatasync(2), as durable for the bytes as fsync. On this
// project's disk (ext4 without a journal) it costs the same as fsync
// (BenchmarkSyncedCommit, bench/PROFILE.md "(datasync)"); where a journal
// would commit the times, it need not. A new file's name is the
// directory's to make durable (SyncDir), as with fsync.
func SyncData(f *os.File) error {
	rc, err := f.SyscallConn()
	var serr error // fdatasync's
	if err == nil {
		err = rc.Control(func(fd uintptr) {
			for {
				if serr = unix.Fdatasync(int(fd)); !errors.Is(serr, syscall.EINTR) {
					return
				}
			}
		})
	}
	if err == nil {
		err = serr
	}
	if err != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
	}
	return nil
}
