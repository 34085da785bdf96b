//go:build unix

package diskqueue

import (
	"fmt"
	"os"
	"syscall"
)

// lockDir takes an exclusive flock on dir/LOCK so that two processes never
// share a queue; the kernel releases it if the process dies.
func lockDir(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("lock %s (is another agent using this queue directory?): %w", path, err)
	}
	return f, nil
}
