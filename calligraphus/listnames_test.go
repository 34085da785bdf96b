package calligraphus

import (
	"io/fs"
	"path"
	"slices"
	"sync"
	"testing"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
)

// readDirCounting is a local disk that records the directories listed
// whole (ReadDir: an lstat per entry), while it lists names itself
// (dfs.NameLister).
type readDirCounting struct {
	*localfs.FS
	mu       sync.Mutex
	readDirs []string
}

func (c *readDirCounting) ReadDir(name string) ([]fs.FileInfo, error) {
	c.mu.Lock()
	c.readDirs = append(c.readDirs, name)
	c.mu.Unlock()
	return c.FS.ReadDir(name)
}

// TestTakeoverListsTheBucketByNames: a writer taking a bucket (its
// epoch, the salvage of an earlier writer's unpublished segment, the
// seal) lists the bucket by names alone, never whole: on a local disk a
// bucket holds days of segments, and an lstat of each made a takeover
// of a loaded bucket last a minute. The salvage still publishes the
// crashed segment's entries.
func TestTakeoverListsTheBucketByNames(t *testing.T) {
	fsys := &readDirCounting{FS: newLocal(t)}
	_, co := inprocCoord(t)
	dir := "cat/0"
	if err := dfs.WriteFile(fsys, path.Join(dir, layout.SegmentName(5, 1)), segment.AppendBlock([]byte(segment.Magic), &segment.Block{Messages: [][]byte{[]byte("old")}})); err != nil {
		t.Fatal(err)
	}
	writeCrashed(t, fsys, dir, 5, 2, []*segment.Block{{ArrivalMs: 1, Messages: [][]byte{[]byte("acked")}}}, true)
	s := startServer(t, testConfig(), fsys, co, nil)
	cl := s.dial(t)
	mustLog(t, cl, entries("cat", "new"))
	s.stop()
	fsys.mu.Lock()
	listed := slices.Clone(fsys.readDirs)
	fsys.mu.Unlock()
	if slices.Contains(listed, dir) {
		t.Errorf("the bucket was listed whole (an lstat per name) in its takeover: %q", listed)
	}
	if got := msgs(scan(t, fsys, dir)); !slices.Equal(got, []string{"old", "acked", "new"}) {
		t.Errorf("after the takeover the bucket holds %q, want old, acked (salvaged), new", got)
	}
}
