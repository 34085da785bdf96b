package calligraphus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/freeway-dev/freeway/internal/backends"
	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
	"github.com/freeway-dev/freeway/internal/enginetest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/ptail"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newLocal(t *testing.T) *localfs.FS {
	t.Helper()
	l, err := localfs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.ID = "w1"
	cfg.SegmentMaxAge = config.Duration(time.Hour) // tests roll explicitly
	cfg.Linger = config.Duration(5 * time.Millisecond)
	return cfg
}

// server is one running Calligraphus.
type server struct {
	t      *testing.T
	c      *Calligraphus
	reg    *prometheus.Registry
	cancel context.CancelFunc
	ctx    context.Context
	done   chan error
	once   sync.Once
}

func startServer(t *testing.T, cfg Config, fsys dfs.FS, co coord.Coord, router *Router) *server {
	t.Helper()
	return startServerWith(t, cfg, fsys, co, router, nil)
}

// startServerWith is startServer with a hook that may change the server
// before it runs (settings the config validation would refuse).
func startServerWith(t *testing.T, cfg Config, fsys dfs.FS, co coord.Coord, router *Router, hook func(*Calligraphus)) *server {
	t.Helper()
	if router == nil {
		router = NewRouter(1, nil)
	}
	reg := prometheus.NewRegistry()
	c, err := New(cfg, Deps{FS: fsys, Coord: co, Router: router,
		Common: component.Common{Log: slog.New(slog.NewTextHandler(t.Output(), nil)), Metrics: reg, Version: "test"}})
	if err != nil {
		t.Fatal(err)
	}
	if hook != nil {
		hook(c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{t: t, c: c, reg: reg, cancel: cancel, ctx: ctx, done: make(chan error, 1)}
	go func() { s.done <- c.Run(ctx) }()
	t.Cleanup(s.stop)
	return s
}

func (s *server) ctxDone() <-chan struct{} { return s.ctx.Done() }

// waitRunning waits until Run has started taking batches: a call made on
// s.c directly before that (not through the port, which only listens
// from Run on) is answered TRY_LATER as by a stopping writer.
func (s *server) waitRunning(t *testing.T) {
	t.Helper()
	testkit.WaitFor(t, "calligraphus running", func() bool {
		s.c.mu.Lock()
		defer s.c.mu.Unlock()
		return s.c.ctx != nil
	})
}

// waitWritersEnded waits until no bucket writer runs: every one has
// ended for idleness, its stop (publish, release) done.
func (s *server) waitWritersEnded(t *testing.T) {
	t.Helper()
	testkit.WaitFor(t, "the bucket writers to end for idleness", func() bool {
		s.c.mu.Lock()
		defer s.c.mu.Unlock()
		return len(s.c.live) == 0
	})
}

// stop cancels Run and waits for it to return.
func (s *server) stop() {
	s.once.Do(func() {
		s.cancel()
		if err := <-s.done; err != nil {
			s.t.Errorf("run: %v", err)
		}
	})
}

func (s *server) dial(t *testing.T) *scribeapi.Client {
	t.Helper()
	cl, err := scribeapi.Dial(s.c.Addr(), thriftsrv.Limits{}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func entries(category string, msgs ...string) []*scribethrift.LogEntry {
	out := make([]*scribethrift.LogEntry, len(msgs))
	for i, m := range msgs {
		out[i] = &scribethrift.LogEntry{Category: category, Message: []byte(m)}
	}
	return out
}

func mustLog(t *testing.T, cl *scribeapi.Client, es []*scribethrift.LogEntry) {
	t.Helper()
	rc, err := cl.Log(context.Background(), es)
	if err != nil {
		t.Fatalf("log: %v", err)
	}
	if rc != scribethrift.ResultCode_OK {
		t.Fatalf("log: %v, want OK", rc)
	}
}

// counter sums every series of the metric called name in reg.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				total += m.Counter.GetValue()
			case m.Gauge != nil:
				total += m.Gauge.GetValue()
			case m.Histogram != nil:
				total += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return total
}

// entry is one message read back with the block it came in.
type entry struct {
	Segment string
	Agent   string
	Seq     uint64
	Msg     string
	Arrival int64 // ms
}

// published lists the published segments of a bucket, and fails the test
// if a hidden file is left over (unless allowHidden).
func published(t *testing.T, fsys dfs.FS, dir string, allowHidden bool) []string {
	t.Helper()
	infos, err := fsys.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, fi := range infos {
		if fi.Name() == layout.FenceDirName {
			continue // the writers' fence (layout/fence.go), not a segment
		}
		if dfs.Hidden(fi.Name()) {
			if !allowHidden {
				t.Errorf("%s: unpublished file %s left over", dir, fi.Name())
			}
			continue
		}
		if _, _, ok := layout.ParseSegmentName(fi.Name()); !ok {
			t.Errorf("%s: unexpected file %s", dir, fi.Name())
			continue
		}
		out = append(out, fi.Name())
	}
	return out
}

// scan reads every published segment of a bucket in full, failing on any
// damage, or on an unpublished file left over.
func scan(t *testing.T, fsys dfs.FS, dir string) []entry {
	t.Helper()
	return scanNames(t, fsys, dir, published(t, fsys, dir, false))
}

// scanRunning is scan while the bucket's writer runs: on HDFS (or like
// it) the writer's next segment, created ahead, may exist unpublished.
func scanRunning(t *testing.T, fsys dfs.FS, dir string) []entry {
	t.Helper()
	return scanNames(t, fsys, dir, published(t, fsys, dir, true))
}

func scanNames(t *testing.T, fsys dfs.FS, dir string, names []string) []entry {
	t.Helper()
	var out []entry
	for _, name := range names {
		data, err := dfs.ReadFile(fsys, path.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		r, err := segment.NewReader(bytes.NewReader(data), 0)
		if err != nil {
			t.Fatalf("segment %s/%s: %v", dir, name, err)
		}
		var b segment.Block
		for {
			err := r.Next(&b)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("segment %s/%s: %v", dir, name, err)
			}
			for i, m := range b.Messages {
				out = append(out, entry{Segment: name, Agent: b.Agent, Seq: b.Seqs[i], Msg: string(m), Arrival: b.ArrivalMs})
			}
		}
	}
	return out
}

// tail reads n entries of a bucket with ptail from the start.
func tail(t *testing.T, fsys dfs.FS, dir string, n int) []entry {
	t.Helper()
	out, r := tailCounting(t, fsys, dir, n)
	if r.Skipped != 0 {
		t.Errorf("ptail %s skipped %d damaged segments", dir, r.Skipped)
	}
	return out
}

// tailCounting reads as tail does, and returns the reader (closed) for
// its damage counts, which it leaves to the caller to check.
func tailCounting(t *testing.T, fsys dfs.FS, dir string, n int) ([]entry, *ptail.Reader) {
	t.Helper()
	r := ptail.NewReader(fsys, dir, ptail.Position{}, 2*time.Millisecond, slog.New(slog.DiscardHandler))
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []entry
	var b segment.Block
	for len(out) < n {
		pos, err := r.Next(ctx, &b)
		if err != nil {
			t.Fatalf("ptail %s after %d of %d entries: %v", dir, len(out), n, err)
		}
		for i, m := range b.Messages {
			out = append(out, entry{Segment: pos.Segment, Agent: b.Agent, Seq: b.Seqs[i], Msg: string(m)})
		}
	}
	return out, r
}

func msgs(es []entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Msg
	}
	return out
}

// writeCrashed leaves in dir what a writer of epoch that died while
// writing segment seq leaves: a temporary segment with the given blocks,
// then a torn tail.
func writeCrashed(t *testing.T, fsys dfs.FS, dir string, epoch int64, seqNo uint64, blocks []*segment.Block, torn bool) string {
	t.Helper()
	name := layout.SegmentName(epoch, seqNo)
	data := []byte(segment.Magic)
	for _, b := range blocks {
		data = segment.AppendBlock(data, b)
	}
	if torn {
		tail := segment.AppendBlock(nil, &segment.Block{Messages: [][]byte{[]byte("torn-entry-never-acked")}})
		data = append(data, tail[:len(tail)-5]...)
	}
	f, err := fsys.Create(path.Join(dir, dfs.TempName(name)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return name
}

// writeCrashedSegment leaves data in dir as what a writer of epoch 5
// that died while writing its segment 1 leaves (written as given, v2 or
// damaged), and returns the name a salvage publishes it under.
func writeCrashedSegment(t *testing.T, fsys dfs.FS, dir string, data []byte) string {
	t.Helper()
	name := layout.SegmentName(5, 1)
	if err := dfs.WriteFile(fsys, path.Join(dir, layout.TempSegment(name)), data); err != nil {
		t.Fatal(err)
	}
	return name
}

// takeOver starts the next writer and logs "new" to category cat: taking
// the bucket for it, the writer salvages what a crashed one left there.
func takeOver(t *testing.T, fsys dfs.FS, co coord.Coord) *server {
	t.Helper()
	s := startServer(t, testConfig(), fsys, co, nil)
	mustLog(t, s.dial(t), entries("cat", "new"))
	return s
}

// inprocCoord returns a session on a fresh hub.
func inprocCoord(t *testing.T) (*inproc.Hub, *inproc.Session) {
	hub := inproc.NewHub()
	s := hub.Session()
	t.Cleanup(func() { s.Close() })
	return hub, s
}

// fsKinds runs a test on a local disk (Sync durable) and on an HDFS-like
// file system (only a close is durable, unclosed files are invisible).
func fsKinds(t *testing.T, fn func(t *testing.T, fsys *dfstest.Faulty)) {
	t.Run("local", func(t *testing.T) { fn(t, dfstest.NewFaulty(newLocal(t))) })
	t.Run("hdfslike", func(t *testing.T) { fn(t, dfstest.NewFaulty(newLocal(t)).LikeHDFS()) })
}

func head(s []string) []string {
	if len(s) > 3 {
		return s[:3]
	}
	return s
}

// sessions returns a function opening a new session of hub (one per
// writer), closed when the test ends.
func sessions(t *testing.T, hub *inproc.Hub) func() coord.Coord {
	return func() coord.Coord {
		s := hub.Session()
		t.Cleanup(func() { s.Close() })
		return s
	}
}

// engineBackends opens a dfs root of this test's own on the real HDFS,
// and returns it with a function that opens a ZooKeeper coordinator
// under a root of the same name, one per writer (skipping without the
// engines, as enginetest does); all are closed when the test ends.
func engineBackends(t *testing.T) (dfs.FS, func() coord.Coord) {
	t.Helper()
	zk, hdfsAddr := enginetest.Addr(t, enginetest.ZK), enginetest.Addr(t, enginetest.HDFS)
	suffix := randomSuffix(t)
	fsys, err := backends.OpenDFS(fmt.Sprintf("hdfs://%s/freeway-test/calligraphus-%s", hdfsAddr, suffix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Close() })
	return fsys, func() coord.Coord {
		co, err := backends.NewCoords(nil).Open(fmt.Sprintf("zk://%s/freeway-test/calligraphus-%s", zk, suffix))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { co.Close() })
		return co
	}
}

// sealedBucket is a local dfs whose bucket cat/0 writer "a" took at epoch
// 1 and sealed: where the salvage tests start.
func sealedBucket(t *testing.T) *localfs.FS {
	t.Helper()
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
	return local
}
