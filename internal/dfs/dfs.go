// Package dfs is the contract for the distributed file system that holds
// Freeway's bucket files: a local directory on one machine, HDFS on a
// cluster.
//
// The contract is the part of a file system that Freeway's writers
// (calligraphus), readers (ptail) and the copier need, with the semantics
// that HDFS through github.com/colinmarc/hdfs actually gives:
//
//   - A file being written is not visible to readers in full until it is
//     closed. HDFS readers see no byte of a block under construction, and the
//     client has no hflush. So a writer publishes a file by writing it under
//     a hidden temporary name and renaming it to its final name after Close.
//   - Files are written once. There is no append: after a crash a writer
//     starts a new file instead of reopening its last one.
//   - Rename is atomic.
//
// Names are slash-separated paths relative to the file system's root, in
// the form of io/fs (no leading slash, no "." or ".." elements). Errors
// wrap fs.ErrNotExist and fs.ErrExist where they apply, and a read of
// bytes the file system finds damaged wraps ErrChecksum.
//
// Implementations: localfs (file://), hdfs (hdfs://); the URL factory in
// internal/backends picks one. dfstest holds the conformance suite that
// every implementation passes.
package dfs

import (
	"errors"
	"io"
	"io/fs"
	"path"
	"strings"
)

// ErrChecksum is wrapped by a read that failed because the stored bytes
// fail the file system's own checksums (on HDFS: on every replica the
// client tried). It says nothing of what Freeway wrote: retrying helps
// once the file system repairs the block (HDFS re-replicates it from a
// good replica), and not before; readers retry it, with a back-off, and
// show it (see ptail), for nothing may be skipped unseen.
var ErrChecksum = errors.New("checksum error")

// FS is a file system holding bucket files.
type FS interface {
	// Create creates name for writing and fails with fs.ErrExist if it
	// already exists. Parent directories are created as needed. What is
	// written becomes visible to readers when the file is closed; see
	// SyncDurable for what Sync gives before that.
	Create(name string) (File, error)

	// Open opens name for reading.
	Open(name string) (Reader, error)

	// Stat describes name.
	Stat(name string) (fs.FileInfo, error)

	// ReadDir lists the directory name, sorted by file name.
	ReadDir(name string) ([]fs.FileInfo, error)

	// MkdirAll creates the directory name and any missing parents; where
	// SyncDurable, their names are durable when it returns (and those
	// Create makes, when Create returns), so that a Sync of a file in
	// them makes the file's bytes durable under its name.
	MkdirAll(name string) error

	// Rename atomically renames oldname to newname, replacing newname if it
	// is a file. The parent of newname must exist.
	Rename(oldname, newname string) error

	// Remove removes a file or an empty directory.
	Remove(name string) error

	// SyncDurable reports whether File.Sync makes the bytes written so far
	// durable (they survive a crash of this process and of the machine).
	// When it is false (HDFS without hflush) the only durable point is
	// Close.
	SyncDurable() bool

	// String describes the file system for logs, for example its URL.
	String() string

	// Close releases the connection to the file system.
	Close() error
}

// File is a file being written.
type File interface {
	io.Writer
	// Sync flushes what was written; durable only if FS.SyncDurable.
	Sync() error
	// Close flushes, makes the file durable and visible, and releases it.
	Close() error
}

// NameLister is implemented by a file system that lists the names in a
// directory for less than ReadDir, which describes each entry (a local
// directory: an lstat per entry). ReadDirNames uses it.
type NameLister interface {
	// ReadDirNames lists the names in the directory name, sorted.
	ReadDirNames(name string) ([]string, error)
}

// ReadDirNames lists the names in the directory name, sorted, with the
// errors of ReadDir: by the file system's own NameLister if it has one,
// else from ReadDir.
func ReadDirNames(fsys FS, name string) ([]string, error) {
	if l, ok := fsys.(NameLister); ok {
		return l.ReadDirNames(name)
	}
	infos, err := fsys.ReadDir(name)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(infos))
	for i, fi := range infos {
		names[i] = fi.Name() // sorted, as ReadDir's are
	}
	return names, nil
}

// Rooted is implemented by a file system that can name its root as an
// absolute slash-separated path in the namespace it shares with other
// roots: a local directory with its symbolic links resolved, a directory
// of an HDFS cluster. Two roots of one namespace are nested when one path
// is under the other (the copier refuses a destination inside its
// source, or the other way round).
type Rooted interface {
	// RootPath is the root's absolute path, cleaned.
	RootPath() (string, error)
}

// BuffersWriter is implemented by a File that writes several buffers
// with fewer system calls than a Write of each (a local file: writev).
// WriteBuffers uses it.
type BuffersWriter interface {
	// WriteBuffers writes bufs in order, as one Write of their
	// concatenation would, and returns the bytes written.
	WriteBuffers(bufs [][]byte) (int64, error)
}

// WriteBuffers writes bufs to f in order, as one Write of their
// concatenation would: by f's own BuffersWriter if it has one, else by
// a Write of each.
func WriteBuffers(f File, bufs [][]byte) (int64, error) {
	if bw, ok := f.(BuffersWriter); ok {
		return bw.WriteBuffers(bufs)
	}
	var n int64
	for _, b := range bufs {
		m, err := f.Write(b)
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Truncater is implemented by a File that can be cut back to a shorter
// length (a local file). A writer whose write or Sync failed cuts its file
// back to what its last successful Sync made durable, so that the bytes
// of what it refused are not read later (after a failed fsync the page
// cache still holds them, whatever the disk does).
type Truncater interface {
	// Truncate cuts the file to size bytes, where the next Write goes
	// on, and makes that durable, as Sync does.
	Truncate(size int64) error
}

// Reader is a file opened for reading. Read and ReadAt return io.EOF
// itself at the end of the file, and only there: bytes that cannot be
// delivered before it (a DataNode gone in the middle of a block) are an
// error that wraps neither io.EOF nor io.ErrUnexpectedEOF, so that no
// reader takes the rest of a file for missing.
type Reader interface {
	io.Reader
	io.ReaderAt
	io.Seeker
	io.Closer
}

// Hidden reports whether a file name (its last element) is hidden from
// readers: names starting with "." or "_", the convention HDFS tools and
// Hive follow for files in progress.
func Hidden(name string) bool {
	base := path.Base(name)
	return strings.HasPrefix(base, ".") || strings.HasPrefix(base, "_")
}

// TempName is the hidden name under which a file is written before it is
// published under name.
func TempName(name string) string {
	dir, base := path.Split(name)
	return dir + "." + base + ".inprogress"
}

// WriteFile publishes data under name: it writes a temporary file, closes
// it and renames it, so readers see either nothing or the whole file.
func WriteFile(fsys FS, name string, data []byte) error {
	tmp := TempName(name)
	f, err := fsys.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		_ = fsys.Remove(tmp) // the write error is the one to report
		return err
	}
	if err := f.Close(); err != nil {
		_ = fsys.Remove(tmp) // the close error is the one to report
		return err
	}
	return fsys.Rename(tmp, name)
}

// ReadFile reads the whole file name.
func ReadFile(fsys FS, name string) ([]byte, error) {
	r, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer r.Close() //nolint:errcheck // opened for reading
	return io.ReadAll(r)
}
