package hdfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync"
	"sync/atomic"
	"time"

	"github.com/colinmarc/hdfs/v2"

	"github.com/freeway-dev/freeway/internal/backoff"
	"github.com/freeway-dev/freeway/internal/dfs"
)

// closeRetry retries a Close that the NameNode answers with ErrReplicating.
//
// colinmarc/hdfs returns ErrReplicating when every DataNode acknowledged
// the last block but the NameNode has not yet heard from enough of them
// to complete the file; the Java client retries with a doubling back-off
// (dfs.client.block.write.locateFollowingBlock.retries), and so do we.
// The retry is safe: the first call committed the last block, the next
// ones only ask whether the file is complete yet.
type closeRetry struct {
	tries   int           // calls in all, at least 1
	first   time.Duration // wait after the first ErrReplicating
	max     time.Duration // cap on one wait
	sleep   func(time.Duration)
	retries *atomic.Int64 // counts waits; may be nil
}

// defaultCloseRetry waits 50 ms, 100 ms, ... up to 2 s, about 9 s in all over
// ten calls: longer than a healthy NameNode takes to hear a block report,
// short enough that a writer gives its bucket up before its lease does.
func defaultCloseRetry(retries *atomic.Int64) closeRetry {
	return closeRetry{tries: 10, first: 50 * time.Millisecond, max: 2 * time.Second, sleep: time.Sleep, retries: retries}
}

// closeReplicating calls closeFn until it returns something other than
// ErrReplicating or the tries run out.
func (b closeRetry) closeReplicating(closeFn func() error) error {
	bo := backoff.New(b.first, b.max)
	var err error
	for i := range max(b.tries, 1) {
		if i > 0 {
			if b.retries != nil {
				b.retries.Add(1)
			}
			b.sleep(bo.Next())
		}
		err = closeFn()
		if !errors.Is(err, hdfs.ErrReplicating) {
			return err
		}
	}
	if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
		err = pe.Err // the caller names the file
	}
	return fmt.Errorf("still replicating after %d tries: %w", max(b.tries, 1), err)
}

// fileWriter is the part of *hdfs.FileWriter a writer uses; tests fake it.
type fileWriter interface {
	io.Writer
	Flush() error
	Close() error
}

// writer is a dfs.File on HDFS. Like an os.File it is used by one
// goroutine at a time.
type writer struct {
	fw     fileWriter
	path   string // absolute HDFS path, for errors
	retry  closeRetry
	closed bool
}

func (w *writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, &fs.PathError{Op: "write", Path: w.path, Err: fs.ErrClosed}
	}
	if len(p) == 0 {
		// colinmarc/hdfs would allocate a block for nothing.
		return 0, nil
	}
	n, err := w.fw.Write(p)
	if err != nil {
		return n, pathError("write", w.path, err)
	}
	return n, nil
}

// Sync sends buffered bytes to the DataNodes. It is not hflush: readers do
// not see them and they are not durable until Close (SyncDurable is
// false). It still bounds how much a Close has to send at once.
func (w *writer) Sync() error {
	if w.closed {
		return &fs.PathError{Op: "sync", Path: w.path, Err: fs.ErrClosed}
	}
	if err := w.fw.Flush(); err != nil {
		return pathError("sync", w.path, err)
	}
	return nil
}

// Close completes the file on the NameNode, after which it is visible and
// replicated. A failed Close leaves the file under construction, with the
// lease held by this client for as long as the FS stays open: remove it
// and write a new file, never reuse the name.
func (w *writer) Close() error {
	if w.closed {
		return &fs.PathError{Op: "close", Path: w.path, Err: fs.ErrClosed}
	}
	w.closed = true
	if err := w.retry.closeReplicating(w.fw.Close); err != nil {
		return pathError("close", w.path, err)
	}
	return nil
}

// reader is a dfs.Reader on HDFS.
//
// *hdfs.FileReader implements ReadAt by seeking, which moves the offset
// Read uses and races with concurrent calls; io.ReaderAt promises
// neither. The mutex and the saved offset restore both promises.
type reader struct {
	mu   sync.Mutex
	fr   *hdfs.FileReader
	path string
}

func (r *reader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, err := r.fr.Read(p)
	if endOfFile(err) {
		size := r.fr.Stat().Size()
		if pos, serr := r.fr.Seek(0, io.SeekCurrent); serr == nil && pos < size {
			return n, pathError("read", r.path, cutShort(pos, size, err))
		}
		return n, io.EOF
	}
	if err != nil {
		return n, pathError("read", r.path, readError(err))
	}
	return n, nil
}

func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if off < 0 {
		return 0, &fs.PathError{Op: "readat", Path: r.path, Err: errors.New("negative offset")}
	}
	if off >= r.fr.Stat().Size() {
		// colinmarc/hdfs refuses to seek past the end; os.File answers EOF.
		return 0, io.EOF
	}
	pos, err := r.fr.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, pathError("readat", r.path, err)
	}
	n, err := r.fr.ReadAt(p, off)
	if _, serr := r.fr.Seek(pos, io.SeekStart); serr != nil && (err == nil || endOfFile(err)) {
		err = serr
	}
	if endOfFile(err) {
		if size := r.fr.Stat().Size(); off+int64(n) < size {
			return n, pathError("readat", r.path, cutShort(off+int64(n), size, err))
		}
		return n, io.EOF
	}
	if err != nil {
		return n, pathError("readat", r.path, readError(err))
	}
	return n, nil
}

// errCutShort is a read that ended before the end of the file.
var errCutShort = errors.New("the DataNode's stream ended before the file did")

// endOfFile reports whether colinmarc/hdfs said a read reached the end:
// io.EOF or io.ErrUnexpectedEOF, bare or wrapped.
func endOfFile(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// cutShort is the error for an end of file that colinmarc/hdfs reported
// at pos of a file of size bytes. It reports both io.EOF and
// io.ErrUnexpectedEOF for a DataNode connection that ends in the middle
// of a block (the DataNode died, its last replica with it) once no other
// replica is left to read from; ReadAt turns the second into the first.
// Passed on as it is, a reader would take the rest of the file for
// missing (ptail: a published segment for truncated, and skip it), so it
// becomes an I/O error that wraps neither: the read may be tried again.
func cutShort(pos, size int64, err error) error {
	return fmt.Errorf("%w: at byte %d of %d (%v)", errCutShort, pos, size, err) //nolint:errorlint // wraps neither end (see above)
}

// checksumText is the text of colinmarc/hdfs's checksum error (v2.4.0,
// internal/transfer/block_read_stream.go: errInvalidChecksum, which is
// not exported), returned as it is after every replica failed it.
const checksumText = "invalid checksum"

// readError makes a checksum error of colinmarc/hdfs's, however it is
// wrapped, wrap dfs.ErrChecksum too; the caller names the file
// (pathError), so a PathError's own is dropped.
func readError(err error) error {
	if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
		err = pe.Err
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		if e.Error() == checksumText {
			return fmt.Errorf("%w: %w", dfs.ErrChecksum, err)
		}
	}
	return err
}

func (r *reader) Seek(offset int64, whence int) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, err := r.fr.Seek(offset, whence)
	if err != nil {
		return n, pathError("seek", r.path, err)
	}
	return n, nil
}

func (r *reader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.fr.Close(); err != nil {
		return pathError("close", r.path, err)
	}
	return nil
}
