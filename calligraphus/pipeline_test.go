package calligraphus

import (
	"path"
	"slices"
	"sync"
	"testing"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// closeGate holds the Close of the first segment file closed (not the
// fence's or sidecar's files) until released; other closes pass.
type closeGate struct {
	mu       sync.Mutex
	held     string // the segment whose close is held
	blocked  chan struct{}
	release  chan struct{}
	once     sync.Once
	segments []string // segment closes seen, in order
}

func newCloseGate(t *testing.T) *closeGate {
	g := &closeGate{blocked: make(chan struct{}), release: make(chan struct{})}
	t.Cleanup(g.open)
	return g
}

func (g *closeGate) open() { g.once.Do(func() { close(g.release) }) }

func (g *closeGate) hook(c dfstest.Call) error {
	if _, ok := layout.ParseTempSegment(path.Base(c.Name)); c.Op != dfstest.OpClose || !ok {
		return nil
	}
	g.mu.Lock()
	g.segments = append(g.segments, c.Name)
	first := g.held == ""
	if first {
		g.held = c.Name
		close(g.blocked)
	}
	g.mu.Unlock()
	if first {
		<-g.release
	}
	return nil
}

func (g *closeGate) closes() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.segments)
}

// TestPipelinedPublishInOrder: on HDFS, while a bucket's segment closes
// (held here), its writer writes the next batch into a segment of its own
// and closes it too; neither batch is answered before its segment is
// published, and the segments are published in the order they were
// written even though the second one's close returned first. The old
// writer closed one segment at a time: the second batch was not written
// at all while the first segment's close was under way.
func TestPipelinedPublishInOrder(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t)).LikeHDFS()
	_, co := inprocCoord(t)
	s := startServer(t, testConfig(), fsys, co, nil)
	cl1, cl2 := s.dial(t), s.dial(t)
	mustLog(t, cl1, entries("cat", "warm")) // takes the lease, publishes

	g := newCloseGate(t)
	fsys.SetHook(g.hook)
	first := logAsync(cl1, entries("cat", "first"))
	<-g.blocked
	second := logAsync(cl2, entries("cat", "second"))
	testkit.WaitFor(t, "the second segment to be written and closed while the first closes", func() bool {
		return len(g.closes()) >= 2
	})
	// The second segment's close returned (or is returning); the first is
	// held: nothing of either may be published or answered yet.
	if n := len(segmentRenames(fsys)); n != 1 {
		t.Errorf("%d segments published while the first batch's segment %s was still closing, want only the warm-up's", n, g.held)
	}
	select {
	case r := <-second:
		t.Fatalf("second batch answered %v %v before the segment before it was published", r.rc, r.err)
	default:
	}
	g.open()
	for _, ch := range []chan result{first, second} {
		if r := <-ch; r.err != nil || r.rc != scribethrift.ResultCode_OK {
			t.Fatalf("log: %v %v", r.rc, r.err)
		}
	}
	s.stop()

	segs := published(t, fsys, "cat/0", false)
	if len(segs) != 3 {
		t.Fatalf("published %q, want three segments", segs)
	}
	if renamed := segmentRenames(fsys); !slices.IsSorted(renamed) {
		t.Errorf("segments renamed in the order %q, not in name order", renamed)
	}
	if got := msgs(scan(t, fsys, "cat/0")); !slices.Equal(got, []string{"warm", "first", "second"}) {
		t.Errorf("bucket holds %q", got)
	}
}

// TestLeaseLostWhileClosing: segments still closing when the writer loses
// its lease are never published, and their batches are answered
// TRY_LATER, whatever their closes return.
func TestLeaseLostWhileClosing(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t)).LikeHDFS()
	_, co := inprocCoord(t)
	s := startServer(t, testConfig(), fsys, co, nil)
	cl1, cl2, cl3 := s.dial(t), s.dial(t), s.dial(t)
	mustLog(t, cl1, entries("cat", "before"))

	g := newCloseGate(t)
	fsys.SetHook(g.hook)
	first := logAsync(cl1, entries("cat", "first"))
	<-g.blocked
	second := logAsync(cl2, entries("cat", "second"))
	testkit.WaitFor(t, "the second segment to close", func() bool { return len(g.closes()) >= 2 })
	co.Expire()
	g.open()
	for _, ch := range []chan result{first, second} {
		if r := <-ch; r.err != nil || r.rc != scribethrift.ResultCode_TRY_LATER {
			t.Errorf("batch closing when the lease was lost: %v %v, want TRY_LATER", r.rc, r.err)
		}
	}
	mustLog(t, cl3, entries("cat", "after")) // takes the bucket again
	s.stop()
	if got := msgs(scan(t, fsys, "cat/0")); !slices.Equal(got, []string{"before", "after"}) {
		t.Errorf("bucket holds %q, want only the acknowledged batches", got)
	}
	published(t, fsys, "cat/0", false) // fails on refused segments left over
}

// segmentRenames returns the names segments were published under, in
// the order of their renames.
func segmentRenames(fsys *dfstest.Faulty) []string {
	var out []string
	for _, c := range fsys.Calls(dfstest.OpRename) {
		if _, _, ok := layout.ParseSegmentName(path.Base(c.To)); ok {
			out = append(out, c.To)
		}
	}
	return out
}

// TestPublishedHook: the writer tells its process's readers of every
// segment it publishes, with the bucket's directory, on either kind of dfs.
func TestPublishedHook(t *testing.T) {
	fsKinds(t, func(t *testing.T, fsys *dfstest.Faulty) {
		_, co := inprocCoord(t)
		var mu sync.Mutex
		var dirs []string
		cfg := testConfig()
		s := startServerWith(t, cfg, fsys, co, nil, func(c *Calligraphus) {
			c.deps.Published = func(dir string) {
				mu.Lock()
				dirs = append(dirs, dir)
				mu.Unlock()
			}
		})
		mustLog(t, s.dial(t), entries("cat", "a"))
		s.stop() // publishes the open segment on a local disk
		mu.Lock()
		defer mu.Unlock()
		if len(dirs) != 1 || dirs[0] != layout.BucketDir("cat", 0) {
			t.Errorf("published hook called with %q, want once with %q", dirs, layout.BucketDir("cat", 0))
		}
	})
}

// TestNextSegmentCreatedAhead: on HDFS a writer creates its bucket's
// next segment as soon as it hands one to be closed, so that the next
// batch does not wait for a create (two NameNode calls and a DataNode
// connection); the next batch goes into exactly that file. Left unused
// for aheadIdle, it is removed, and nothing empty is ever published. The
// old writer created each segment only once a batch had arrived for it.
func TestNextSegmentCreatedAhead(t *testing.T) {
	t.Run("hdfslike", func(t *testing.T) {
		_, co := inprocCoord(t)
		testNextSegmentCreatedAhead(t, dfstest.NewFaulty(newLocal(t)).LikeHDFS(), co)
	})
	t.Run("engines", func(t *testing.T) {
		fsys, newCoord := engineBackends(t)
		testNextSegmentCreatedAhead(t, fsys, newCoord())
	})
}

func testNextSegmentCreatedAhead(t *testing.T, fsys dfs.FS, co coord.Coord) {
	s := startServer(t, testConfig(), fsys, co, nil)
	cl := s.dial(t)
	mustLog(t, cl, entries("cat", "a"))

	var ahead string
	testkit.WaitFor(t, "the next segment to be created before a batch arrives for it", func() bool {
		ahead = ""
		for _, name := range hiddenFiles(t, fsys, "cat/0") {
			if _, ok := layout.ParseTempSegment(name); ok {
				ahead = name
			}
		}
		return ahead != ""
	})
	final, _ := layout.ParseTempSegment(ahead)
	mustLog(t, cl, entries("cat", "b"))
	var inAhead []string
	for _, e := range scanRunning(t, fsys, "cat/0") {
		if e.Segment == final {
			inAhead = append(inAhead, e.Msg)
		}
	}
	if !slices.Equal(inAhead, []string{"b"}) {
		t.Errorf("segment %s, created ahead as %s, holds %q, want the next batch [b]", final, ahead, inAhead)
	}

	// The segment created ahead after b is removed once it has waited
	// unused; nothing empty is published.
	testkit.WaitFor(t, "the unused segment created ahead to be removed", func() bool {
		return len(hiddenFiles(t, fsys, "cat/0")) == 0
	})
	if segs := published(t, fsys, "cat/0", false); len(segs) != 2 {
		t.Errorf("published %q, want the two segments of a and b", segs)
	}
	mustLog(t, cl, entries("cat", "c"))
	s.stop()
	if got := msgs(scan(t, fsys, "cat/0")); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("bucket holds %q", got)
	}
}

// hiddenFiles lists a bucket's unpublished files (not its fence).
func hiddenFiles(t *testing.T, fsys dfs.FS, dir string) []string {
	t.Helper()
	infos, err := fsys.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, fi := range infos {
		if fi.Name() != layout.FenceDirName && dfs.Hidden(fi.Name()) {
			out = append(out, fi.Name())
		}
	}
	return out
}
