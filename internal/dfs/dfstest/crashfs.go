package dfstest

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/freeway-dev/freeway/internal/dfs"
)

// CrashFS is an in-memory dfs.FS with SyncDurable true (unless LikeHDFS)
// that keeps, beside
// what is written and named, what a crash of the machine would keep, so
// that a test can take, before any change to the file system, the images
// a crash at that moment leaves (Snapshot): a killed process (every byte
// written, every name as it is) and a power loss (each file's bytes as
// its last Sync, Close or Truncate left them; each directory's names as
// its last directory sync left them).
//
// Durability follows the dfs contract as localfs gives it, which is the
// SyncDurable implementation: a file's Sync (and Close, and Truncate)
// makes its bytes durable and, the first time, the names of its
// directory; Create and MkdirAll sync the parent of every directory they
// make; Rename syncs the new name's directory. Remove syncs nothing: a
// removed name comes back after a power loss unless a later sync of its
// directory made the removal durable. A directory sync makes every name
// then in the directory durable, not only the one it was made for, as a
// real directory fsync does.
//
// Several processes may share one: each uses a view of its own (As),
// whose calls the hook and the fault see with its name (Call.Proc).
type CrashFS struct {
	*crashState
	proc string // the process whose view this is (As); "" for none
}

// crashState is what the views of a CrashFS share.
type crashState struct {
	mu   sync.Mutex
	root *memNode
	ops  int
	hook func(n int, c Call, s *Snapshot)
	// fault, if set, may fail a changing call: it then changes nothing,
	// unless the error wraps ErrApplied.
	fault func(n int, c Call) error
	hdfs  bool // LikeHDFS
}

// As returns the view of f that the process proc uses: the same files,
// and every call it makes is seen by the hook and the fault with Proc
// set to proc. So a fault can kill one process of several sharing a
// dfs (fail its calls from one on) and no other's, in the same step
// as the call it is decided at.
func (f *CrashFS) As(proc string) *CrashFS {
	return &CrashFS{crashState: f.crashState, proc: proc}
}

// LikeHDFS makes f durable as HDFS is (see package dfs), and returns it:
// SyncDurable is false, a Sync makes nothing durable, and a crash of the
// writing process leaves of a file it had not closed any prefix of what
// it wrote (KilledHDFS). Call it before f is used.
func (f *CrashFS) LikeHDFS() *CrashFS {
	f.hdfs = true
	return f
}

var (
	_ dfs.FS            = (*CrashFS)(nil)
	_ dfs.NameLister    = (*CrashFS)(nil)
	_ dfs.Truncater     = (*memFile)(nil)
	_ dfs.BuffersWriter = (*memFile)(nil)
)

type memNode struct {
	dir      bool
	children map[string]*memNode // a directory's names now
	durable  map[string]*memNode // a directory's names at its last sync
	data     []byte              // a file's bytes written
	synced   []byte              // a file's bytes at its last sync
	open     bool                // a file being written: not closed yet
	mod      time.Time
}

func newDir() *memNode {
	return &memNode{dir: true, children: map[string]*memNode{}, durable: map[string]*memNode{}, mod: time.Now()}
}

// NewCrashFS returns an empty file system.
func NewCrashFS() *CrashFS { return &CrashFS{crashState: &crashState{root: newDir()}} }

// SetHook sets a function called before every call that changes the file
// system (create, mkdirall, rename, remove, write, sync, close, truncate),
// with the number of such calls before it and a snapshot of the state
// the call is about to change. It runs with the file system locked: it
// must not call it.
func (f *CrashFS) SetHook(h func(n int, c Call, s *Snapshot)) {
	f.mu.Lock()
	f.hook = h
	f.mu.Unlock()
}

// SetFault sets a function called before every call that changes the
// file system, after the hook, with the same number: an error it returns
// fails the call, which then changes nothing (a Close that fails closes
// the file all the same, with nothing synced), unless it wraps
// ErrApplied: then the call does what it does and returns the error
// all the same (an fsync that reports an I/O error, an HDFS call whose
// answer was lost after the NameNode applied it). It runs with the file
// system locked.
func (f *CrashFS) SetFault(h func(n int, c Call) error) {
	f.mu.Lock()
	f.fault = h
	f.mu.Unlock()
}

// ErrApplied, wrapped by an error of a fault (SetFault), makes the call
// fail after it took effect.
var ErrApplied = errors.New("the call took effect")

// ErrShort, wrapped by an error of a fault (SetFault), makes a Write
// (or WriteBuffers) write the first half of its bytes, then fail with
// it, as a write that fills the disk does; any other call fails whole.
var ErrShort = errors.New("short write")

// skip reports whether a call the fault failed with err does nothing.
func skip(err error) bool { return err != nil && !errors.Is(err, ErrApplied) }

// short is how much of p a write the fault failed with err writes: half
// for ErrShort, else all of it (then skip decides).
func short(err error, p []byte) []byte {
	if errors.Is(err, ErrShort) {
		return p[:len(p)/2]
	}
	return p
}

// Ops returns the number of calls that changed the file system so far.
func (f *CrashFS) Ops() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ops
}

// before counts a changing call and runs the hook, then the fault; f.mu
// is held.
func (f *CrashFS) before(c Call) error {
	c.Proc = f.proc
	n := f.ops
	f.ops++
	if f.hook != nil {
		f.hook(n, c, f.snapshotLocked())
	}
	if f.fault != nil {
		return f.fault(n, c)
	}
	return nil
}

// Snapshot returns the state as it is now.
func (f *CrashFS) Snapshot() *Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.snapshotLocked()
}

func (f *CrashFS) snapshotLocked() *Snapshot {
	seen := map[*memNode]*memNode{}
	var clone func(n *memNode) *memNode
	clone = func(n *memNode) *memNode {
		if c, ok := seen[n]; ok {
			return c
		}
		c := &memNode{dir: n.dir, mod: n.mod, open: n.open}
		seen[n] = c
		if n.dir {
			c.children = make(map[string]*memNode, len(n.children))
			c.durable = make(map[string]*memNode, len(n.durable))
			for k, v := range n.children {
				c.children[k] = clone(v)
			}
			for k, v := range n.durable {
				c.durable[k] = clone(v)
			}
		} else {
			c.data = slices.Clone(n.data)
			c.synced = slices.Clone(n.synced)
		}
		return c
	}
	return &Snapshot{root: clone(f.root)}
}

// Snapshot is the state of a CrashFS at one moment, from which the images
// of a crash then are made.
type Snapshot struct {
	root *memNode
}

// Image is what a crash leaves: the files by path with their bytes, and
// the directories.
type Image struct {
	Files map[string][]byte
	Dirs  map[string]bool
}

// Killed is the image a killed process leaves: everything written.
func (s *Snapshot) Killed() Image {
	img := Image{Files: map[string][]byte{}, Dirs: map[string]bool{}}
	var walk func(n *memNode, p string)
	walk = func(n *memNode, p string) {
		for name, c := range n.children {
			cp := path.Join(p, name)
			if c.dir {
				img.Dirs[cp] = true
				walk(c, cp)
			} else {
				img.Files[cp] = slices.Clone(c.data)
			}
		}
	}
	walk(s.root, "")
	return img
}

// KilledHDFS is the image a killed process leaves on HDFS: the files it
// closed whole, and of each it was writing a prefix (random: what the
// DataNodes had when the NameNode recovered the file's lease).
func (s *Snapshot) KilledHDFS(rng *rand.Rand) Image {
	img := s.Killed()
	var walk func(n *memNode, p string)
	walk = func(n *memNode, p string) {
		for name, c := range n.children {
			cp := path.Join(p, name)
			if c.dir {
				walk(c, cp)
			} else if c.open {
				img.Files[cp] = img.Files[cp][:rng.IntN(len(c.data)+1)]
			}
		}
	}
	walk(s.root, "")
	return img
}

// PowerLoss is the image a power loss leaves: the names each directory's
// last sync made durable, with each file's bytes at its last sync. With
// a rng, each file of it also keeps a prefix (random, perhaps empty or
// whole) of what was written to it since that sync: a torn write whose
// first bytes reached the disk.
func (s *Snapshot) PowerLoss(rng *rand.Rand) Image {
	img := Image{Files: map[string][]byte{}, Dirs: map[string]bool{}}
	var walk func(n *memNode, p string)
	walk = func(n *memNode, p string) {
		for name, c := range n.durable {
			cp := path.Join(p, name)
			if c.dir {
				img.Dirs[cp] = true
				walk(c, cp)
				continue
			}
			b := slices.Clone(c.synced)
			if rng != nil && len(c.data) > len(c.synced) && bytes.HasPrefix(c.data, c.synced) {
				b = append(b, c.data[len(c.synced):len(c.synced)+rng.IntN(len(c.data)-len(c.synced)+1)]...)
			}
			img.Files[cp] = b
		}
	}
	walk(s.root, "")
	return img
}

// Torn is the image of a power loss that tore the writes since each
// file's last sync: the file's size is anywhere from its synced size to
// its written one, and each 512-byte sector past the synced bytes holds
// either what was written there or zeros (a sector that never reached the
// disk, in a file the journal extended).
func (s *Snapshot) Torn(rng *rand.Rand) Image {
	img := s.PowerLoss(nil)
	var walk func(n *memNode, p string)
	walk = func(n *memNode, p string) {
		for name, c := range n.durable {
			cp := path.Join(p, name)
			if c.dir {
				walk(c, cp)
				continue
			}
			if len(c.data) <= len(c.synced) || !bytes.HasPrefix(c.data, c.synced) {
				continue
			}
			size := len(c.synced) + rng.IntN(len(c.data)-len(c.synced)+1)
			b := slices.Clone(c.data[:size])
			for off := len(c.synced); off < size; {
				end := min(size, (off/512+1)*512)
				if rng.IntN(2) == 0 {
					clear(b[off:end])
				}
				off = end
			}
			img.Files[cp] = b
		}
	}
	walk(s.root, "")
	return img
}

// NewCrashFSFrom returns a file system holding img, all of it durable: a
// machine rebooted after the crash.
func NewCrashFSFrom(img Image) *CrashFS {
	f := NewCrashFS()
	dirs := make([]string, 0, len(img.Dirs))
	for d := range img.Dirs {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	for _, d := range dirs {
		f.mkdirs(d)
	}
	for p, b := range img.Files {
		parent := f.mkdirs(path.Dir(p))
		parent.children[path.Base(p)] = &memNode{data: slices.Clone(b), synced: slices.Clone(b), mod: time.Now()}
	}
	var syncAll func(n *memNode)
	syncAll = func(n *memNode) {
		n.durable = make(map[string]*memNode, len(n.children))
		for k, v := range n.children {
			n.durable[k] = v
			if v.dir {
				syncAll(v)
			}
		}
	}
	syncAll(f.root)
	return f
}

// mkdirs makes the directory p and its parents, without syncs (for
// NewCrashFSFrom).
func (f *CrashFS) mkdirs(p string) *memNode {
	n := f.root
	if p == "." || p == "" {
		return n
	}
	for _, el := range strings.Split(p, "/") {
		c, ok := n.children[el]
		if !ok {
			c = newDir()
			n.children[el] = c
		}
		n = c
	}
	return n
}

func clean(op, name string) (string, error) {
	if name == "" {
		name = "."
	}
	if !fs.ValidPath(name) {
		return "", &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	return name, nil
}

// lookup finds the node of name; f.mu is held.
// find cleans name and looks it up, with fs.ErrNotExist for op when it
// is not there; f.mu is held.
func (f *CrashFS) find(op, name string) (string, *memNode, error) {
	name, err := clean(op, name)
	if err != nil {
		return "", nil, err
	}
	n, ok := f.lookup(name)
	if !ok {
		return "", nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
	}
	return name, n, nil
}

func (f *CrashFS) lookup(name string) (*memNode, bool) {
	n := f.root
	if name == "." {
		return n, true
	}
	for _, el := range strings.Split(name, "/") {
		if !n.dir {
			return nil, false
		}
		c, ok := n.children[el]
		if !ok {
			return nil, false
		}
		n = c
	}
	return n, true
}

// syncDir makes the names now in dir durable; f.mu is held.
func syncDir(dir *memNode) {
	dir.durable = make(map[string]*memNode, len(dir.children))
	for k, v := range dir.children {
		dir.durable[k] = v
	}
}

// mkdirAll makes the directory name and its missing parents, syncing the
// parent of each it makes; f.mu is held.
func (f *CrashFS) mkdirAll(op, name string) (*memNode, error) {
	n := f.root
	if name == "." {
		return n, nil
	}
	for _, el := range strings.Split(name, "/") {
		c, ok := n.children[el]
		if !ok {
			c = newDir()
			n.children[el] = c
			syncDir(n)
		} else if !c.dir {
			return nil, &fs.PathError{Op: op, Path: name, Err: fmt.Errorf("%s is not a directory: %w", el, fs.ErrExist)}
		}
		n = c
	}
	return n, nil
}

func (f *CrashFS) Create(name string) (dfs.File, error) {
	name, err := clean("create", name)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	ferr := f.before(Call{Op: OpCreate, Name: name})
	if skip(ferr) {
		return nil, ferr
	}
	if _, ok := f.lookup(name); ok || name == "." {
		return nil, &fs.PathError{Op: "create", Path: name, Err: fs.ErrExist}
	}
	dir, err := f.mkdirAll("create", path.Dir(name))
	if err != nil {
		return nil, err
	}
	n := &memNode{mod: time.Now(), open: true}
	dir.children[path.Base(name)] = n
	if ferr != nil {
		return nil, ferr // made, and not the caller's to write
	}
	return &memFile{fs: f, name: name, node: n, dir: dir}, nil
}

func (f *CrashFS) Open(name string) (dfs.Reader, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	name, n, err := f.find("open", name)
	if err != nil {
		return nil, err
	}
	if n.dir {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fmt.Errorf("is a directory")}
	}
	return memReader{bytes.NewReader(slices.Clone(n.data))}, nil
}

type memReader struct{ *bytes.Reader }

func (memReader) Close() error { return nil }

type memInfo struct {
	name string
	size int64
	dir  bool
	mod  time.Time
}

func (i memInfo) Name() string { return i.name }
func (i memInfo) Size() int64  { return i.size }
func (i memInfo) Mode() fs.FileMode {
	if i.dir {
		return fs.ModeDir | 0o755
	}
	return 0o644
}
func (i memInfo) ModTime() time.Time { return i.mod }
func (i memInfo) IsDir() bool        { return i.dir }
func (i memInfo) Sys() any           { return nil }

func info(name string, n *memNode) memInfo {
	return memInfo{name: path.Base(name), size: int64(len(n.data)), dir: n.dir, mod: n.mod}
}

func (f *CrashFS) Stat(name string) (fs.FileInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	name, n, err := f.find("stat", name)
	if err != nil {
		return nil, err
	}
	return info(name, n), nil
}

func (f *CrashFS) ReadDir(name string) ([]fs.FileInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	name, n, err := f.find("readdir", name)
	if err != nil {
		return nil, err
	}
	if !n.dir {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: fmt.Errorf("not a directory")}
	}
	out := make([]fs.FileInfo, 0, len(n.children))
	for k, c := range n.children {
		out = append(out, info(k, c))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}

func (f *CrashFS) ReadDirNames(name string) ([]string, error) {
	infos, err := f.ReadDir(name)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(infos))
	for i, fi := range infos {
		names[i] = fi.Name()
	}
	return names, nil
}

func (f *CrashFS) MkdirAll(name string) error {
	name, err := clean("mkdir", name)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	ferr := f.before(Call{Op: OpMkdirAll, Name: name})
	if skip(ferr) {
		return ferr
	}
	if _, err = f.mkdirAll("mkdir", name); err != nil {
		return err
	}
	return ferr
}

func (f *CrashFS) Rename(oldname, newname string) error {
	oldname, err := clean("rename", oldname)
	if err != nil {
		return err
	}
	newname, err = clean("rename", newname)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	ferr := f.before(Call{Op: OpRename, Name: oldname, To: newname})
	if skip(ferr) {
		return ferr
	}
	n, ok := f.lookup(oldname)
	if !ok || oldname == "." {
		return &fs.PathError{Op: "rename", Path: oldname, Err: fs.ErrNotExist}
	}
	if m, ok := f.lookup(newname); ok && m.dir {
		return &fs.PathError{Op: "rename", Path: newname, Err: fs.ErrExist}
	}
	to, ok := f.lookup(path.Dir(newname))
	if !ok || !to.dir {
		return &fs.PathError{Op: "rename", Path: newname, Err: fs.ErrNotExist}
	}
	from, _ := f.lookup(path.Dir(oldname))
	delete(from.children, path.Base(oldname))
	to.children[path.Base(newname)] = n
	syncDir(to)
	return ferr
}

func (f *CrashFS) Remove(name string) error {
	name, err := clean("remove", name)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	ferr := f.before(Call{Op: OpRemove, Name: name})
	if skip(ferr) {
		return ferr
	}
	n, ok := f.lookup(name)
	if !ok || name == "." {
		return &fs.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
	}
	if n.dir && len(n.children) > 0 {
		return &fs.PathError{Op: "remove", Path: name, Err: fmt.Errorf("directory not empty")}
	}
	parent, _ := f.lookup(path.Dir(name))
	delete(parent.children, path.Base(name))
	return ferr
}

func (f *CrashFS) SyncDurable() bool { return !f.hdfs }
func (f *CrashFS) String() string    { return "mem://crash" }
func (f *CrashFS) Close() error      { return nil }

// memFile is a file of a CrashFS being written.
type memFile struct {
	fs     *CrashFS
	name   string
	node   *memNode
	dir    *memNode // synced at the first Sync, then nil
	closed bool
}

func (w *memFile) Write(p []byte) (int, error) {
	w.fs.mu.Lock()
	defer w.fs.mu.Unlock()
	if w.closed {
		return 0, fs.ErrClosed
	}
	ferr := w.fs.before(Call{Op: OpWrite, Name: w.name})
	p = short(ferr, p)
	if skip(ferr) && !errors.Is(ferr, ErrShort) {
		return 0, ferr
	}
	w.node.data = append(w.node.data, p...)
	w.node.mod = time.Now()
	return len(p), ferr
}

// WriteBuffers is one call, as a local file's writev is.
func (w *memFile) WriteBuffers(bufs [][]byte) (int64, error) {
	w.fs.mu.Lock()
	defer w.fs.mu.Unlock()
	if w.closed {
		return 0, fs.ErrClosed
	}
	ferr := w.fs.before(Call{Op: OpWrite, Name: w.name})
	if errors.Is(ferr, ErrShort) {
		p := short(ferr, bytes.Join(bufs, nil))
		w.node.data = append(w.node.data, p...)
		return int64(len(p)), ferr
	}
	if skip(ferr) {
		return 0, ferr
	}
	var n int64
	for _, b := range bufs {
		w.node.data = append(w.node.data, b...)
		n += int64(len(b))
	}
	w.node.mod = time.Now()
	return n, ferr
}

func (w *memFile) syncLocked() {
	w.node.synced = slices.Clone(w.node.data)
	if w.dir != nil {
		syncDir(w.dir)
		w.dir = nil
	}
}

func (w *memFile) Sync() error {
	w.fs.mu.Lock()
	defer w.fs.mu.Unlock()
	if w.closed {
		return fs.ErrClosed
	}
	ferr := w.fs.before(Call{Op: OpSync, Name: w.name})
	if skip(ferr) {
		return ferr
	}
	if !w.fs.hdfs {
		w.syncLocked()
	}
	return ferr
}

func (w *memFile) Truncate(size int64) error {
	w.fs.mu.Lock()
	defer w.fs.mu.Unlock()
	if w.closed {
		return fs.ErrClosed
	}
	ferr := w.fs.before(Call{Op: OpTruncate, Name: w.name, Off: size})
	if skip(ferr) {
		return ferr
	}
	if size < int64(len(w.node.data)) {
		w.node.data = w.node.data[:size]
	} else {
		w.node.data = append(w.node.data, make([]byte, size-int64(len(w.node.data)))...)
	}
	w.syncLocked()
	return ferr
}

func (w *memFile) Close() error {
	w.fs.mu.Lock()
	defer w.fs.mu.Unlock()
	if w.closed {
		return fs.ErrClosed
	}
	w.closed = true
	ferr := w.fs.before(Call{Op: OpClose, Name: w.name})
	if skip(ferr) {
		return ferr
	}
	w.node.open = false
	w.syncLocked()
	return ferr
}
