package calligraphus

import (
	"path"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
)

// renameHookFS runs hook once, before the first rename of a salvage copy
// (hook's own renames go through).
type renameHookFS struct {
	dfs.FS
	fired atomic.Bool
	hook  func(copyName string)
}

func (h *renameHookFS) Rename(from, to string) error {
	if strings.HasSuffix(from, layout.SalvageSuffix) && h.fired.CompareAndSwap(false, true) {
		h.hook(from)
	}
	return h.FS.Rename(from, to)
}

// TestSalvageCopyPerTaker: two takers salvage the same older segment at
// once, the superseded one (a lower epoch) running its salvage while the
// newer one's copy waits to be renamed. Each writes its own copy, so the
// newer one's take succeeds (OK, not TRY_LATER) and the segment is
// published once; the copies of a crashed taker and of the code before
// are removed by the next take. The code before gave both takers one
// copy name: the superseded one removed and renamed away the newer one's
// copy, whose take failed.
func TestSalvageCopyPerTaker(t *testing.T) {
	local := sealedBucket(t)
	seg := writeCrashed(t, local, "cat/0", 1, 7, []*segment.Block{{Messages: [][]byte{[]byte("acked-by-a")}}}, false)
	// Leftovers: a crashed taker's copy (epoch 1) and one of the code
	// before, of another old segment.
	crashed, legacy := salvageName(path.Join("cat/0", seg), 1), path.Join("cat/0", layout.SalvageSegment(layout.SegmentName(1, 3)))
	for _, p := range []string{crashed, legacy} {
		if err := dfs.WriteFile(local, p, []byte("partial")); err != nil {
			t.Fatal(err)
		}
	}
	var c *Calligraphus
	fsys := &renameHookFS{FS: local}
	fsys.hook = func(copyName string) {
		_, taker, ok := parseSalvageName(path.Base(copyName))
		if !ok {
			t.Errorf("salvage copy %s is not named by its taker", copyName)
			return
		}
		// The superseded taker, at the same point of its own salvage.
		stale := newBucketWriter(c, bucketID{"cat", 0}, nil)
		stale.log = c.log
		if err := stale.salvage(path.Join("cat/0", layout.TempSegment(seg)), path.Join("cat/0", seg), taker-1); err != nil {
			t.Logf("the superseded taker's salvage: %v", err)
		}
	}
	_, co := inprocCoord(t)
	cfg := testConfig()
	cfg.ID = "wb"
	b := startServerWith(t, cfg, fsys, co, nil, func(cc *Calligraphus) { c = cc })
	mustLog(t, b.dial(t), entries("cat", "b-1"))
	b.stop()
	if got := readerView(t, local, "cat/0"); !slices.Equal(got, []string{"acked-by-a", "b-1"}) {
		t.Errorf("readers count %q, want [acked-by-a b-1]", got)
	}
	infos, err := local.ReadDir("cat/0")
	if err != nil {
		t.Fatal(err)
	}
	for _, fi := range infos {
		if strings.HasSuffix(fi.Name(), layout.SalvageSuffix) || strings.HasSuffix(fi.Name(), layout.TempSuffix) {
			t.Errorf("left over: %s", fi.Name())
		}
	}
}

// TestSalvageName: a copy's name is hidden, names its segment and taker,
// and is not taken for a segment or the code before's copy.
func TestSalvageName(t *testing.T) {
	seg := layout.SegmentName(3, 9)
	name := path.Base(salvageName(path.Join("cat/0", seg), 0x2a))
	if !dfs.Hidden(name) {
		t.Errorf("%s is not hidden", name)
	}
	if s, e, ok := parseSalvageName(name); !ok || s != seg || e != 0x2a {
		t.Errorf("parseSalvageName(%s) = %s %d %v", name, s, e, ok)
	}
	if _, ok := layout.ParseSalvageSegment(name); ok {
		t.Errorf("%s parses as the code before's copy", name)
	}
	if _, ok := layout.ParseTempSegment(name); ok {
		t.Errorf("%s parses as an open segment", name)
	}
	for _, bad := range []string{layout.SalvageSegment(seg), "." + seg + ".zz" + layout.SalvageSuffix, "." + seg + ".000000000000002a", seg} {
		if _, _, ok := parseSalvageName(bad); ok {
			t.Errorf("parseSalvageName(%s) took it", bad)
		}
	}
}
