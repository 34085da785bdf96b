package scribe

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/freeway-dev/freeway/internal/diskqueue"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/scribeapi/scribetest"
	"github.com/freeway-dev/freeway/internal/scribewire"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// benchEntries is one Log call: 100 entries of about 200 bytes.
func benchEntries() []*scribethrift.LogEntry {
	es := make([]*scribethrift.LogEntry, 100)
	line := []byte(`10.1.2.3 - - [22/Nov/2026:02:00:26 +0000] "GET /api/v1/items/12345?page=2 HTTP/1.1" 200 5123 "https://example.com/" "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/132.0" rt=0.012`)
	for i := range es {
		es[i] = &scribethrift.LogEntry{Category: "access", Message: bytes.Clone(line)}
	}
	return es
}

// BenchmarkAgentIngest measures Log calls (100 entries of ~200 bytes)
// answered OK after fsync, over the wire, from 1 and from 16 concurrent
// clients (which share fsyncs). Nothing ships (the upstream is down).
func BenchmarkAgentIngest(b *testing.B) {
	for _, conns := range []int{1, 16} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) {
			cfg := testConfig(b.TempDir(), deadAddr(b))
			cfg.MaxQueueBytes = 64 << 30
			cfg.RetryMin = cfg.RetryMax // keep the shipper's reconnects out of the way
			a := startAgent(b, cfg)
			clients := make([]*scribeapi.Client, conns)
			for i := range clients {
				clients[i] = dial(b, a.Addr())
			}
			es := benchEntries()
			var size int64
			for _, e := range es {
				size += int64(len(e.Category) + len(e.Message))
			}
			b.SetBytes(size)
			b.ReportAllocs()
			syncs0 := a.q.Stats().Syncs
			var next atomic.Int64
			b.ResetTimer()
			var wg sync.WaitGroup
			for _, c := range clients {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						rc, err := c.Log(context.Background(), es)
						if err != nil || rc != scribethrift.ResultCode_OK {
							b.Errorf("log: %v %v", rc, err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N*len(es))/b.Elapsed().Seconds(), "entries/s")
			b.ReportMetric(float64(a.q.Stats().Syncs-syncs0)/float64(b.N), "fsyncs/call")
		})
	}
}

// countingUpstream is a calligraphus that answers OK and counts.
type countingUpstream struct{ n atomic.Int64 }

func (c *countingUpstream) Log(_ context.Context, es []*scribethrift.LogEntry) (scribethrift.ResultCode, error) {
	c.n.Add(int64(len(es)))
	return scribethrift.ResultCode_OK, nil
}

func (c *countingUpstream) LogBatch(_ context.Context, b *scribethrift.Batch) (scribethrift.ResultCode, error) {
	c.n.Add(int64(len(b.Messages)))
	return scribethrift.ResultCode_OK, nil
}

// LogEntries and LogBatchEntries take the port's fast path, so that
// BenchmarkShip's profile is the shipper's, not the upstream's decode.
func (c *countingUpstream) LogEntries(_ context.Context, es []scribewire.Entry) (scribethrift.ResultCode, error) {
	c.n.Add(int64(len(es)))
	return scribethrift.ResultCode_OK, nil
}

func (c *countingUpstream) LogBatchEntries(_ context.Context, _ *scribewire.Batch, es []scribewire.Entry) (scribethrift.ResultCode, error) {
	c.n.Add(int64(len(es)))
	return scribethrift.ResultCode_OK, nil
}

// BenchmarkShip measures draining a full queue to an upstream that
// answers OK at once: read, encode, send, acknowledge (fsync of the ack
// position per batch), segment deletion. One op is 100 entries.
func BenchmarkShip(b *testing.B) {
	up := &countingUpstream{}
	srv, err := scribeapi.Listen("127.0.0.1:0", up, scribeapi.Info{Name: "bench"}, thriftsrv.Limits{}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	serve(b, srv.Serve)
	dir := b.TempDir()
	cfg := testConfig(dir, srv.Addr())
	cfg.MaxQueueBytes = 64 << 30
	q, err := diskqueue.Open(diskqueue.Options{Dir: dir, MaxBytes: int64(cfg.MaxQueueBytes), SegmentBytes: int64(cfg.SegmentBytes), Compress: cfg.QueueCompress})
	if err != nil {
		b.Fatal(err)
	}
	var qes []diskqueue.Entry
	var size int64
	for _, e := range benchEntries() {
		qes = append(qes, diskqueue.Entry{Category: e.Category, Message: e.Message, Time: 1})
		size += int64(len(e.Category) + len(e.Message))
	}
	for i := 0; i < b.N; i += 100 {
		n := min(100, b.N-i)
		var all []diskqueue.Entry
		for range n {
			all = append(all, qes...)
		}
		if _, err := q.Append(all); err != nil {
			b.Fatal(err)
		}
	}
	if err := q.Close(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	a := startAgent(b, cfg)
	want := int64(b.N) * int64(len(qes))
	testkit.WaitFor(b, "the queue shipped", func() bool { return up.n.Load() >= want })
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	b.StopTimer()
	// The process's CPU: the shipper's and the upstream's (fast path).
	b.ReportMetric(float64(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano())/float64(want), "cpu-ns/entry")
	batches := a.c.batches.Load()
	b.ReportMetric(float64(want)/b.Elapsed().Seconds(), "entries/s")
	b.ReportMetric(float64(want)/float64(batches), "entries/batch")
	a.stopped(b)
}

// BenchmarkAgentLogCalls measures the agent's side of Log calls alone:
// frames of 1,000 entries of 176 bytes (as the load generator sends
// them), encoded once and written raw on 8 connections, so that the CPU
// time and allocations reported are the server's (decode, accept, queue
// append and fsync, reply), not a client's. One op is one call;
// cpu-ns/entry is the process's CPU time (user + system, every
// goroutine) per entry.
func BenchmarkAgentLogCalls(b *testing.B) {
	const conns, perCall = 8, 1000
	cfg := testConfig(b.TempDir(), deadAddr(b))
	cfg.MaxQueueBytes = 64 << 30
	cfg.RetryMin = cfg.RetryMax // keep the shipper's reconnects out of the way
	a := startAgent(b, cfg)
	line := bytes.Repeat([]byte("x"), 176)
	frame := scribetest.LogFrameOf("bench", line, perCall)
	cs := make([]net.Conn, conns)
	for i := range cs {
		c, err := net.Dial("tcp", a.Addr())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		cs[i] = c
	}
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	var next atomic.Int64
	b.ResetTimer()
	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				reply, err := scribetest.Call(c, frame)
				if err != nil || !bytes.HasSuffix(reply, scribetest.OK) {
					b.Errorf("log: %x %v", reply, err)
					return
				}
			}
		})
	}
	wg.Wait()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	b.StopTimer()
	cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
	b.ReportMetric(float64(cpu)/float64(b.N*perCall), "cpu-ns/entry")
	b.ReportMetric(float64(b.N*perCall)/b.Elapsed().Seconds(), "entries/s")
}
