package localfs

import (
	"io/fs"

	"golang.org/x/sys/unix"

	"github.com/freeway-dev/freeway/internal/dfs"
)

var _ dfs.BuffersWriter = (*writer)(nil)

// maxIovecs is the most buffers one writev takes (IOV_MAX on Linux).
const maxIovecs = 1024

// WriteBuffers writes bufs in order by writev, up to maxIovecs buffers a
// call, so that a batch of several requests is one system call rather
// than one each (dfs.BuffersWriter). A short write (a full disk) is
// finished by Write, which reports the error that stopped it.
func (w *writer) WriteBuffers(bufs [][]byte) (int64, error) {
	rc, err := w.File.SyscallConn()
	if err != nil {
		return 0, err
	}
	var total int64
	for len(bufs) > 0 {
		batch := bufs[:min(len(bufs), maxIovecs)]
		bufs = bufs[len(batch):]
		var n int
		var werr error
		if err := rc.Write(func(fd uintptr) bool {
			for {
				n, werr = unix.Writev(int(fd), batch)
				if werr != unix.EINTR {
					return true
				}
			}
		}); err != nil {
			return total, err
		}
		if werr != nil {
			return total, &fs.PathError{Op: "write", Path: w.Name(), Err: werr}
		}
		total += int64(n)
		// Whatever writev left of the batch, from where it stopped.
		for _, b := range batch {
			if n >= len(b) {
				n -= len(b)
				continue
			}
			m, err := w.File.Write(b[n:])
			total += int64(m)
			if err != nil {
				return total, err
			}
			n = 0
		}
	}
	return total, nil
}
