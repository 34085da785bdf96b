package calligraphus

import (
	"context"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
	"github.com/freeway-dev/freeway/internal/loadgen"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// benchLines are the bench's lines: 176-byte JSON lines over 10 k keys,
// as make bench sends them.
func benchLines(b *testing.B, n int) [][]byte {
	b.Helper()
	spec := loadgen.Lines{Format: loadgen.JSON, Size: 176, Keys: 10000, Seed: 1, Start: time.Unix(1764583200, 0), Step: time.Millisecond}
	out := make([][]byte, n)
	for i := range out {
		out[i], _ = spec.Append(nil, int64(i), 0)
	}
	return out
}

// benchRoute routes category "bench" by its "key" field to buckets, as
// the wiring (internal/freeway, Config.Routes) does for a JSON app
// grouping by key.
func benchRoute(b *testing.B, buckets int) Route {
	b.Helper()
	app, err := apps.Compile(apps.Spec{
		Name: "bench", Category: "bench", Format: "json",
		GroupBy: []string{"key"}, Aggregates: []apps.AggregateSpec{{Fn: "count"}},
	}, "$.apps[0]")
	if err != nil {
		b.Fatal(err)
	}
	return Route{Buckets: buckets, NewKeyFunc: func() func([]byte) (string, error) {
		return app.NewKeyExtractor([]string{"key"}).Key
	}, JSONFields: []string{"key"}}
}

// cpuPerOp reports the CPU time of the process per op (user and system,
// every goroutine's, the garbage collector's too) as cpu-ns/op: on a
// shared, loaded machine the wall time per op says more about the
// neighbours than about the code. Call it once the timer is reset, and
// the returned function when the ops are done.
func cpuPerOp(b *testing.B) func() {
	start := cpuTime(b)
	return func() {
		b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
	}
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRouterBucket: the shard key and bucket of one entry.
func BenchmarkRouterBucket(b *testing.B) {
	lines := benchLines(b, 1000)
	r := NewRouter(1, map[string]Route{"bench": benchRoute(b, 8)})
	b.ReportAllocs()
	b.SetBytes(176)
	b.ResetTimer()
	report := cpuPerOp(b)
	defer report()
	for i := 0; i < b.N; i++ {
		if _, ok := r.Bucket("bench", lines[i%len(lines)]); !ok {
			b.Fatal("unroutable")
		}
	}
}

// noSyncFS is a local dfs whose Sync does nothing: the benchmark
// measures the writer's CPU path, not the disk of a shared machine.
type noSyncFS struct{ dfs.FS }

func (f noSyncFS) SyncDurable() bool { return true }

func (f noSyncFS) Create(name string) (dfs.File, error) {
	file, err := f.FS.Create(name)
	if err != nil {
		return nil, err
	}
	return noSyncFile{file}, nil
}

type noSyncFile struct{ dfs.File }

func (noSyncFile) Sync() error { return nil }

// BenchmarkIngest: agent batches of 1,000 bench lines through LogBatch
// into 8 buckets on a local dfs in memory (/dev/shm when there is one),
// without fsyncs. One op is one entry.
func BenchmarkIngest(b *testing.B) {
	dir := b.TempDir()
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if d, err := os.MkdirTemp("/dev/shm", "calligraphus-bench"); err == nil {
			dir = d
			b.Cleanup(func() { os.RemoveAll(d) })
		}
	}
	l, err := localfs.New(dir)
	if err != nil {
		b.Fatal(err)
	}
	co := inproc.NewHub().Session()
	defer co.Close()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.ID = "bench"
	c, err := New(cfg, Deps{FS: noSyncFS{l}, Coord: co, Router: NewRouter(1, map[string]Route{"bench": benchRoute(b, 8)}),
		Common: component.Common{Log: slog.New(slog.DiscardHandler), Metrics: prometheus.NewRegistry(), Version: "bench"}})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()
	// Run sets the writers' context; wait until a call is served.
	for c.ingest(ctx, callInfo{arrivalMs: 1}, nil) != scribethrift.ResultCode_OK {
		time.Sleep(time.Millisecond)
	}
	const batch = 1000
	lines := benchLines(b, 10*batch)
	batches := make([]*scribethrift.Batch, 10)
	for i := range batches {
		es := make([]*scribethrift.LogEntry, batch)
		for j := range es {
			es[j] = &scribethrift.LogEntry{Category: "bench", Message: lines[i*batch+j]}
		}
		batches[i] = &scribethrift.Batch{AgentID: "a", Incarnation: ptr("i"), Messages: es, ReceivedAtMs: 1764583200000}
	}
	b.ReportAllocs()
	b.SetBytes(176)
	b.ResetTimer()
	report := cpuPerOp(b)
	defer report()
	seq := int64(1)
	for n := 0; n < b.N; n += batch {
		bt := batches[(n/batch)%len(batches)]
		bt.FirstSeq = seq
		seq += batch
		for {
			rc, err := c.LogBatch(ctx, bt)
			if err != nil {
				b.Fatal(err)
			}
			if rc == scribethrift.ResultCode_OK {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func ptr[T any](v T) *T { return &v }
