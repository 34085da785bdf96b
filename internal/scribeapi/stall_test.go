package scribeapi

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/scribeapi/scribetest"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
)

// stall sends the start of a Log call declaring a frame of size bytes:
// the frame size, the message header, then body bytes of its arguments,
// and nothing more.
func stall(t *testing.T, addr string, size, body int) net.Conn {
	t.Helper()
	c := dial(t, addr)
	start := scribetest.LogFrameOf("c", bytes.Repeat([]byte("s"), body), 1)
	start = start[:min(len(start), 4+15+body)] // size, header (15 bytes), body
	start[0], start[1], start[2], start[3] = byte(size>>24), byte(size>>16), byte(size>>8), byte(size)
	if _, err := c.Write(start); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestStalledCallsDoNotHoldTheBudget: two connections that declare 64 MiB
// frames and then send (almost) nothing hold budget in proportion to what
// they sent, not to what they declared, so another client's call is
// answered OK, not TRY_LATER. (Before, each took 128 MiB of the default
// 256 MiB budget until read_timeout: every other call waited
// budget_wait, was answered TRY_LATER, and the agent's and writer's ports
// sharing the budget stopped.)
func TestStalledCallsDoNotHoldTheBudget(t *testing.T) {
	rec := &recorder{}
	b := thriftsrv.NewBudget(thriftsrv.DefaultBudget, nil)
	hs := serve(t, rec, thriftsrv.Limits{ReadTimeout: time.Minute}, thriftsrv.WithBudget(b))
	const declared = 64 << 20
	// Header only: nothing of the body has arrived.
	stall(t, hs.srv.Addr(), declared, 0)
	stall(t, hs.srv.Addr(), declared, 0)
	testkit.WaitFor(t, "2 connections in a call", func() bool {
		return hs.metric(t, "freeway_listener_connections") == 2 && hs.metric(t, "freeway_listener_idle_connections") == 0
	})
	if reply := call(t, dial(t, hs.srv.Addr()), small("while two calls stall")); !bytes.HasSuffix(reply, scribetest.OK) {
		t.Fatalf("answered %x, want OK", reply)
	}
	// Part of the body: what they hold follows what arrived (twice it,
	// for its decoding, plus at most a 64 KiB chunk and its share).
	const sent = 200 << 10
	stall(t, hs.srv.Addr(), declared, sent)
	stall(t, hs.srv.Addr(), declared, sent)
	bound := int64(2 * 2 * (sent + 2*64<<10))
	testkit.Eventually(t, "the dripping calls' chunks charged", func() error {
		if u := b.Used(); u < 2*sent {
			return fmt.Errorf("budget holds %d, want at least %d", u, 2*sent)
		}
		return nil
	})
	if u := b.Used(); u > bound {
		t.Fatalf("four stalled calls hold %d bytes of the budget, want at most %d", u, bound)
	}
	if reply := call(t, dial(t, hs.srv.Addr()), small("while four calls stall")); !bytes.HasSuffix(reply, scribetest.OK) {
		t.Fatalf("answered %x, want OK", reply)
	}
	if len(rec.entries) != 2 {
		t.Fatalf("received %v", rec.entries)
	}
	if n := hs.metric(t, "freeway_thrift_calls_refused_total", "reason", "busy"); n != 0 {
		t.Fatalf("busy refusals counted %v", n)
	}
}

// TestLargeCallsShareATightBudget: calls of max_call_bytes sent at once
// on four connections, in halves, under a budget of just what one such
// call takes, are each answered OK or TRY_LATER (none hangs with part
// of the budget held while waiting for the rest), and every one gets
// through when its client sends it again.
func TestLargeCallsShareATightBudget(t *testing.T) {
	const (
		clients = 4
		maxCall = 4 << 20
	)
	frame := scribetest.LogFrameOf("big", bytes.Repeat([]byte("x"), maxCall-1024), 1)
	b := thriftsrv.NewBudget(thriftsrv.Charge(maxCall+thriftsrv.Envelope), nil)
	rec := &countingHandler{n: new(atomic.Int64)}
	hs := serve(t, rec, thriftsrv.Limits{MaxCallBytes: maxCall, BudgetWait: 200 * time.Millisecond}, thriftsrv.WithBudget(b))
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	var halves sync.WaitGroup
	halves.Add(clients)
	for range clients {
		wg.Go(func() {
			c, err := net.Dial("tcp", hs.srv.Addr())
			if err != nil {
				errs <- err
				halves.Done()
				return
			}
			defer c.Close()
			// The first time, every client has sent half its call before
			// any sends the rest.
			c.SetDeadline(time.Now().Add(2 * time.Minute))
			_, err = c.Write(frame[:len(frame)/2])
			halves.Done()
			if err != nil {
				errs <- err
				return
			}
			halves.Wait()
			rest := frame[len(frame)/2:]
			for try := 0; ; try++ {
				reply, err := scribetest.Call(c, rest)
				switch {
				case err != nil:
					errs <- fmt.Errorf("try %d: %w", try, err)
					return
				case bytes.HasSuffix(reply, scribetest.OK):
					return
				case !bytes.HasSuffix(reply, scribetest.TryLater):
					errs <- fmt.Errorf("try %d: answered %x", try, reply)
					return
				case try > 200:
					errs <- fmt.Errorf("still TRY_LATER after %d tries", try)
					return
				}
				rest = frame
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := rec.n.Load(); got != clients {
		t.Fatalf("accepted %d calls, want %d", got, clients)
	}
	testkit.WaitFor(t, "the budget to be free", func() bool { return b.Used() == 0 })
}

// TestCallRefusedMidFrame: a call read in chunks that finds no room for
// its next chunk within budget_wait (here because another call, stalled
// three quarters in, holds most of the budget and must be able to
// finish) is answered TRY_LATER, the rest of its frame discarded, and
// counted; its connection then serves a call that fits.
func TestCallRefusedMidFrame(t *testing.T) {
	const maxCall = 4 << 20
	rec := &recorder{}
	b := thriftsrv.NewBudget(thriftsrv.Charge(maxCall+thriftsrv.Envelope), nil)
	hs := serve(t, rec, thriftsrv.Limits{MaxCallBytes: maxCall, BudgetWait: 200 * time.Millisecond}, thriftsrv.WithBudget(b))
	stall(t, hs.srv.Addr(), maxCall, 3<<20)
	testkit.WaitFor(t, "the stalled call's chunks charged", func() bool { return b.Used() >= 2*3<<20 })
	c := dial(t, hs.srv.Addr())
	big := scribetest.LogFrameOf("big", bytes.Repeat([]byte("x"), maxCall-1024), 1)
	if reply := call(t, c, big); !bytes.HasSuffix(reply, scribetest.TryLater) {
		t.Fatalf("answered %x, want TRY_LATER", reply)
	}
	if reply := call(t, c, small("fits")); !bytes.HasSuffix(reply, scribetest.OK) {
		t.Fatalf("answered %x after the refusal, want OK", reply)
	}
	if len(rec.entries) != 1 {
		t.Fatalf("received %v", rec.entries)
	}
	if n := hs.metric(t, "freeway_thrift_calls_refused_total", "reason", "busy"); n != 1 {
		t.Fatalf("busy refusals counted %v", n)
	}
	if !strings.Contains(hs.logs.String(), "no room under max_inflight_bytes") {
		t.Fatalf("no log line: %s", hs.logs.String())
	}
}

// TestStalledFlatFramesHoldAShare: frames of up to 1 MiB are read whole
// into one slice, their charge taken before they arrive, only while
// such frames hold less than an eighth of the budget; beyond it they
// are charged chunk by chunk like larger ones. Twenty clients that send
// the first byte of a 1 MiB frame and stall hold that eighth and a
// chunk each, not twenty frames' charge.
func TestStalledFlatFramesHoldAShare(t *testing.T) {
	const clients, declared = 20, 1 << 20
	rec := &recorder{}
	b := thriftsrv.NewBudget(thriftsrv.DefaultBudget, nil)
	hs := serve(t, rec, thriftsrv.Limits{ReadTimeout: time.Minute}, thriftsrv.WithBudget(b))
	for range clients {
		stall(t, hs.srv.Addr(), declared, 1)
	}
	flat := int64(thriftsrv.DefaultBudget / 8 / thriftsrv.Charge(declared) * thriftsrv.Charge(declared))
	want := flat + (clients-flat/thriftsrv.Charge(declared))*2*64<<10
	testkit.Eventually(t, "the stalled calls charged", func() error {
		if u := b.Used(); u < want {
			return fmt.Errorf("budget holds %d, want %d", u, want)
		}
		return nil
	})
	if u := b.Used(); u != want {
		t.Fatalf("%d stalled calls hold %d bytes of the budget, want %d", clients, u, want)
	}
	if reply := call(t, dial(t, hs.srv.Addr()), small("while twenty calls stall")); !bytes.HasSuffix(reply, scribetest.OK) {
		t.Fatalf("answered %x, want OK", reply)
	}
}

// dialFrom connects to addr from the loopback address ip (127.0.0.2, a
// second peer on this host: Linux routes all of 127/8 to loopback).
func dialFrom(t *testing.T, ip, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Skipf("cannot dial from %s: %v", ip, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestStalledPeerDoesNotLockOutOthers: one peer (127.0.0.2) opening
// many connections, each sending a frame's header and one byte of its
// body and then nothing, holds at most a quarter of the budget (and one
// call more), so another peer's calls, a small one and several larger
// ones at once, are answered OK, not TRY_LATER; so are the first
// peer's own large calls' later chunks, which no such bound holds up.
// (Before, each stalled call held its first chunk's charge, 128 KiB: a
// thousand connections held 128 MiB, and the stallers on a process's
// two Scribe ports held the whole default budget until read_timeout,
// every other client's call answered TRY_LATER.)
func TestStalledPeerDoesNotLockOutOthers(t *testing.T) {
	const (
		limit   = 8 << 20
		charge  = 2 * 64 << 10 // a frame of one chunk's, a larger frame's first chunk's
		small64 = 60 << 10     // a frame of one chunk
		large   = 1 << 20      // a frame read in chunks
	)
	reg := prometheus.NewRegistry()
	b := thriftsrv.NewBudget(limit, reg)
	rec := &countingHandler{n: new(atomic.Int64)}
	hs := serve(t, rec, thriftsrv.Limits{MaxCallBytes: large, ReadTimeout: time.Minute, BudgetWait: 2 * time.Second},
		thriftsrv.WithBudget(b))
	waits := func() int64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "freeway_thrift_inflight_waits_total" {
				return int64(mf.GetMetric()[0].GetCounter().GetValue())
			}
		}
		return 0
	}
	// stallFrom is stall from the hostile peer.
	stallFrom := func(size int) {
		c := dialFrom(t, "127.0.0.2", hs.srv.Addr())
		start := scribetest.LogFrameOf("c", []byte("s"), 1)[:4+15+1]
		start[0], start[1], start[2], start[3] = byte(size>>24), byte(size>>16), byte(size>>8), byte(size)
		if _, err := c.Write(start); err != nil {
			t.Fatal(err)
		}
	}
	// Enough to fill the budget.
	const stallers = limit/charge + 16
	for range stallers {
		stallFrom(small64)
	}
	testkit.Eventually(t, "every stalled call charged or waiting", func() error {
		if n := b.Used()/charge + waits(); n != stallers {
			return fmt.Errorf("%d stalled calls charged or waiting, want %d (budget holds %d)", n, stallers, b.Used())
		}
		return nil
	})
	bound := int64(limit/4 + charge)
	if u := b.Used(); u > bound {
		t.Fatalf("one stalling peer holds %d bytes of the budget, want at most %d", u, bound)
	}
	// Frames read in chunks are bound the same way.
	before := waits()
	for range 8 {
		stallFrom(large)
	}
	testkit.WaitFor(t, "the large stalled calls waiting", func() bool { return waits() == before+8 })
	if u := b.Used(); u > bound {
		t.Fatalf("one stalling peer holds %d bytes of the budget, want at most %d", u, bound)
	}

	if reply := call(t, dial(t, hs.srv.Addr()), small("while a peer stalls")); !bytes.HasSuffix(reply, scribetest.OK) {
		t.Fatalf("answered %x, want OK", reply)
	}
	// Larger calls at once from one peer, within its share, go at once.
	frame := scribetest.LogFrameOf("big", bytes.Repeat([]byte("x"), 200<<10), 1)
	var wg sync.WaitGroup
	replies := make(chan []byte, 4)
	for range 4 {
		c := dial(t, hs.srv.Addr())
		wg.Go(func() {
			reply, err := scribetest.Call(c, frame)
			if err != nil {
				t.Error(err)
			}
			replies <- reply
		})
	}
	wg.Wait()
	close(replies)
	for reply := range replies {
		if !bytes.HasSuffix(reply, scribetest.OK) {
			t.Fatalf("answered %x, want OK", reply)
		}
	}
	if n := rec.n.Load(); n != 5 {
		t.Fatalf("accepted %d calls, want 5", n)
	}
	// The staller's calls that waited are refused, and said to be held
	// back by their host's share, not by the budget's size.
	testkit.WaitFor(t, "the stalled calls' refusal logged", func() bool {
		return strings.Contains(hs.logs.String(), "hold their share of max_inflight_bytes")
	})
}

// TestStallingPeerDoesNotTakeEveryConnection: one peer (127.0.0.2)
// holding every connection up to max_connections, each busy with the
// first byte of a call it never sends, does not lock another peer out:
// the newcomer takes the place of one of its connections; its own
// newcomers are refused. (Before, with every connection busy, every
// newcomer was closed at once until the stalled calls' read_timeout,
// and the staller's new connections evicted the others' idle ones.)
func TestStallingPeerDoesNotTakeEveryConnection(t *testing.T) {
	const maxConns = 8
	rec := &recorder{}
	hs := serve(t, rec, thriftsrv.Limits{MaxConnections: maxConns, ReadTimeout: time.Minute})
	for range maxConns {
		c := dialFrom(t, "127.0.0.2", hs.srv.Addr())
		if _, err := c.Write([]byte{0}); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, "every connection busy", func() bool {
		return hs.metric(t, "freeway_listener_connections") == maxConns && hs.metric(t, "freeway_listener_idle_connections") == 0
	})
	if reply := call(t, dial(t, hs.srv.Addr()), small("while a peer holds every connection")); !bytes.HasSuffix(reply, scribetest.OK) {
		t.Fatalf("answered %x, want OK", reply)
	}
	// One of the staller's connections made room.
	if n := hs.metric(t, "freeway_listener_connections_evicted_total"); n != 1 {
		t.Fatalf("evictions counted %v, want 1", n)
	}
	// The staller's newcomer takes nothing of the other peer's (whose
	// connection is idle now).
	if err := closedByServer(dialFrom(t, "127.0.0.2", hs.srv.Addr())); err != nil {
		t.Fatalf("the staller's newcomer: %v", err)
	}
	if len(rec.entries) != 1 {
		t.Fatalf("received %v", rec.entries)
	}
}

// TestUnreadReplyHoldsNoBudget: a call whose client does not read its
// answer (here getCounters, its answer larger than the sockets'
// buffers, its arguments padded with a 1 MiB field the server skips)
// holds none of the budget while the answer waits to be written. (Before,
// it held its charge until the write gave up at read_timeout: a client
// that sent large calls and read no answers, on a few connections,
// held the whole budget without sending another byte.)
func TestUnreadReplyHoldsNoBudget(t *testing.T) {
	counters := make(map[string]int64, 200_000)
	for i := range 200_000 {
		counters[fmt.Sprintf("a counter with a long name, number %d", i)] = int64(i)
	}
	b := thriftsrv.NewBudget(thriftsrv.DefaultBudget, nil)
	reg := prometheus.NewRegistry()
	srv, err := Listen("127.0.0.1:0", &recorder{}, Info{Name: "t", Metrics: reg, Counters: func() map[string]int64 { return counters }},
		thriftsrv.Limits{ReadTimeout: 10 * time.Minute}, nil, thriftsrv.WithBudget(b))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done //nolint:errcheck // Serve's error after cancel is not what the test checks
	})
	c := dial(t, srv.Addr())
	if err := c.(*net.TCPConn).SetReadBuffer(4 << 10); err != nil {
		t.Fatal(err)
	}
	var f bytes.Buffer
	w32 := func(v uint32) { _ = binary.Write(&f, binary.BigEndian, v) }
	w32(0) // the frame's size, below
	w32(0x80010001)
	w32(uint32(len("getCounters")))
	f.WriteString("getCounters")
	w32(1)
	f.Write([]byte{11, 0, 99}) // an unknown string field, skipped
	w32(1 << 20)
	f.Write(bytes.Repeat([]byte("p"), 1<<20))
	f.WriteByte(0)
	frame := f.Bytes()
	binary.BigEndian.PutUint32(frame, uint32(len(frame)-4))
	if _, err := c.Write(frame); err != nil {
		t.Fatal(err)
	}
	// The answer is never read.
	testkit.Eventually(t, "the call's charge released", func() error {
		if u := b.Used(); u != 0 {
			return fmt.Errorf("budget holds %d", u)
		}
		return nil
	})
}

// TestOnePeersConcurrentCallsDoNotWait: one peer sending many large
// calls at once (a writer forwarding, an agent at max_in_flight 64 with
// batches of 1 MiB) is not held back by its share of the budget: under
// the default budget no call waits.
func TestOnePeersConcurrentCallsDoNotWait(t *testing.T) {
	const clients = 64
	reg := prometheus.NewRegistry()
	b := thriftsrv.NewBudget(thriftsrv.DefaultBudget, reg)
	rec := &countingHandler{n: new(atomic.Int64)}
	hs := serve(t, rec, thriftsrv.Limits{}, thriftsrv.WithBudget(b))
	frame := scribetest.LogFrameOf("big", bytes.Repeat([]byte("x"), 1<<20-100), 1)
	var conns []net.Conn
	for range clients {
		conns = append(conns, dial(t, hs.srv.Addr()))
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			reply, err := scribetest.Call(c, frame)
			if err != nil {
				t.Error(err)
			} else if !bytes.HasSuffix(reply, scribetest.OK) {
				t.Errorf("answered %x, want OK", reply)
			}
		})
	}
	wg.Wait()
	if n := rec.n.Load(); n != clients {
		t.Fatalf("accepted %d calls, want %d", n, clients)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "freeway_thrift_inflight_waits_total" {
			if n := mf.GetMetric()[0].GetCounter().GetValue(); n != 0 {
				t.Fatalf("%v calls waited for room", n)
			}
		}
	}
}

// TestStopDoesNotWaitForAnUnreadReply: a server stopping while it writes
// an answer its client does not read (getCounters, larger than the
// sockets' buffers) gives the write a few seconds, not read_timeout,
// before it returns. (Before, Serve waited the whole read_timeout: a
// client could hold a writer's shutdown, and the publishing of its
// segments after it, that long.)
func TestStopDoesNotWaitForAnUnreadReply(t *testing.T) {
	counters := make(map[string]int64, 200_000)
	for i := range 200_000 {
		counters[fmt.Sprintf("a counter with a long name, number %d", i)] = int64(i)
	}
	asked := make(chan struct{}, 1)
	info := Info{Name: "t", Metrics: prometheus.NewRegistry(), Counters: func() map[string]int64 {
		asked <- struct{}{}
		return counters
	}}
	srv, err := Listen("127.0.0.1:0", &recorder{}, info, thriftsrv.Limits{ReadTimeout: 10 * time.Minute}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer cancel()
	c := dial(t, srv.Addr())
	if err := c.(*net.TCPConn).SetReadBuffer(4 << 10); err != nil {
		t.Fatal(err)
	}
	var f bytes.Buffer
	w32 := func(v uint32) { _ = binary.Write(&f, binary.BigEndian, v) }
	w32(0)
	w32(0x80010001)
	w32(uint32(len("getCounters")))
	f.WriteString("getCounters")
	w32(1)
	f.WriteByte(0)
	frame := f.Bytes()
	binary.BigEndian.PutUint32(frame, uint32(len(frame)-4))
	if _, err := c.Write(frame); err != nil {
		t.Fatal(err)
	}
	<-asked
	// The call is being processed: the server answers it before it
	// stops, but not for ever. The answer is never read.
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testkit.Deadline):
		t.Fatal("Serve did not return while an answer waited to be read")
	}
}
