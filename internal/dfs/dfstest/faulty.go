package dfstest

import (
	"bytes"
	"errors"
	"io/fs"
	"slices"
	"sync"

	"github.com/freeway-dev/freeway/internal/dfs"
)

// Op names a call a Faulty file system sees.
type Op string

// The calls of dfs.FS, and those of the files it returns.
const (
	OpCreate   Op = "create"
	OpOpen     Op = "open"
	OpStat     Op = "stat"
	OpReadDir  Op = "readdir"
	OpMkdirAll Op = "mkdirall"
	OpRename   Op = "rename"
	OpRemove   Op = "remove"
	OpWrite    Op = "write"    // dfs.File
	OpSync     Op = "sync"     // dfs.File
	OpClose    Op = "close"    // dfs.File
	OpTruncate Op = "truncate" // dfs.File (dfs.Truncater); Call.Off: the size
	OpRead     Op = "read"     // dfs.Reader: Read and ReadAt
)

// Call is one call a Faulty file system saw.
type Call struct {
	Op   Op
	Name string // the file or directory; Rename: the old name
	To   string // Rename: the new name
	Off  int64  // Read: the offset the read starts at; Truncate: the size
	// Proc is the process that made the call, on a CrashFS shared by
	// several (CrashFS.As); "" otherwise.
	Proc string
}

// Faulty wraps a dfs.FS for tests that need the file system to fail, to
// block, or to be watched. Every call is recorded and counted, then passed
// to the hook, which may block it (until the test lets it go) or fail it:
// a call failed by the hook does not reach the wrapped file system.
//
// LikeHDFS makes a local file system behave as HDFS through colinmarc/hdfs
// does (see package dfs): Sync makes nothing durable, and a file being
// written reads as empty until it is closed.
type Faulty struct {
	dfs.FS

	hdfsLike bool // set before use

	mu      sync.Mutex
	hook    func(Call) error
	tamper  func(name string, p []byte) []byte
	calls   []Call
	counts  map[Op]int
	writing map[string]bool
}

// NewFaulty wraps inner; until a hook is set it only records.
func NewFaulty(inner dfs.FS) *Faulty {
	return &Faulty{FS: inner, counts: map[Op]int{}, writing: map[string]bool{}}
}

// LikeHDFS gives f the visibility and durability of HDFS (see Faulty) and
// returns it. Call it before f is used.
func (f *Faulty) LikeHDFS() *Faulty {
	f.hdfsLike = true
	return f
}

// SetHook sets the function every call passes through first (nil: none).
// It runs on the caller's goroutine, without f's lock held.
func (f *Faulty) SetHook(h func(Call) error) {
	f.mu.Lock()
	f.hook = h
	f.mu.Unlock()
}

// SetTamper sets a function that may change what is written to a file, as
// a disk or a network that corrupts data silently would: it gets a copy of
// the bytes of each Write and returns the bytes to write (nil: none).
func (f *Faulty) SetTamper(t func(name string, p []byte) []byte) {
	f.mu.Lock()
	f.tamper = t
	f.mu.Unlock()
}

// Calls returns the calls seen so far of the given ops (of every op if
// none is given), in order.
func (f *Faulty) Calls(ops ...Op) []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Call
	for _, c := range f.calls {
		if len(ops) == 0 || slices.Contains(ops, c.Op) {
			out = append(out, c)
		}
	}
	return out
}

// Count returns how many calls of op were seen so far.
func (f *Faulty) Count(op Op) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[op]
}

func (f *Faulty) call(c Call) error {
	f.mu.Lock()
	f.calls = append(f.calls, c)
	f.counts[c.Op]++
	h := f.hook
	f.mu.Unlock()
	if h == nil {
		return nil
	}
	return h(c)
}

// SyncDurable is false when f is like HDFS, else the wrapped one's.
func (f *Faulty) SyncDurable() bool { return !f.hdfsLike && f.FS.SyncDurable() }

// String names the wrapped file system, marked as wrapped.
func (f *Faulty) String() string { return f.FS.String() + "#faulty" }

func (f *Faulty) Create(name string) (dfs.File, error) {
	if err := f.call(Call{Op: OpCreate, Name: name}); err != nil {
		return nil, err
	}
	file, err := f.FS.Create(name)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.writing[name] = true
	f.mu.Unlock()
	return &faultyFile{File: file, fs: f, name: name}, nil
}

func (f *Faulty) Open(name string) (dfs.Reader, error) {
	if err := f.call(Call{Op: OpOpen, Name: name}); err != nil {
		return nil, err
	}
	f.mu.Lock()
	hidden := f.hdfsLike && f.writing[name]
	f.mu.Unlock()
	if hidden {
		if _, err := f.FS.Stat(name); err != nil {
			return nil, err
		}
		return &faultyReader{Reader: emptyReader{bytes.NewReader(nil)}, fs: f, name: name}, nil
	}
	r, err := f.FS.Open(name)
	if err != nil {
		return nil, err
	}
	return &faultyReader{Reader: r, fs: f, name: name}, nil
}

func (f *Faulty) Stat(name string) (fs.FileInfo, error) {
	if err := f.call(Call{Op: OpStat, Name: name}); err != nil {
		return nil, err
	}
	return f.FS.Stat(name)
}

func (f *Faulty) ReadDir(name string) ([]fs.FileInfo, error) {
	if err := f.call(Call{Op: OpReadDir, Name: name}); err != nil {
		return nil, err
	}
	return f.FS.ReadDir(name)
}

func (f *Faulty) MkdirAll(name string) error {
	if err := f.call(Call{Op: OpMkdirAll, Name: name}); err != nil {
		return err
	}
	return f.FS.MkdirAll(name)
}

func (f *Faulty) Rename(oldname, newname string) error {
	if err := f.call(Call{Op: OpRename, Name: oldname, To: newname}); err != nil {
		return err
	}
	return f.FS.Rename(oldname, newname)
}

func (f *Faulty) Remove(name string) error {
	if err := f.call(Call{Op: OpRemove, Name: name}); err != nil {
		return err
	}
	return f.FS.Remove(name)
}

type faultyFile struct {
	dfs.File
	fs   *Faulty
	name string
}

func (w *faultyFile) Write(p []byte) (int, error) {
	if err := w.fs.call(Call{Op: OpWrite, Name: w.name}); err != nil {
		return 0, err
	}
	w.fs.mu.Lock()
	tamper := w.fs.tamper
	w.fs.mu.Unlock()
	if tamper != nil {
		n, err := w.File.Write(tamper(w.name, slices.Clone(p)))
		return min(n, len(p)), err
	}
	return w.File.Write(p)
}

func (w *faultyFile) Sync() error {
	if err := w.fs.call(Call{Op: OpSync, Name: w.name}); err != nil {
		return err
	}
	return w.File.Sync()
}

// Truncate passes the call to the wrapped file if it is a
// dfs.Truncater, and fails with errors.ErrUnsupported otherwise.
func (w *faultyFile) Truncate(size int64) error {
	if err := w.fs.call(Call{Op: OpTruncate, Name: w.name, Off: size}); err != nil {
		return err
	}
	t, ok := w.File.(dfs.Truncater)
	if !ok {
		return &fs.PathError{Op: "truncate", Path: w.name, Err: errors.ErrUnsupported}
	}
	return t.Truncate(size)
}

// Close closes the file even when the hook fails the call (the file is
// gone either way, as when a close fails on HDFS), and reports the hook's
// error first.
func (w *faultyFile) Close() error {
	err := w.fs.call(Call{Op: OpClose, Name: w.name})
	cerr := w.File.Close()
	w.fs.mu.Lock()
	delete(w.fs.writing, w.name)
	w.fs.mu.Unlock()
	if err != nil {
		return err
	}
	return cerr
}

type faultyReader struct {
	dfs.Reader
	fs   *Faulty
	name string
	off  int64 // where the next Read starts
}

func (r *faultyReader) Read(p []byte) (int, error) {
	if err := r.fs.call(Call{Op: OpRead, Name: r.name, Off: r.off}); err != nil {
		return 0, err
	}
	n, err := r.Reader.Read(p)
	r.off += int64(n)
	return n, err
}

func (r *faultyReader) ReadAt(p []byte, off int64) (int, error) {
	if err := r.fs.call(Call{Op: OpRead, Name: r.name, Off: off}); err != nil {
		return 0, err
	}
	return r.Reader.ReadAt(p, off)
}

func (r *faultyReader) Seek(off int64, whence int) (int64, error) {
	n, err := r.Reader.Seek(off, whence)
	if err == nil {
		r.off = n
	}
	return n, err
}

type emptyReader struct{ *bytes.Reader }

func (emptyReader) Close() error { return nil }
