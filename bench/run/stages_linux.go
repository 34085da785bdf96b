package main

import (
	"time"

	"golang.org/x/sys/unix"
)

// fileTimes returns when the file at p last changed status (a segment's
// publish: its rename) and when it was born (zero where the file system
// does not say).
func fileTimes(p string) (changed, born time.Time, ok bool) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, p, 0, unix.STATX_CTIME|unix.STATX_BTIME, &st); err != nil {
		return time.Time{}, time.Time{}, false
	}
	changed = time.Unix(st.Ctime.Sec, int64(st.Ctime.Nsec))
	if st.Mask&unix.STATX_BTIME != 0 {
		born = time.Unix(st.Btime.Sec, int64(st.Btime.Nsec))
	}
	return changed, born, true
}
