package scribeapi

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/scribeapi/scribetest"

	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/thrift/gen/fb303"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

type recorder struct {
	mu      sync.Mutex
	entries []string
	batches []*scribethrift.Batch
	answer  scribethrift.ResultCode
}

func (r *recorder) Log(_ context.Context, es []*scribethrift.LogEntry) (scribethrift.ResultCode, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range es {
		r.entries = append(r.entries, e.Category+":"+string(e.Message))
	}
	return r.answer, nil
}

func (r *recorder) LogBatch(_ context.Context, b *scribethrift.Batch) (scribethrift.ResultCode, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, b)
	return r.answer, nil
}

func start(t *testing.T, h Handler, limits thriftsrv.Limits, opts ...thriftsrv.Option) *Server {
	t.Helper()
	srv, err := Listen("127.0.0.1:0", h, Info{Name: "test", Version: "v1", Counters: func() map[string]int64 { return map[string]int64{"received": 7} }}, limits, slog.New(slog.DiscardHandler), opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return srv
}

func TestLogAndFB303(t *testing.T) {
	rec := &recorder{}
	srv := start(t, rec, thriftsrv.Limits{})
	c, err := Dial(srv.Addr(), thriftsrv.Limits{}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	rc, err := c.Log(ctx, []*scribethrift.LogEntry{{Category: "access", Message: []byte("GET /")}, {Category: "app", Message: []byte("x"), Metadata: map[string]string{"k": "v"}}})
	if err != nil || rc != scribethrift.ResultCode_OK {
		t.Fatalf("log: %v %v", rc, err)
	}
	rc, err = c.LogBatch(ctx, &scribethrift.Batch{AgentID: "a1", FirstSeq: 10, Messages: []*scribethrift.LogEntry{{Category: "c", Message: []byte("m")}}})
	if err != nil || rc != scribethrift.ResultCode_OK {
		t.Fatalf("logbatch: %v %v", rc, err)
	}
	if len(rec.entries) != 2 || rec.entries[0] != "access:GET /" || len(rec.batches) != 1 || rec.batches[0].FirstSeq != 10 {
		t.Fatalf("received %v %v", rec.entries, rec.batches)
	}
	if name, _ := c.GetName(ctx); name != "test" {
		t.Errorf("getName = %q", name)
	}
	if v, _ := c.GetVersion(ctx); v != "v1" {
		t.Errorf("getVersion = %q", v)
	}
	if st, _ := c.GetStatus(ctx); st != fb303.FbStatus_ALIVE {
		t.Errorf("getStatus = %v", st)
	}
	if n, _ := c.GetCounter(ctx, "received"); n != 7 {
		t.Errorf("getCounter = %d", n)
	}
	if since, _ := c.AliveSince(ctx); since <= 0 || since > time.Now().Unix() {
		t.Errorf("aliveSince = %d", since)
	}
	srv.SetStatus(fb303.FbStatus_WARNING, "downstream unreachable")
	if st, _ := c.GetStatus(ctx); st != fb303.FbStatus_WARNING {
		t.Errorf("getStatus after SetStatus = %v", st)
	}
	if d, _ := c.GetStatusDetails(ctx); d != "downstream unreachable" {
		t.Errorf("getStatusDetails = %q", d)
	}
	rec.answer = scribethrift.ResultCode_TRY_LATER
	if rc, err := c.Log(ctx, []*scribethrift.LogEntry{{Category: "c", Message: []byte("m")}}); err != nil || rc != scribethrift.ResultCode_TRY_LATER {
		t.Fatalf("TRY_LATER not passed through: %v %v", rc, err)
	}
}

func TestStockClientHeaders(t *testing.T) {
	for _, strict := range []bool{true, false} {
		rec := &recorder{}
		srv := start(t, rec, thriftsrv.Limits{})
		reply := scribetest.RawCall(t, srv.Addr(), scribetest.LogFrame(strict, [][2]string{{"access", "line one"}, {"access", "line two"}}))
		// The reply ends with field 0 (success, i32) = 0 (OK) and two stops.
		if !bytes.HasSuffix(reply, scribetest.OK) {
			t.Fatalf("strict=%v: reply %x does not carry OK", strict, reply)
		}
		if len(rec.entries) != 2 || rec.entries[1] != "access:line two" {
			t.Fatalf("strict=%v: received %v", strict, rec.entries)
		}
	}
}

func TestHostileFramesAreRefused(t *testing.T) {
	rec := &recorder{}
	srv := start(t, rec, thriftsrv.Limits{MaxCallBytes: 1 << 20, MaxContainerSize: 1000})
	cases := map[string][]byte{
		"2 GiB frame header": {0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0},
		"garbage in a frame": append([]byte{0, 0, 0, 8}, []byte("\xff\xffgarbage")...),
		"container over its cap": func() []byte {
			f := scribetest.LogFrame(true, nil)
			binary.BigEndian.PutUint32(f[len(f)-5:], 5000)
			return f
		}(),
		"negative container size": func() []byte {
			f := scribetest.LogFrame(true, nil)
			binary.BigEndian.PutUint32(f[len(f)-5:], 0xffffffff)
			return f
		}(),
	}
	for name, frame := range cases {
		conn, err := net.Dial("tcp", srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = conn.Write(frame) // the server may close before reading it all; the read below is the check
		// The server closes the connection (possibly after an exception
		// reply) rather than waiting for 2 GiB or crashing.
		if _, err := io.ReadAll(conn); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		conn.Close()
	}
	// And it still serves well-formed clients.
	reply := scribetest.RawCall(t, srv.Addr(), scribetest.LogFrame(true, [][2]string{{"c", "after the attack"}}))
	if !bytes.HasSuffix(reply, scribetest.OK) || len(rec.entries) != 1 {
		t.Fatalf("server unusable after hostile frames: %x %v", reply, rec.entries)
	}
}

// TestAliveSinceByTheComponentClock: aliveSince is read on the clock the
// component was given.
func TestAliveSinceByTheComponentClock(t *testing.T) {
	at := time.Unix(1_700_000_000, 0)
	srv, err := Listen("127.0.0.1:0", &recorder{}, Info{Name: "t", Now: func() time.Time { return at }}, thriftsrv.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() { cancel(); <-done }() //nolint:errcheck // stopping the server; its error is not what this test checks
	c, err := Dial(srv.Addr(), thriftsrv.Limits{}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if since, err := c.AliveSince(ctx); err != nil || since != at.Unix() {
		t.Fatalf("aliveSince = %d, %v; want %d", since, err, at.Unix())
	}
}
