package calligraphus

import (
	"io/fs"
	"slices"
	"sync"
	"testing"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
)

// hookedFS runs hook once, at the first listing of the directory at.
type hookedFS struct {
	dfs.FS
	at   string
	once sync.Once
	hook func()
}

func (h *hookedFS) ReadDir(name string) ([]fs.FileInfo, error) {
	if name == h.at {
		h.once.Do(h.hook)
	}
	return h.FS.ReadDir(name)
}

// TestSalvageSeesSegmentSyncedBeforeIntent: a stale writer (epoch 1, on a
// local disk where a sync acknowledges) creates and syncs a new segment
// after the new owner listed the bucket but before the new owner's fence
// intent exists. Its FenceTop check passes, so it answered OK for those
// entries; the new owner must salvage them, or they are lost.
func TestSalvageSeesSegmentSyncedBeforeIntent(t *testing.T) {
	local := newLocal(t)
	if err := local.MkdirAll("cat/0"); err != nil {
		t.Fatal(err)
	}
	// Writer A took the bucket at epoch 1 and sealed it.
	if err := layout.WriteIntent(local, "cat/0", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := layout.WriteSeal(local, "cat/0", 1, "a"); err != nil {
		t.Fatal(err)
	}
	fsys := &hookedFS{FS: local, at: layout.FenceDir("cat/0")}
	fsys.hook = func() {
		// Between B's listing of the bucket and its intent: A's new
		// segment, synced (so acknowledged) with no newer intent there.
		writeCrashed(t, local, "cat/0", 1, 7, []*segment.Block{{Messages: [][]byte{[]byte("acked-by-a")}}}, false)
	}
	_, co := inprocCoord(t)
	cfg := testConfig()
	cfg.ID = "wb"
	b := startServer(t, cfg, fsys, co, nil)
	mustLog(t, b.dial(t), entries("cat", "b-1"))
	b.stop()
	got := readerView(t, local, "cat/0")
	if !slices.Contains(got, "acked-by-a") {
		t.Errorf("readers count %q: the entry the stale writer acknowledged is lost", got)
	}
}
