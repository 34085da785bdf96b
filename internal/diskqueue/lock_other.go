//go:build !unix

package diskqueue

import (
	"fmt"
	"os"
)

// lockDir only creates the lock file where flock is unavailable.
func lockDir(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file %s: %w", path, err)
	}
	return f, nil
}
