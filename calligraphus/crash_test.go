package calligraphus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// crashPoint is the state of the dfs before one of the writer's changes
// to it, with how many of the agent's batches had been answered OK.
type crashPoint struct {
	n     int
	call  dfstest.Call
	snap  *dfstest.Snapshot
	acked int
}

// errorLog keeps the records of level Error a writer logs.
type errorLog struct {
	mu   sync.Mutex
	recs []string
}

func (l *errorLog) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelError }
func (l *errorLog) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	l.mu.Lock()
	l.recs = append(l.recs, b.String())
	l.mu.Unlock()
	return nil
}
func (l *errorLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *errorLog) WithGroup(string) slog.Handler      { return l }

var crashCategories = []string{"c0", "c1", "c2"}

// crashBatches are an agent's batches: each of entries to one, two or
// three of the categories (so one call writes several buckets), big
// enough that the buckets' segments roll every few batches.
func crashBatches(n int) []*scribethrift.Batch {
	inc := "inc1"
	seq := int64(1)
	out := make([]*scribethrift.Batch, n)
	for k := range n {
		b := &scribethrift.Batch{AgentID: "agent", Incarnation: &inc, FirstSeq: seq}
		for j := range 1 + k%3 {
			msg := fmt.Sprintf("b%03d.e%d.s%d-%s", k, j, seq, strings.Repeat("x", 100+37*(k%5)))
			b.Messages = append(b.Messages, &scribethrift.LogEntry{Category: crashCategories[(k+j)%len(crashCategories)], Message: []byte(msg)})
			seq++
		}
		out[k] = b
	}
	return out
}

func crashConfig() Config {
	cfg := testConfig()
	cfg.SegmentMaxBytes = 1024
	return cfg
}

// startCrashWriter starts a writer over fsys with a coordinator of its
// own (the crashed writer's session is gone with it), logging to log.
func startCrashWriter(t *testing.T, fsys dfs.FS, log slog.Handler) (*Calligraphus, func()) {
	t.Helper()
	hub := inproc.NewHub()
	co := hub.Session()
	c, err := New(crashConfig(), Deps{FS: fsys, Coord: co, Router: NewRouter(1, nil),
		Common: component.Common{Log: slog.New(log), Metrics: prometheus.NewRegistry(), Version: "test"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	for {
		c.mu.Lock()
		running := c.ctx != nil
		c.mu.Unlock()
		if running {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run: %v", err)
		default:
		}
		time.Sleep(time.Millisecond)
	}
	return c, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		co.Close()
	}
}

// TestCrashAtEveryFileOperation runs a writer over a file system that
// takes, before each of the writer's changes to it, what a crash then
// would leave: the process killed (everything written), the machine
// powered off (only what was synced, under the names the last directory
// syncs left), and powered off with a prefix of what was written since
// the last sync. Over each, a new writer takes the buckets (salvaging
// the crashed one's segments), the agent sends again every batch not
// answered OK, and the published segments, as readers see them, must
// hold every entry of a batch answered OK before the crash exactly once
// (it is never sent again), every entry sent again once or twice (its
// first write may have been durable before the crash: Puma drops the
// repeat by sequence number), and nothing else; and the new writer logs
// no error, for nothing was lost.
func TestCrashAtEveryFileOperation(t *testing.T) {
	batches := crashBatches(18)
	fsys := dfstest.NewCrashFS()
	var acked atomic.Int64
	var points []crashPoint
	fsys.SetHook(func(n int, c dfstest.Call, s *dfstest.Snapshot) {
		points = append(points, crashPoint{n: n, call: c, snap: s, acked: int(acked.Load())})
	})
	c, stop := startCrashWriter(t, fsys, slog.DiscardHandler)
	for k, b := range batches {
		rc, err := c.LogBatch(context.Background(), b)
		if err != nil || rc != scribethrift.ResultCode_OK {
			stop()
			t.Fatalf("batch %d: %v %v", k, rc, err)
		}
		acked.Store(int64(k + 1))
	}
	stop()
	fsys.SetHook(nil)
	points = append(points, crashPoint{n: fsys.Ops(), call: dfstest.Call{Op: "end"}, snap: fsys.Snapshot(), acked: len(batches)})

	rng := rand.New(rand.NewPCG(3, 9))
	seen := map[uint64]bool{}
	checked, failed := 0, 0
	for _, p := range points {
		for _, m := range []struct {
			name   string
			img    dfstest.Image
			strict bool
		}{
			{"killed", p.snap.Killed(), true},
			{"powered off", p.snap.PowerLoss(nil), true},
			{"powered off, a prefix of the unsynced writes kept", p.snap.PowerLoss(rng), true},
		} {
			h := fnv.New64a()
			_, _ = fmt.Fprint(h, p.acked) // a hash's writes never fail
			for _, name := range slices.Sorted(maps.Keys(m.img.Files)) {
				_, _ = fmt.Fprintf(h, "%s %d ", name, len(m.img.Files[name]))
				_, _ = h.Write(m.img.Files[name])
			}
			if seen[h.Sum64()] {
				continue
			}
			seen[h.Sum64()] = true
			checked++
			if err := checkWriterCrash(t, m.img, batches, p.acked); err != nil {
				failed++
				if failed <= 10 {
					t.Errorf("crash before operation %d (%s %s %s), %s, %d batches answered OK: %v", p.n, p.call.Op, p.call.Name, p.call.To, m.name, p.acked, err)
				}
			}
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d crash states failed", failed, checked)
	}
	t.Logf("%d batches, %d crash points, %d distinct states checked", len(batches), len(points), checked)
}

// checkWriterCrash starts a writer over img, sends again the batches
// from acked on, and checks what readers see.
func checkWriterCrash(t *testing.T, img dfstest.Image, batches []*scribethrift.Batch, acked int) error {
	fsys := dfstest.NewCrashFSFrom(img)
	elog := &errorLog{}
	c, stop := startCrashWriter(t, fsys, elog)
	var sendErr error
	for k := acked; k < len(batches) && sendErr == nil; k++ {
		if rc, err := c.LogBatch(context.Background(), batches[k]); err != nil || rc != scribethrift.ResultCode_OK {
			sendErr = fmt.Errorf("batch %d sent again: %v %v", k, rc, err)
		}
	}
	// One entry to every bucket, so that the new writer takes each (and
	// salvages what is left there).
	probe := &scribethrift.Batch{AgentID: "probe", FirstSeq: 1}
	for _, cat := range crashCategories {
		probe.Messages = append(probe.Messages, &scribethrift.LogEntry{Category: cat, Message: []byte("probe-" + cat)})
	}
	if sendErr == nil {
		if rc, err := c.LogBatch(context.Background(), probe); err != nil || rc != scribethrift.ResultCode_OK {
			sendErr = fmt.Errorf("probe: %v %v", rc, err)
		}
	}
	stop()
	if sendErr != nil {
		return sendErr
	}
	type key struct {
		agent string
		seq   uint64
	}
	want := map[key]string{} // every entry sent
	min := map[key]int{}     // how many times at least, and at most
	maxN := map[key]int{}
	for k, b := range batches {
		for j, e := range b.Messages {
			id := key{"agent/inc1", uint64(b.FirstSeq) + uint64(j)}
			want[id] = e.Category + ":" + string(e.Message)
			switch {
			case k < acked:
				min[id], maxN[id] = 1, 1
			default:
				min[id], maxN[id] = 1, 2
			}
		}
	}
	for j, e := range probe.Messages {
		id := key{"probe", uint64(j + 1)}
		want[id] = e.Category + ":" + string(e.Message)
		min[id], maxN[id] = 1, 1
	}
	got := map[key]int{}
	var problems []string
	for _, cat := range crashCategories {
		dir := layout.BucketDir(cat, 0)
		names, err := dfs.ReadDirNames(fsys, dir)
		if err != nil {
			return err
		}
		for _, name := range names {
			if dfs.Hidden(name) && name != layout.FenceDirName {
				problems = append(problems, fmt.Sprintf("%s/%s left over", dir, name))
			}
		}
		infos, err := layout.Published(fsys, dir, "")
		if err != nil {
			return err
		}
		for _, fi := range infos {
			data, err := dfs.ReadFile(fsys, path.Join(dir, fi.Name()))
			if err != nil {
				return err
			}
			r, err := segment.NewReader(bytes.NewReader(data), 0)
			if err != nil {
				return fmt.Errorf("segment %s/%s: %w", dir, fi.Name(), err)
			}
			var b segment.Block
			for {
				err := r.Next(&b)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return fmt.Errorf("segment %s/%s: %w", dir, fi.Name(), err)
				}
				for i, m := range b.Messages {
					id := key{b.Agent, b.Seqs[i]}
					if w, ok := want[id]; !ok || w != cat+":"+string(m) {
						problems = append(problems, fmt.Sprintf("%s/%s: entry %v %.20q never sent", dir, fi.Name(), id, m))
						continue
					}
					got[id]++
				}
			}
		}
	}
	for _, id := range slices.SortedFunc(maps.Keys(want), func(a, b key) int {
		return strings.Compare(fmt.Sprint(a), fmt.Sprint(b))
	}) {
		if n := got[id]; n < min[id] || n > maxN[id] {
			problems = append(problems, fmt.Sprintf("entry %v (%.12s) read %d times, want %d to %d", id, want[id], n, min[id], maxN[id]))
		}
	}
	elog.mu.Lock()
	for _, r := range elog.recs {
		problems = append(problems, "error logged: "+r)
	}
	elog.mu.Unlock()
	if len(problems) > 0 {
		if len(problems) > 6 {
			problems = append(problems[:6], fmt.Sprintf("and %d more", len(problems)-6))
		}
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}
