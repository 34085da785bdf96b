package calligraphus

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
	"github.com/freeway-dev/freeway/internal/loadgen"
	"github.com/freeway-dev/freeway/internal/scribewire"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
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

// The local dfs's own names-only listing and gathered write, as in
// production (the wrappers would hide them).
func (f noSyncFS) ReadDirNames(name string) ([]string, error) { return dfs.ReadDirNames(f.FS, name) }

func (f noSyncFile) WriteBuffers(bufs [][]byte) (int64, error) { return dfs.WriteBuffers(f.File, bufs) }

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
	// structs: LogBatch with the generated structs, decoding left out
	// (the benchmark as it was). generated: each call's arguments decoded
	// from their bytes by the generated code, through the server's
	// protocol, then LogBatch (the port before scribewire). wire: decoded
	// by scribewire, then LogBatchEntries (the port now).
	encoded := make([][]byte, len(batches))
	for i, bt := range batches {
		buf := thrift.NewTMemoryBuffer()
		if err := (&scribethrift.ScribeLogBatchArgs{Batch: bt}).Write(ctx, thrift.NewTBinaryProtocolConf(buf, nil)); err != nil {
			b.Fatal(err)
		}
		encoded[i] = append([]byte(nil), buf.Bytes()...)
	}
	seq := int64(1)
	send := func(b *testing.B, call func(i int, first int64) (scribethrift.ResultCode, error)) {
		b.ReportAllocs()
		b.SetBytes(176)
		b.ResetTimer()
		report := cpuPerOp(b)
		defer report()
		for n := 0; n < b.N; n += batch {
			i := (n / batch) % len(batches)
			first := seq
			seq += batch
			for {
				rc, err := call(i, first)
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
	b.Run("structs", func(b *testing.B) {
		send(b, func(i int, first int64) (scribethrift.ResultCode, error) {
			batches[i].FirstSeq = first
			return c.LogBatch(ctx, batches[i])
		})
	})
	b.Run("generated", func(b *testing.B) {
		send(b, func(i int, first int64) (scribethrift.ResultCode, error) {
			binary.BigEndian.PutUint64(encoded[i][firstSeqAt(encoded[i]):], uint64(first))
			p, _ := thriftsrv.MemoryProtocol(encoded[i], thriftsrv.Limits{})
			var args scribethrift.ScribeLogBatchArgs
			if err := args.Read(ctx, p); err != nil {
				return 0, err
			}
			return c.LogBatch(ctx, args.Batch)
		})
	})
	b.Run("wire", func(b *testing.B) {
		var d scribewire.Decoder
		send(b, func(i int, first int64) (scribethrift.ResultCode, error) {
			binary.BigEndian.PutUint64(encoded[i][firstSeqAt(encoded[i]):], uint64(first))
			if !d.DecodeLogBatch(encoded[i]) {
				return 0, errors.New("the fast path gave up on a batch")
			}
			return c.LogBatchEntries(ctx, d.Batch, d.Entries)
		})
	})
}

// firstSeqAt is the offset of first_seq's value in LogBatch arguments
// written by the generated code (args field 1, agent_id, then
// first_seq).
func firstSeqAt(args []byte) int {
	idLen := int(binary.BigEndian.Uint32(args[6:]))
	return 3 + 3 + 4 + idLen + 3
}

func ptr[T any](v T) *T { return &v }
