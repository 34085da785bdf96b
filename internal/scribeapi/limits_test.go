package scribeapi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/scribeapi/scribetest"
	"github.com/freeway-dev/freeway/internal/scribewire"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

type harness struct {
	srv  *Server
	reg  *prometheus.Registry
	logs *testkit.LogBuffer
	stop func()
}

// serve starts a Scribe server for h with limits and opts, its metrics
// in a registry and its log lines in a buffer.
func serve(t *testing.T, h Handler, limits thriftsrv.Limits, opts ...thriftsrv.Option) *harness {
	t.Helper()
	hs := &harness{reg: prometheus.NewRegistry(), logs: &testkit.LogBuffer{}}
	log := slog.New(slog.NewTextHandler(hs.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := Listen("127.0.0.1:0", h, Info{Name: "test", Metrics: hs.reg}, limits, log, opts...)
	if err != nil {
		t.Fatal(err)
	}
	hs.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	var once sync.Once
	hs.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		})
	}
	t.Cleanup(hs.stop)
	return hs
}

// metric is the value of a metric with the given label values (any
// listener), or 0.
func (hs *harness) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := hs.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if m.Counter != nil {
				total += m.Counter.GetValue()
			} else if m.Gauge != nil {
				total += m.Gauge.GetValue()
			}
		}
	}
	return total
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByServer reports whether the server closes c (generous deadline,
// nothing sent back).
func closedByServer(c net.Conn) error {
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := c.Read(make([]byte, 1))
	switch {
	case n > 0:
		return errors.New("server answered instead of closing")
	case err == io.EOF || errors.Is(err, syscall.ECONNRESET):
		return nil
	}
	return fmt.Errorf("connection not closed: %v", err)
}

func call(t *testing.T, c net.Conn, frame []byte) []byte {
	t.Helper()
	reply, err := scribetest.Call(c, frame)
	if err != nil {
		t.Fatalf("call: %v", err)
	}
	return reply
}

func small(msg string) []byte { return scribetest.LogFrame(true, [][2]string{{"c", msg}}) }

// TestIdleConnectionsDoNotLockOut: with max_connections idle connections
// open, a new client is served: the longest idle one is closed for it.
// (Before, the server stopped accepting at the cap and the new client
// waited for ever.)
func TestIdleConnectionsDoNotLockOut(t *testing.T) {
	rec := &recorder{}
	hs := serve(t, rec, thriftsrv.Limits{MaxConnections: 8})
	var idle []net.Conn
	for range 8 {
		idle = append(idle, dial(t, hs.srv.Addr()))
	}
	testkit.WaitFor(t, "8 connections accepted", func() bool { return hs.metric(t, "freeway_listener_connections") == 8 })
	fresh := dial(t, hs.srv.Addr())
	if reply := call(t, fresh, small("newcomer")); !bytes.HasSuffix(reply, scribetest.OK) {
		t.Fatalf("newcomer not served: %x", reply)
	}
	if err := closedByServer(idle[0]); err != nil {
		t.Fatalf("longest idle connection: %v", err)
	}
	if reply := call(t, idle[1], small("old client")); !bytes.HasSuffix(reply, scribetest.OK) {
		t.Fatalf("an idle connection that was not evicted is not served: %x", reply)
	}
	if n := hs.metric(t, "freeway_listener_connections_evicted_total"); n != 1 {
		t.Fatalf("evictions counted %v, want 1", n)
	}
	if len(rec.entries) != 2 {
		t.Fatalf("received %v", rec.entries)
	}
}

// TestBusyConnectionsRefuseNewcomer: at the cap with every connection in
// the middle of a call, the newcomer is closed at once and counted.
func TestBusyConnectionsRefuseNewcomer(t *testing.T) {
	hs := serve(t, &recorder{}, thriftsrv.Limits{MaxConnections: 2})
	full := small("x")
	for range 2 {
		c := dial(t, hs.srv.Addr())
		if _, err := c.Write(full[:len(full)-3]); err != nil { // a call begun, not finished
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, "2 busy connections", func() bool {
		return hs.metric(t, "freeway_listener_connections") == 2 && hs.metric(t, "freeway_listener_idle_connections") == 0
	})
	late := dial(t, hs.srv.Addr())
	if err := closedByServer(late); err != nil {
		t.Fatalf("newcomer while every connection is busy: %v", err)
	}
	if n := hs.metric(t, "freeway_listener_connections_refused_total"); n != 1 {
		t.Fatalf("refusals counted %v, want 1", n)
	}
}

// TestSlowCallCutAtReadTimeout: a call trickling in (a byte every 50ms,
// each arriving well within any per-read timeout) is cut once
// read_timeout has passed since its first byte. (Before, each byte reset
// the socket timeout and the connection was held for ever.)
func TestSlowCallCutAtReadTimeout(t *testing.T) {
	hs := serve(t, &recorder{}, thriftsrv.Limits{ReadTimeout: 500 * time.Millisecond})
	c := dial(t, hs.srv.Addr())
	frame := scribetest.LogFrame(true, [][2]string{{"c", strings.Repeat("m", 1000)}})
	closed := make(chan error, 1)
	go func() { closed <- closedByServer(c) }()
	for i := 0; i < len(frame)-1; i++ {
		if _, err := c.Write(frame[i : i+1]); err != nil {
			break // closed by the server
		}
		select {
		case err := <-closed:
			if err != nil {
				t.Fatal(err)
			}
			if n := hs.metric(t, "freeway_thrift_connections_closed_total", "reason", "read_timeout"); n != 1 {
				t.Fatalf("read timeouts counted %v", n)
			}
			if !strings.Contains(hs.logs.String(), "within read_timeout") {
				t.Fatalf("no log line: %s", hs.logs.String())
			}
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatal("the whole slow call was read: not cut at read_timeout")
}

// TestIdleTimeout: a connection that starts no call is closed.
func TestIdleTimeout(t *testing.T) {
	hs := serve(t, &recorder{}, thriftsrv.Limits{IdleTimeout: 200 * time.Millisecond})
	c := dial(t, hs.srv.Addr())
	call(t, c, small("one call, then silence"))
	if err := closedByServer(c); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "idle timeout counted", func() bool {
		return hs.metric(t, "freeway_thrift_connections_closed_total", "reason", "idle_timeout") == 1
	})
}

// TestOversizedCallTryLaterSameConnection: a call over max_call_bytes is
// answered TRY_LATER and the same connection then serves a smaller call.
// (Before, the connection was reset.)
func TestOversizedCallTryLaterSameConnection(t *testing.T) {
	rec := &recorder{}
	hs := serve(t, rec, thriftsrv.Limits{MaxCallBytes: 64 << 10})
	c := dial(t, hs.srv.Addr())
	big := scribetest.LogFrameOf("c", bytes.Repeat([]byte("b"), 1000), 200)
	if reply := call(t, c, big); !bytes.HasSuffix(reply, scribetest.TryLater) {
		t.Fatalf("oversized call answered %x, want TRY_LATER", reply)
	}
	// The non-strict header of an old client gets the same answer.
	bigOld := scribetest.LogFrame(false, [][2]string{{"c", strings.Repeat("o", 200<<10)}})
	if reply := call(t, c, bigOld); !bytes.HasSuffix(reply, scribetest.TryLater) {
		t.Fatalf("oversized non-strict call answered %x, want TRY_LATER", reply)
	}
	if reply := call(t, c, small("fits")); !bytes.HasSuffix(reply, scribetest.OK) {
		t.Fatalf("smaller call after TRY_LATER answered %x", reply)
	}
	if len(rec.entries) != 1 || rec.entries[0] != "c:fits" {
		t.Fatalf("received %v", rec.entries)
	}
	if n := hs.metric(t, "freeway_thrift_calls_refused_total", "reason", "too_large"); n != 2 {
		t.Fatalf("refusals counted %v, want 2", n)
	}
}

// TestHalvingClientDeliversEverything is Gollum's Scribe producer: a
// batch of everything it holds (4,096 lines of 10 KB, 40 MB), halved
// each time it is answered TRY_LATER, the same batch again after a
// connection error. With a 16 MiB max_call_bytes every line arrives.
// (Before, the connection was reset on the oversized frame: 0 lines.)
func TestHalvingClientDeliversEverything(t *testing.T) {
	var got atomic.Int64
	h := &countingHandler{n: &got}
	hs := serve(t, h, thriftsrv.Limits{MaxCallBytes: 16 << 20})
	line := bytes.Repeat([]byte("l"), 10<<10)
	const total = 4096
	left, batch, resets, tryLaters := total, total, 0, 0
	c := dial(t, hs.srv.Addr())
	for left > 0 {
		n := min(batch, left)
		reply, err := scribetest.Call(c, scribetest.LogFrameOf("gollum", line, n))
		switch {
		case err != nil:
			resets++
			if resets > 3 {
				t.Fatalf("delivered %d of %d lines: connection failed %d times (%v)", got.Load(), total, resets, err)
			}
			c.Close()
			c = dial(t, hs.srv.Addr())
		case bytes.HasSuffix(reply, scribetest.TryLater):
			tryLaters++
			batch = max(batch/2, 1)
		case bytes.HasSuffix(reply, scribetest.OK):
			left -= n
		default:
			t.Fatalf("reply %x", reply)
		}
	}
	if got.Load() != total || resets != 0 || tryLaters == 0 {
		t.Fatalf("delivered %d of %d lines, %d resets, %d TRY_LATER", got.Load(), total, resets, tryLaters)
	}
}

// countingHandler counts entries and keeps none.
type countingHandler struct {
	n     *atomic.Int64
	bytes atomic.Int64
	delay time.Duration
}

func (h *countingHandler) Log(_ context.Context, es []*scribethrift.LogEntry) (scribethrift.ResultCode, error) {
	for _, e := range es {
		h.bytes.Add(int64(len(e.Message)))
	}
	time.Sleep(h.delay)
	h.n.Add(int64(len(es)))
	return scribethrift.ResultCode_OK, nil
}

func (h *countingHandler) LogBatch(ctx context.Context, b *scribethrift.Batch) (scribethrift.ResultCode, error) {
	return h.Log(ctx, b.Messages)
}

// TestOtherProtocolsClosedAtOnce: clients speaking something else than
// framed binary Thrift are closed at once, with a log line saying what
// they seem to speak. (Before, a buffered client with a non-strict
// header hung: its name length was taken for a frame size.)
func TestOtherProtocolsClosedAtOnce(t *testing.T) {
	compact := []byte{0x82, 0x21, 0x01, 0x03, 'L', 'o', 'g', 0x19, 0x1c}
	cases := []struct {
		name, seen string
		bytes      []byte
	}{
		{"buffered non-strict", "unframed (buffered) transport with a non-strict binary header", scribetest.LogFrame(false, [][2]string{{"c", "m"}})[4:]},
		{"buffered strict", "unframed (buffered) transport with the binary protocol", scribetest.LogFrame(true, [][2]string{{"c", "m"}})[4:]},
		{"compact", "compact protocol", compact},
		{"framed compact", "compact protocol; this port needs the binary protocol", append(binary.BigEndian.AppendUint32(nil, uint32(len(compact))), compact...)},
		{"http", "an HTTP request", []byte("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"tls", "a TLS handshake", []byte{0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03}},
	}
	hs := serve(t, &recorder{}, thriftsrv.Limits{})
	for _, tc := range cases {
		c := dial(t, hs.srv.Addr())
		if _, err := c.Write(tc.bytes); err != nil {
			t.Fatal(err)
		}
		if err := closedByServer(c); err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		testkit.WaitFor(t, tc.name+" log line", func() bool { return strings.Contains(hs.logs.String(), tc.seen) })
	}
	if n := hs.metric(t, "freeway_thrift_connections_closed_total", "reason", "protocol"); n != float64(len(cases)) {
		t.Fatalf("protocol closes counted %v, want %d", n, len(cases))
	}
	if !strings.Contains(hs.logs.String(), "client does not speak framed binary thrift") {
		t.Fatalf("log: %s", hs.logs.String())
	}
}

// TestConcurrentLargeCallsBoundedMemory: 16 concurrent Log calls of one
// 15 MB message each are served within the in-flight budget, and every
// entry is accepted in the end. The heap's growth stays under twice what
// may be live: the budget, the frame chunks pooled for reuse (at most
// half the budget, until the next collection), the 15 MB frame the
// clients share; twice, because Go's collector lets the heap grow to
// twice what was live at the last collection (GOGC=100); plus 16 MiB of
// slack. (Before, the calls took 587 MiB here, 3.1 GiB in the agent.)
func TestConcurrentLargeCallsBoundedMemory(t *testing.T) {
	const (
		clients = 16
		msgSize = 15_000_000
		budget  = 64 << 20
	)
	var got atomic.Int64
	h := &countingHandler{n: &got, delay: 20 * time.Millisecond}
	b := thriftsrv.NewBudget(budget, nil)
	hs := serve(t, h, thriftsrv.Limits{BudgetWait: 500 * time.Millisecond}, thriftsrv.WithBudget(b))
	frame := scribetest.LogFrameOf("big", bytes.Repeat([]byte("x"), msgSize), 1)

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var peak atomic.Uint64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()

	var wg sync.WaitGroup
	var tryLaters atomic.Int64
	errs := make(chan error, clients)
	for range clients {
		wg.Go(func() {
			c, err := net.Dial("tcp", hs.srv.Addr())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			for {
				reply, err := scribetest.Call(c, frame)
				if err != nil {
					errs <- err
					return
				}
				if bytes.HasSuffix(reply, scribetest.OK) {
					return
				}
				tryLaters.Add(1)
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	close(stopSampling)
	<-sampled
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got.Load() != clients || h.bytes.Load() != clients*msgSize {
		t.Fatalf("accepted %d entries (%d bytes), want %d", got.Load(), h.bytes.Load(), clients)
	}
	grew := int64(peak.Load()) - int64(base)
	limit := int64(2*(budget+budget/2+len(frame))) + 16<<20
	t.Logf("heap peak %d MiB over a base of %d MiB (limit %d MiB); %d TRY_LATER answers", grew>>20, base>>20, limit>>20, tryLaters.Load())
	if grew > limit {
		t.Fatalf("heap grew by %d MiB, over the bound of %d MiB", grew>>20, limit>>20)
	}
	testkit.WaitFor(t, "the budget to be free", func() bool { return b.Used() == 0 })
}

// TestCallOverTheWholeBudgetIsTaken: a call whose decoding needs more
// than the whole in-flight budget (6,000 empty entries: a frame of
// ~100 KB, charged 256 KiB, whose decoding is charged 64 bytes an entry
// and 16 a string, ~580 KB, under a budget of 300 KiB) takes all of it
// and runs alone: it is answered OK, on the generated code's decode
// and on the fast path, and gives it all back. (Before, it was
// answered TRY_LATER however idle the server, and a stock client sent
// it again for ever: that app's logging stalled, silently.)
func TestCallOverTheWholeBudgetIsTaken(t *testing.T) {
	const n = 6000
	tiny := scribetest.LogFrameOf("c", nil, n)
	slow := &countingHandler{n: new(atomic.Int64)}
	fast := &countingEntries{countingHandler: countingHandler{n: new(atomic.Int64)}}
	for name, h := range map[string]Handler{"generated": slow, "fast": fast} {
		reg := prometheus.NewRegistry()
		b := thriftsrv.NewBudget(300<<10, reg)
		hs := serve(t, h, thriftsrv.Limits{}, thriftsrv.WithBudget(b))
		c := dial(t, hs.srv.Addr())
		// Twice: the first call left the whole budget free.
		for range 2 {
			if reply := call(t, c, tiny); !bytes.HasSuffix(reply, scribetest.OK) {
				t.Fatalf("%s: answered %x, want OK; log: %s", name, reply, hs.logs.String())
			}
		}
		testkit.WaitFor(t, "the budget to be free", func() bool { return b.Used() == 0 })
		if len(hs.logs.Lines("max_inflight_bytes", "alone")) == 0 {
			t.Errorf("%s: no log line says the call ran alone: %s", name, hs.logs.String())
		}
		if n := (&harness{reg: reg}).metric(t, "freeway_thrift_inflight_alone_total"); n != 2 {
			t.Errorf("%s: calls alone counted %v, want 2", name, n)
		}
	}
	if got := slow.n.Load(); got != 2*n {
		t.Errorf("generated decode took %d entries, want %d", got, 2*n)
	}
	if got := fast.fast.Load(); got != 2*n {
		t.Errorf("fast path took %d entries, want %d", got, 2*n)
	}
}

// gate holds a Log call of the one message "hold" until open is closed.
type gate struct {
	countingHandler
	entered, open chan struct{}
}

func (g *gate) Log(ctx context.Context, es []*scribethrift.LogEntry) (scribethrift.ResultCode, error) {
	if len(es) == 1 && string(es[0].Message) == "hold" {
		g.entered <- struct{}{}
		<-g.open
	}
	return g.countingHandler.Log(ctx, es)
}

func (g *gate) LogBatch(ctx context.Context, b *scribethrift.Batch) (scribethrift.ResultCode, error) {
	return g.Log(ctx, b.Messages)
}

// TestDecodeWaitsForRoom: a call whose decoding needs budget that another
// call holds waits for it, in turn, and is taken once that call is done;
// if the room does not come within budget_wait it is answered TRY_LATER
// and counted, its connection still usable, and taken when sent again.
// (Before, it was answered TRY_LATER at once, whenever the budget was
// not free at the very moment it decoded.)
func TestDecodeWaitsForRoom(t *testing.T) {
	tiny := scribetest.LogFrameOf("c", nil, 6000)
	for _, refused := range []bool{false, true} {
		g := &gate{countingHandler: countingHandler{n: new(atomic.Int64)}, entered: make(chan struct{}, 1), open: make(chan struct{})}
		reg := prometheus.NewRegistry()
		b := thriftsrv.NewBudget(300<<10, reg)
		wait := time.Minute
		if refused {
			wait = 200 * time.Millisecond
		}
		hs := serve(t, g, thriftsrv.Limits{BudgetWait: wait}, thriftsrv.WithBudget(b))
		// Open on a failure too, before the server stops (it waits for
		// the held call).
		openGate := sync.OnceFunc(func() { close(g.open) })
		t.Cleanup(openGate)
		holder := make(chan []byte, 1)
		hc := dial(t, hs.srv.Addr())
		go func() {
			r, _ := scribetest.Call(hc, small("hold"))
			holder <- r
		}()
		<-g.entered
		c := dial(t, hs.srv.Addr())
		replied := make(chan []byte, 1)
		go func() {
			r, _ := scribetest.Call(c, tiny)
			replied <- r
		}()
		if refused {
			// The holder holds on until the answer.
			if r := <-replied; !bytes.HasSuffix(r, scribetest.TryLater) {
				t.Fatalf("answered %x with no room within budget_wait, want TRY_LATER", r)
			}
			if n := hs.metric(t, "freeway_thrift_calls_refused_total", "reason", "busy"); n != 1 {
				t.Fatalf("busy refusals counted %v", n)
			}
		} else {
			budget := &harness{reg: reg}
			testkit.WaitFor(t, "the call to wait for room, or be answered", func() bool {
				return budget.metric(t, "freeway_thrift_inflight_waits_total") > 0 || len(replied) > 0
			})
			if len(replied) > 0 {
				t.Fatalf("answered %x while another call held the room it needs", <-replied)
			}
		}
		openGate()
		if r := <-holder; !bytes.HasSuffix(r, scribetest.OK) {
			t.Fatalf("holder answered %x", r)
		}
		if refused {
			go func() {
				r, _ := scribetest.Call(c, tiny)
				replied <- r
			}()
		}
		if r := <-replied; !bytes.HasSuffix(r, scribetest.OK) {
			t.Fatalf("refused=%v: answered %x once the room was free, want OK; log: %s", refused, r, hs.logs.String())
		}
		if got := g.n.Load(); got != 6001 {
			t.Fatalf("refused=%v: took %d entries, want 6001", refused, got)
		}
		testkit.WaitFor(t, "the budget to be free", func() bool { return b.Used() == 0 })
	}
}

// TestFastPathChargesBeforeItAllocates: a Log call of many tiny entries
// (2 MiB of them, 131,072) taken on the fast path and finding no room
// for what decoding it takes (part of the budget is held past
// budget_wait) is refused before its entries are decoded: serving it
// allocates about what its frame holds (its chunks, its arguments in
// one slice), not what its ~6 MiB of entries would. (Before, the fast
// path decoded every entry, and only then asked the budget for them:
// calls refused, or waiting for room, had spent memory the budget was
// to bound.)
func TestFastPathChargesBeforeItAllocates(t *testing.T) {
	frame := scribetest.LogFrameOf("c", nil, 1<<17)
	h := &countingEntries{countingHandler: countingHandler{n: new(atomic.Int64)}}
	b := thriftsrv.NewBudget(8<<20, nil)
	hs := serve(t, h, thriftsrv.Limits{BudgetWait: 100 * time.Millisecond}, thriftsrv.WithBudget(b))
	held, _ := b.Acquire(context.Background(), 1<<20, 0)
	c := dial(t, hs.srv.Addr())
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	reply := call(t, c, frame)
	runtime.ReadMemStats(&after)
	if !bytes.HasSuffix(reply, scribetest.TryLater) {
		t.Fatalf("answered %x without room for its entries, want TRY_LATER", reply)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("serving a refused call of %d bytes allocated %d bytes", len(frame), alloc)
	if alloc > uint64(3*len(frame)) {
		t.Fatalf("serving a refused call of %d bytes allocated %d bytes, over 3 times its frame", len(frame), alloc)
	}
	b.Release(held)
	if reply := call(t, c, frame); !bytes.HasSuffix(reply, scribetest.OK) {
		t.Fatalf("answered %x with the budget free, want OK", reply)
	}
	if got := h.fast.Load(); got != 1<<17 {
		t.Fatalf("fast path took %d entries", got)
	}
	testkit.WaitFor(t, "the budget to be free", func() bool { return b.Used() == 0 })
}

// TestStopIsNotABusyRefusal: a call waiting for room in the budget when
// the server stops has its connection closed, as every connection not
// processing a call; it is not counted or logged as refused for want of
// room. (Before, each such call counted a busy refusal and logged "no
// room under max_inflight_bytes" at every stop: a false sign that the
// budget was too small.)
func TestStopIsNotABusyRefusal(t *testing.T) {
	reg := prometheus.NewRegistry()
	b := thriftsrv.NewBudget(1<<20, reg)
	hs := serve(t, &recorder{}, thriftsrv.Limits{BudgetWait: time.Hour}, thriftsrv.WithBudget(b))
	held, _ := b.Acquire(context.Background(), 1<<20, 0)
	defer b.Release(held)
	c := dial(t, hs.srv.Addr())
	if _, err := c.Write(small("waits")); err != nil {
		t.Fatal(err)
	}
	budget := &harness{reg: reg}
	testkit.WaitFor(t, "the call to wait for room", func() bool { return budget.metric(t, "freeway_thrift_inflight_waits_total") == 1 })
	hs.stop()
	if err := closedByServer(c); err != nil {
		t.Fatal(err)
	}
	if n := hs.metric(t, "freeway_thrift_calls_refused_total", "reason", "busy"); n != 0 {
		t.Errorf("busy refusals counted %v at stop", n)
	}
	if lines := hs.logs.Lines("call refused"); len(lines) != 0 {
		t.Errorf("logged at stop: %q", lines)
	}
}

// panicking panics in every call, as a handler with a bug; with
// entries, on the fast path.
type panicking struct{ countingHandler }

func (*panicking) Log(context.Context, []*scribethrift.LogEntry) (scribethrift.ResultCode, error) {
	panic("a handler's bug")
}

type panickingEntries struct{ countingEntries }

func (*panickingEntries) LogEntries(context.Context, []scribewire.Entry) (scribethrift.ResultCode, error) {
	panic("a handler's bug")
}

// TestHandlerPanicGivesBackItsCharge: a call whose handler panics (its
// connection is closed, the process goes on) gives back all it held of
// the budget, also what its decoding took beyond its frame's charge.
// (Before, that part was kept for good: each such call made the budget
// smaller, until every call was refused.)
func TestHandlerPanicGivesBackItsCharge(t *testing.T) {
	tiny := scribetest.LogFrameOf("c", nil, 6000) // decoding takes more than its frame's charge
	for name, h := range map[string]Handler{"generated": &panicking{}, "fast": &panickingEntries{}} {
		b := thriftsrv.NewBudget(4<<20, nil)
		hs := serve(t, h, thriftsrv.Limits{}, thriftsrv.WithBudget(b))
		c := dial(t, hs.srv.Addr())
		if _, err := c.Write(tiny); err != nil {
			t.Fatal(err)
		}
		if err := closedByServer(c); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		// The connection is closed after its call gave back what it held.
		if used := b.Used(); used != 0 {
			t.Errorf("%s: the budget holds %d bytes after the call's handler panicked", name, used)
		}
		if n := hs.metric(t, "freeway_thrift_connections_closed_total", "reason", "panic"); n != 1 {
			t.Errorf("%s: panics counted %v", name, n)
		}
	}
}

// blocking holds Log calls until their context ends, then answers
// TRY_LATER, as a writer that cannot make entries durable while stopping.
type blocking struct{ entered chan struct{} }

func (b *blocking) Log(ctx context.Context, _ []*scribethrift.LogEntry) (scribethrift.ResultCode, error) {
	b.entered <- struct{}{}
	<-ctx.Done()
	return scribethrift.ResultCode_TRY_LATER, nil
}

func (b *blocking) LogBatch(ctx context.Context, _ *scribethrift.Batch) (scribethrift.ResultCode, error) {
	return b.Log(ctx, nil)
}

// TestStopAnswersCallsInProgress: when the server stops, a call being
// processed is answered (here TRY_LATER) before its connection closes,
// and idle connections are closed.
func TestStopAnswersCallsInProgress(t *testing.T) {
	h := &blocking{entered: make(chan struct{}, 1)}
	hs := serve(t, h, thriftsrv.Limits{})
	idle := dial(t, hs.srv.Addr())
	busy := dial(t, hs.srv.Addr())
	replied := make(chan []byte, 1)
	go func() {
		r, _ := scribetest.Call(busy, small("in flight"))
		replied <- r
	}()
	<-h.entered
	hs.stop()
	if r := <-replied; !bytes.HasSuffix(r, scribetest.TryLater) {
		t.Fatalf("call in progress at stop answered %x", r)
	}
	if err := closedByServer(idle); err != nil {
		t.Fatal(err)
	}
}
