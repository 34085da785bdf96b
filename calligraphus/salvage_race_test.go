package calligraphus

import (
	"context"
	"io/fs"
	"path"
	"slices"
	"sync"
	"testing"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
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
	local := sealedBucket(t) // writer a took cat/0 at epoch 1 and sealed it
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
	testSalvageOfSegmentChangedMeanwhile(t, "acked-by-a", func(local dfs.FS, tmp, final string) error {
		return local.Rename(tmp, final)
	}, "acked-by-a", "b-1")
}

// TestSalvageOfSegmentRemovedMeanwhile: a stale writer fenced as it
// wrote the first batch into a segment it created after the new owner
// had listed the bucket removes the segment (it holds nothing
// acknowledged); a salvage that listed it before finds it gone. Nothing
// is left to salvage: taking the bucket must not fail for it (the call
// answered TRY_LATER as a write error, said as an error).
func TestSalvageOfSegmentRemovedMeanwhile(t *testing.T) {
	testSalvageOfSegmentChangedMeanwhile(t, "refused-to-a", func(local dfs.FS, tmp, _ string) error {
		return local.Remove(tmp)
	}, "b-1")
}

// testSalvageOfSegmentChangedMeanwhile leaves a crashed segment holding
// msg, changes it by change (its temporary and its final name) right
// after a new owner lists the bucket to salvage it, has that owner
// write "b-1" and checks what readers count.
func testSalvageOfSegmentChangedMeanwhile(t *testing.T, msg string, change func(local dfs.FS, tmp, final string) error, want ...string) {
	local := sealedBucket(t)
	name := writeCrashed(t, local, "cat/0", 1, 7, []*segment.Block{{Messages: [][]byte{[]byte(msg)}}}, false)
	fsys := &afterListFS{FS: local, dir: "cat/0"}
	fsys.hook = func() {
		if err := change(local, path.Join("cat/0", dfs.TempName(name)), path.Join("cat/0", name)); err != nil {
			t.Error(err)
		}
	}
	_, co := inprocCoord(t)
	cfg := testConfig()
	cfg.ID = "wb"
	b := startServer(t, cfg, fsys, co, nil)
	mustLog(t, b.dial(t), entries("cat", "b-1"))
	b.stop()
	if got := readerView(t, local, "cat/0"); !slices.Equal(got, want) {
		t.Errorf("readers count %q, want %q", got, want)
	}
}

// beforeListFS runs hook once, right before the listing of dir that
// follows the creation of a fence intent above epoch 1 there; hook gets
// the highest epoch of the fence then.
type beforeListFS struct {
	dfs.FS
	dir  string
	once sync.Once
	hook func(top int64)
}

func (h *beforeListFS) ReadDir(name string) ([]fs.FileInfo, error) {
	if name == h.dir {
		if top, ferr := layout.FenceTop(h.FS, h.dir); ferr == nil && top > 1 {
			h.once.Do(func() { h.hook(top) })
		}
	}
	return h.FS.ReadDir(name)
}

// TestSalvageLeavesNewerOwnersSegment: a writer stalls right after its
// fence intent; meanwhile a newer owner takes the bucket and opens its
// own segment (synced: acknowledged). The stale writer resuming its take
// must salvage only older epochs' segments: publishing the newer owner's
// open segment, and removing its file, would lose what it acknowledges
// into it.
func TestSalvageLeavesNewerOwnersSegment(t *testing.T) {
	local := newLocal(t)
	if err := local.MkdirAll("cat/0"); err != nil {
		t.Fatal(err)
	}
	var newer string
	fsys := &beforeListFS{FS: local, dir: "cat/0"}
	fsys.hook = func(top int64) {
		if err := layout.WriteIntent(local, "cat/0", top+1); err != nil {
			t.Error(err)
		}
		if _, err := layout.WriteSeal(local, "cat/0", top+1, "n"); err != nil {
			t.Error(err)
		}
		newer = writeCrashed(t, local, "cat/0", top+1, 1, []*segment.Block{{Messages: [][]byte{[]byte("acked-by-newer")}}}, false)
	}
	_, co := inprocCoord(t)
	cfg := testConfig()
	cfg.ID = "wb"
	b := startServer(t, cfg, fsys, co, nil)
	rc, err := b.dial(t).Log(context.Background(), entries("cat", "b-1"))
	if err != nil {
		t.Fatal(err)
	}
	b.stop()
	if rc == scribethrift.ResultCode_OK {
		t.Errorf("the writer superseded while taking the bucket answered OK")
	}
	if newer == "" {
		t.Fatal("the newer owner was never simulated")
	}
	if _, err := local.Stat(path.Join("cat/0", dfs.TempName(newer))); err != nil {
		t.Errorf("the newer owner's open segment: %v", err)
	}
	if _, err := local.Stat(path.Join("cat/0", newer)); err == nil {
		t.Errorf("the stale writer published the newer owner's open segment %s", newer)
	}
}
