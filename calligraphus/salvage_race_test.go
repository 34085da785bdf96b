package calligraphus

import (
	"io/fs"
	"path"
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

// afterListFS runs hook once, right after the listing of dir that follows
// the creation of a fence intent above epoch 1 there.
type afterListFS struct {
	dfs.FS
	dir  string
	once sync.Once
	hook func()
}

func (h *afterListFS) ReadDir(name string) ([]fs.FileInfo, error) {
	infos, err := h.FS.ReadDir(name)
	if name == h.dir && err == nil {
		if top, ferr := layout.FenceTop(h.FS, h.dir); ferr == nil && top > 1 {
			h.once.Do(h.hook)
		}
	}
	return infos, err
}

// TestSalvageOfSegmentPublishedMeanwhile: the stale writer publishes its
// segment (a rename, as at its age tick) after the new owner listed it
// but before the salvage got to it. Nothing is left to salvage; taking
// the bucket must not fail for it (a failed take answers TRY_LATER and
// leaves an unsealed intent that holds readers back).
func TestSalvageOfSegmentPublishedMeanwhile(t *testing.T) {
	local := newLocal(t)
	if err := local.MkdirAll("cat/0"); err != nil {
		t.Fatal(err)
	}
	if err := layout.WriteIntent(local, "cat/0", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := layout.WriteSeal(local, "cat/0", 1, "a"); err != nil {
		t.Fatal(err)
	}
	name := writeCrashed(t, local, "cat/0", 1, 7, []*segment.Block{{Messages: [][]byte{[]byte("acked-by-a")}}}, false)
	fsys := &afterListFS{FS: local, dir: "cat/0"}
	fsys.hook = func() {
		if err := local.Rename(path.Join("cat/0", dfs.TempName(name)), path.Join("cat/0", name)); err != nil {
			t.Error(err)
		}
	}
	_, co := inprocCoord(t)
	cfg := testConfig()
	cfg.ID = "wb"
	b := startServer(t, cfg, fsys, co, nil)
	mustLog(t, b.dial(t), entries("cat", "b-1"))
	b.stop()
	if got := readerView(t, local, "cat/0"); !slices.Equal(got, []string{"acked-by-a", "b-1"}) {
		t.Errorf("readers count %q, want [acked-by-a b-1]", got)
	}
}
