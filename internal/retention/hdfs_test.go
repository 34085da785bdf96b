package retention

import (
	"crypto/rand"
	"fmt"
	"log/slog"
	"path"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/hdfs"
	"github.com/freeway-dev/freeway/internal/enginetest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
)

// TestHDFSSteadyLoad: retention on a real HDFS root under a steady
// publish: segments go once consumed and old (by the NameNode's clock,
// against a retention clock set ahead), each bucket keeps a contiguous
// run after its mark, and the count stays flat.
func TestHDFSSteadyLoad(t *testing.T) {
	addr := enginetest.Addr(t, enginetest.HDFS)
	var b [8]byte
	rand.Read(b[:])
	name := fmt.Sprintf("retention-%x", b)
	fsys, err := hdfs.Open(fmt.Sprintf("hdfs://%s/freeway-test/%s?io_timeout=30s", addr, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, bk := range []int{0, 1} {
			dir := layout.BucketDir("access", bk)
			infos, _ := fsys.ReadDir(dir)
			for _, fi := range infos {
				fsys.Remove(path.Join(dir, fi.Name()))
			}
			fsys.Remove(dir)
		}
		fsys.Remove("access")
		fsys.Close()
		parent, err := hdfs.Open(fmt.Sprintf("hdfs://%s/freeway-test", addr))
		if err == nil {
			parent.Remove(name)
			parent.Close()
		}
	})
	e := newEnv(t)
	e.fs = fsys
	e.now = time.Now().Add(time.Hour) // every segment is old enough
	reg := prometheus.NewRegistry()
	s := e.hub.Session()
	defer s.Close()
	r, err := New(Config{After: time.Minute, Interval: time.Second, ID: "hdfs"}, Deps{
		Common: component.Common{Log: slog.New(slog.DiscardHandler), Metrics: reg, Now: e.clock},
		FS:     fsys, Coord: s, Consumers: e.consumers(),
	})
	if err != nil {
		t.Fatal(err)
	}
	n := &node{r, reg}
	seq := uint64(0)
	var counts []int
	for range 8 {
		for range 5 {
			seq++
			for bk := range 2 {
				enc := segment.NewEncoder()
				data := enc.AppendBlock(enc.AppendHeader(nil), &segment.Block{ArrivalMs: time.Now().UnixMilli(), Messages: [][]byte{[]byte("x")}})
				if err := dfs.WriteFile(fsys, path.Join(layout.BucketDir("access", bk), layout.SegmentName(1, seq)), data); err != nil {
					t.Fatal(err)
				}
			}
		}
		behind := layout.SegmentName(1, seq-3) // consumers 3 segments behind
		for bk := range 2 {
			e.setPuma("access", bk, behind)
			e.setCopier("access", bk, behind)
		}
		st := once(t, n)
		counts = append(counts, st.Segments-st.Deleted)
	}
	// Puma holds its committed segment and the two after it; the copier
	// the three after its last.
	for i, c := range counts {
		if c != 2*4 {
			t.Errorf("pass %d left %d segments, want 8 (counts %v)", i, c, counts)
		}
	}
	for bk := range 2 {
		m, ok, err := layout.ReadRetentionMark(fsys, layout.BucketDir("access", bk))
		if err != nil || !ok || m.Through != layout.SegmentName(1, seq-4) {
			t.Errorf("bucket %d mark %+v %v %v, want through %s", bk, m, ok, err, layout.SegmentName(1, seq-4))
		}
		if got := e.left(t, "access", bk); len(got) != 4 || got[0] != layout.SegmentName(1, seq-3) {
			t.Errorf("bucket %d left %q", bk, got)
		}
	}
}
