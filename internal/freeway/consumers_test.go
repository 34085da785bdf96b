package freeway

import (
	"path/filepath"
	"testing"

	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/retention"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/boltstore"
)

// TestCopierHoldsAMergeWithoutLast: retention on a node without the
// copier's configuration holds a bucket at the copier's progress once the
// copier has recorded some there. A merge whose first period file ended
// inside the bucket's first segment has recorded its position, and no
// "last" yet (no segment is read to its end): it holds every segment of
// the bucket. A bucket without progress is held by nothing.
func TestCopierHoldsAMergeWithoutLast(t *testing.T) {
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	p := &Process{cfg: DefaultConfig()}
	var c *retention.Consumer
	for _, cons := range p.consumers(st) {
		if cons.Name == Copier {
			c = &cons
		}
	}
	if c == nil || !c.Reads("access", 0) {
		t.Fatalf("no copier consumer reading access/0: %+v", c)
	}
	ctx := t.Context()
	if m, err := c.Mark(ctx, "access", 0); err != nil || !m.None {
		t.Fatalf("bucket without progress: mark %+v, %v; want none", m, err)
	}

	// What the merge records after its first period file (saveMerge).
	dir, first := layout.BucketDir("access", 0), layout.SegmentName(1, 1)
	merge := `{"pos":{"segment":"` + first + `","offset":4096},"open_ms":1764720000000}`
	if err := st.Put(ctx, "copier", []store.Cell{
		{Row: dir, Column: "merge", Timestamp: 1, Value: []byte(merge)},
		{Row: dir, Column: "last", Timestamp: 1, Value: []byte{}},
		{Row: dir, Column: "owner", Timestamp: 1, Value: []byte("c1@1")},
	}); err != nil {
		t.Fatal(err)
	}
	m, err := c.Mark(ctx, "access", 0)
	if err != nil || m.None || m.Past(first) {
		t.Fatalf("merge at %s@4096 without a last segment: mark %+v, %v; want %s held", first, m, err, first)
	}
}
