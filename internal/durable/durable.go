// Package durable makes files and directory names survive a crash of the
// machine, for the components that answer for them (the agent's queue,
// the embedded dfs): SyncData for a file's bytes, SyncDir and MkdirAll
// for names, since a file synced in a directory is lost with it unless
// the directory's own name is fsynced in its parent.
package durable

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// SyncDir fsyncs the directory dir, making the names in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", dir, err)
	}
	defer d.Close() //nolint:errcheck // opened to sync; the sync error is reported
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// MkdirAll makes the directory dir with its missing parents (none above
// top, if top is not ""), each with a durable name, syncing a parent
// with syncDir (SyncDir, or a test's). A call that finds a directory
// there takes its name for durable, so none is left without: each is
// made top down and its parent fsynced before the next is made (a full
// disk can refuse the next after one was made), and one whose parent's
// fsync failed is removed again, for a retry to make and sync it anew.
// One that another call made meanwhile gets its parent fsynced here too:
// that call may not have yet.
func MkdirAll(top, dir string, syncDir func(string) error) error {
	var missing []string
	for d := filepath.Clean(dir); d != top; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		d := missing[i]
		made := true
		if err := os.Mkdir(d, 0o755); errors.Is(err, fs.ErrExist) {
			made = false
		} else if err != nil {
			return fmt.Errorf("create directory %s: %w", d, err)
		}
		if err := syncDir(filepath.Dir(d)); err != nil {
			if made {
				_ = os.Remove(d) // best effort; the sync error is the one to report
			}
			return err
		}
	}
	return nil
}
