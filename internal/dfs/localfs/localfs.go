// Package localfs implements dfs.FS on a local directory: the embedded
// default (file:///path) for one machine.
//
// Files are fsynced on Sync and Close, and so, at a new file's first
// Sync or Close, is its directory: the bytes a Sync made durable keep
// their name through a crash of the machine. Create and MkdirAll fsync
// the parent of every directory they make before they return, so that a
// file's directory is durable once the file is there: each as soon as it
// is made, and one whose parent's fsync failed is removed again, so that
// a retry after a full disk or an I/O error finds no directory whose name
// is not durable. The directory is fsynced after a rename too, so a
// published file survives a crash under its new name. A file being
// written can be cut back (dfs.Truncater) to what an earlier Sync made
// durable, after a write or a Sync failed.
package localfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/durable"
)

// FS is a dfs.FS rooted at a local directory.
type FS struct {
	root string
}

var (
	_ dfs.FS         = (*FS)(nil)
	_ dfs.NameLister = (*FS)(nil)
	_ dfs.Rooted     = (*FS)(nil)
	_ dfs.Truncater  = (*writer)(nil)
)

// New returns a file system rooted at dir, creating dir if needed.
func New(dir string) (*FS, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("resolve dfs root %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("create dfs root: %w", err)
	}
	return &FS{root: abs}, nil
}

func (f *FS) path(op, name string) (string, error) {
	if name == "" {
		name = "."
	}
	if !fs.ValidPath(name) {
		return "", &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	return filepath.Join(f.root, filepath.FromSlash(name)), nil
}

// Root is the local directory the file system lives in.
func (f *FS) Root() string { return f.root }

// RootPath is Root with its symbolic links resolved (dfs.Rooted): two
// spellings of one directory give the same path.
func (f *FS) RootPath() (string, error) {
	p, err := filepath.EvalSymlinks(f.root)
	if err != nil {
		return "", fmt.Errorf("resolve dfs root %s: %w", f.root, err)
	}
	return filepath.ToSlash(p), nil
}

func (f *FS) Create(name string) (dfs.File, error) {
	p, err := f.path("create", name)
	if err != nil {
		return nil, err
	}
	const flags = os.O_WRONLY | os.O_CREATE | os.O_EXCL
	file, err := os.OpenFile(p, flags, 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		// The directory is missing (a segment's bucket directory is
		// there but for its first): its names are made durable now, not
		// at this file's first Sync, for another file may be created in
		// it meanwhile, and synced and answered for (the copier's merge
		// writes several buckets' files in a new hour's directory).
		if err := mkdirAll(f.root, filepath.Dir(p)); err != nil {
			return nil, err
		}
		file, err = os.OpenFile(p, flags, 0o644)
	}
	if err != nil {
		return nil, err
	}
	return &writer{File: file, dir: filepath.Dir(p)}, nil
}

type writer struct {
	*os.File
	// dir holds the file's name, until the first Sync or Close has
	// fsynced it; "" then.
	dir string
}

// Sync makes the bytes written durable, and, the first time, the file's
// name: a file's fsync alone does not make its directory entry durable
// (POSIX; ext4 and XFS happen to), and a Sync is what a writer answers
// OK after.
func (w *writer) Sync() error {
	if err := durable.SyncData(w.File); err != nil {
		return err
	}
	if w.dir != "" {
		if err := syncDir(w.dir); err != nil {
			return err
		}
		w.dir = ""
	}
	return nil
}

// Truncate cuts the file to size, moves the next write there and syncs
// (dfs.Truncater). Bytes that a failed fsync left behind are dropped from
// the page cache with the cut; those below size were made durable by an
// earlier Sync.
func (w *writer) Truncate(size int64) error {
	if err := w.File.Truncate(size); err != nil {
		return err
	}
	if _, err := w.Seek(size, io.SeekStart); err != nil {
		return err
	}
	return w.Sync()
}

func (w *writer) Close() error {
	if err := w.Sync(); err != nil {
		_ = w.File.Close() // the sync error is the one to report
		return err
	}
	return w.File.Close()
}

func (f *FS) Open(name string) (dfs.Reader, error) {
	p, err := f.path("open", name)
	if err != nil {
		return nil, err
	}
	file, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	if st, err := file.Stat(); err == nil && st.IsDir() {
		_ = file.Close() // opened for reading
		return nil, &fs.PathError{Op: "open", Path: name, Err: errors.New("is a directory")}
	}
	return file, nil
}

func (f *FS) Stat(name string) (fs.FileInfo, error) {
	p, err := f.path("stat", name)
	if err != nil {
		return nil, err
	}
	return os.Stat(p)
}

func (f *FS) ReadDir(name string) ([]fs.FileInfo, error) {
	p, err := f.path("readdir", name)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(p)
	if err != nil {
		return nil, err
	}
	infos := make([]fs.FileInfo, 0, len(entries))
	for _, e := range entries {
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed while listing
		}
		if err != nil {
			return nil, err
		}
		infos = append(infos, info)
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name() < infos[j].Name() })
	return infos, nil
}

// ReadDirNames lists the names in the directory name, sorted: what
// ReadDir lists, without an lstat per entry (dfs.NameLister).
func (f *FS) ReadDirNames(name string) ([]string, error) {
	p, err := f.path("readdir", name)
	if err != nil {
		return nil, err
	}
	d, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	names, err := d.Readdirnames(-1)
	_ = d.Close() // opened for reading
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: err}
	}
	sort.Strings(names)
	return names, nil
}

// MkdirAll makes the directory name and its missing parents, and returns
// once their names are durable: the parent of every directory it made is
// fsynced. A writer makes its bucket's directory so before it answers OK
// for what it syncs in there, and a file's first Sync fsyncs only its own
// directory and those its Create made.
func (f *FS) MkdirAll(name string) error {
	p, err := f.path("mkdir", name)
	if err != nil {
		return err
	}
	return mkdirAll(f.root, p)
}

// mkdirAll makes the directory dir under root, with its missing parents,
// each with a durable name (durable.MkdirAll).
func mkdirAll(root, dir string) error {
	return durable.MkdirAll(filepath.Clean(root), dir, syncDir)
}

func (f *FS) Rename(oldname, newname string) error {
	op, err := f.path("rename", oldname)
	if err != nil {
		return err
	}
	np, err := f.path("rename", newname)
	if err != nil {
		return err
	}
	if _, err := os.Stat(op); err != nil {
		return err
	}
	if st, err := os.Stat(np); err == nil && st.IsDir() {
		return &fs.PathError{Op: "rename", Path: newname, Err: fs.ErrExist}
	}
	if err := os.Rename(op, np); err != nil {
		return err
	}
	return syncDir(filepath.Dir(np))
}

func (f *FS) Remove(name string) error {
	p, err := f.path("remove", name)
	if err != nil {
		return err
	}
	return os.Remove(p)
}

func (f *FS) SyncDurable() bool { return true }

func (f *FS) String() string { return "file://" + filepath.ToSlash(f.root) }

func (f *FS) Close() error { return nil }

// syncDir fsyncs a directory (a variable for the tests).
var syncDir = durable.SyncDir
