package auth

import (
	"crypto/sha256"
	"os"
	"time"
)

// racyWindow: a file modified less than this long ago may be rewritten
// again without its size or modification time changing (file times tick
// with the kernel's coarse clock, every few milliseconds), so its
// content is compared too until its time is older (git's "racily clean"
// entries are handled the same way).
const racyWindow = 2 * time.Second

// fileSig identifies a version of a file cheaply. A missing file has the
// zero signature.
type fileSig struct {
	size, mtimeNs int64
	ino           uint64
}

// watch tells when a set of files changed, by a stat of each (a few
// microseconds) and, while one was modified too recently for its stat to
// tell, by their content. It is not safe for concurrent use.
type watch struct {
	paths []string
	sig   []fileSig
	racy  bool
	// inUse is the content digest of the version in use, failed that of
	// the last version that did not load (not tried again).
	inUse, failed [sha256.Size]byte
	hasFailed     bool
}

func newWatch(paths ...string) *watch {
	return &watch{paths: paths, sig: make([]fileSig, len(paths))}
}

// readError is a file that could not be read: the index of its path,
// and why.
type readError struct {
	i   int
	err error
}

func (e *readError) Error() string { return e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// read reads every file and its signature; a missing or unreadable file
// is a *readError.
func (w *watch) read() (data [][]byte, sig []fileSig, err error) {
	sig = w.stat()
	data = make([][]byte, len(w.paths))
	for i, p := range w.paths {
		if p == "" {
			continue
		}
		if data[i], err = os.ReadFile(p); err != nil {
			return nil, nil, &readError{i, err}
		}
	}
	return data, sig, nil
}

func (w *watch) stat() []fileSig {
	sig := make([]fileSig, len(w.paths))
	for i, p := range w.paths {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err == nil { // follows symlinks: a swapped link is a change
			sig[i] = fileSig{size: fi.Size(), mtimeNs: fi.ModTime().UnixNano(), ino: inode(fi)}
		}
	}
	return sig
}

func digest(data [][]byte) [sha256.Size]byte {
	h := sha256.New()
	for _, d := range data {
		var n [8]byte
		for i, l := 0, len(d); i < 8; i, l = i+1, l>>8 {
			n[i] = byte(l)
		}
		h.Write(n[:])
		h.Write(d)
	}
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

func racy(sig []fileSig, now time.Time) bool {
	for _, s := range sig {
		if s.mtimeNs > now.Add(-racyWindow).UnixNano() {
			return true
		}
	}
	return false
}

// loaded records the version first loaded (data read with sig).
func (w *watch) loaded(data [][]byte, sig []fileSig) {
	w.sig, w.racy, w.inUse, w.hasFailed = sig, racy(sig, time.Now()), digest(data), false
}

// changed returns the files' content when it differs from the version in
// use and from the last version that failed to load; the caller then
// calls took or refused.
func (w *watch) changed() (data [][]byte, ok bool, err error) {
	if !w.racy && equalSigs(w.stat(), w.sig) {
		return nil, false, nil
	}
	data, sig, err := w.read()
	if err != nil {
		// A file missing or unreadable (in the middle of a swap, say):
		// the version in use stays; tried again when a file changes.
		w.sig, w.racy = w.stat(), false
		return nil, false, err
	}
	w.sig, w.racy = sig, racy(sig, time.Now())
	d := digest(data)
	if d == w.inUse || (w.hasFailed && d == w.failed) {
		return nil, false, nil
	}
	return data, true, nil
}

// took records that the content changed returned is now in use.
func (w *watch) took(data [][]byte) { w.inUse, w.hasFailed = digest(data), false }

// refused records that the content changed returned did not load.
func (w *watch) refused(data [][]byte) { w.failed, w.hasFailed = digest(data), true }

func equalSigs(a, b []fileSig) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return len(a) == len(b)
}
