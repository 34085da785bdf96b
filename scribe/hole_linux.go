package scribe

import (
	"errors"
	"os"
	"syscall"
)

// seekData returns the offset of the first data of f at or after at,
// passing a sparse hole without reading it (lseek's SEEK_DATA): the hole
// a writer without O_APPEND leaves grows by what it writes between two
// truncations. ok is false where the file system cannot tell.
func seekData(f *os.File, at int64) (off int64, ok bool) {
	const seekData = 3 // SEEK_DATA
	off, err := f.Seek(at, seekData)
	if errors.Is(err, syscall.ENXIO) {
		// No data after at: the hole runs to the end.
		if fi, err := f.Stat(); err == nil {
			return fi.Size(), true
		}
	}
	return off, err == nil
}
