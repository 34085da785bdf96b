package thriftsrv

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/testkit"
)

func strictHeader(name string, typ byte, seq uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, 0x80010000|uint32(typ))
	b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
	return binary.BigEndian.AppendUint32(b, seq)
}

func oldHeader(name string, typ byte, seq uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = append(b, typ)
	return binary.BigEndian.AppendUint32(b, seq)
}

func TestReadHeader(t *testing.T) {
	args := []byte{0} // an empty argument struct
	cases := []struct {
		name    string
		payload []byte
		want    Call
		err     string // substring; "" for success
		proto   bool   // a protocolError
	}{
		{"strict call", append(strictHeader("Log", 1, 7), args...), Call{Name: "Log", Type: thrift.CALL, SeqID: 7}, "", false},
		{"non-strict call", append(oldHeader("LogBatch", 1, 9), args...), Call{Name: "LogBatch", Type: thrift.CALL, SeqID: 9}, "", false},
		{"oneway", append(strictHeader("shutdown", 4, 1), args...), Call{Name: "shutdown", Type: thrift.ONEWAY, SeqID: 1}, "", false},
		{"a reply", append(strictHeader("Log", 2, 1), args...), Call{}, "is not a call", false},
		{"bad version", append([]byte{0x80, 0x02, 0, 1}, strictHeader("Log", 1, 1)[4:]...), Call{}, "bad binary protocol version", false},
		{"empty name", oldHeader("", 1, 1), Call{}, "method name of 0 bytes", false},
		{"binary name", append(oldHeader("a\x00b", 1, 1), args...), Call{}, "not printable", false},
		{"frame ends in the header", strictHeader("Log", 1, 1)[:9], Call{}, "too short", false},
		{"unframed non-strict, short name", []byte("Log"), Call{}, "unframed (buffered) transport with a non-strict", true},
		{"unframed non-strict, long name", []byte("getCounters"), Call{}, "unframed (buffered) transport with a non-strict", true},
		{"compact in a frame", []byte{0x82, 0x21, 0x01, 0x03, 'L', 'o', 'g'}, Call{}, "compact protocol", true},
		{"THeader", []byte{0x0f, 0xff, 0, 0, 0, 1, 0, 0}, Call{}, "THeader", true},
	}
	for _, tc := range cases {
		size := int64(len(tc.payload))
		got, head, err := readHeader(bytes.NewReader(tc.payload), size, nil)
		if int64(len(head)) > size {
			t.Errorf("%s: read %d bytes of a %d-byte frame", tc.name, len(head), size)
		}
		if tc.err == "" {
			tc.want.Bytes = size
			if err != nil || got != tc.want || !bytes.Equal(head, tc.payload[:len(head)]) {
				t.Errorf("%s: %+v %v, want %+v", tc.name, got, err, tc.want)
			}
			continue
		}
		var pe *protocolError
		if err == nil || !strings.Contains(err.Error(), tc.err) || errors.As(err, &pe) != tc.proto {
			t.Errorf("%s: %v, want an error with %q (protocol error: %v)", tc.name, err, tc.err, tc.proto)
		}
	}
}

func TestSniffSize(t *testing.T) {
	for _, tc := range []struct {
		h    string
		size int64
		err  string
	}{
		{"\x00\x00\x01\x00", 256, ""},
		{"\x0f\xff\xff\xff", 0x0fffffff, ""},
		{"\x80\x01\x00\x01", 0, "unframed (buffered) transport with the binary protocol"},
		{"\x82\x21\x01\x03", 0, "compact protocol, unframed"},
		{"\x16\x03\x01\x00", 0, "TLS"},
		{"GET ", 0, "HTTP"},
		{"POST", 0, "HTTP"},
		{"PRI ", 0, "HTTP"},
		{"\x00\x00\x00\x00", 0, "empty frame"},
		{"\xff\xff\xff\xff", 0, "not a frame size"},
	} {
		size, err := sniffSize([4]byte([]byte(tc.h)))
		if tc.err == "" && (err != nil || size != tc.size) || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%q: %d %v, want %d %q", tc.h, size, err, tc.size, tc.err)
		}
	}
}

func TestBudgetServesInOrder(t *testing.T) {
	b := NewBudget(100, nil)
	ctx := context.Background()
	if n, ok := b.Acquire(ctx, 60, time.Minute); !ok || n != 60 {
		t.Fatal("first acquire")
	}
	granted := make(chan string, 2)
	go func() {
		if _, ok := b.Acquire(ctx, 60, time.Minute); ok {
			granted <- "big"
		}
	}()
	waitWaiters(t, b, 1)
	go func() {
		// Would fit now, but queues behind the big one.
		if _, ok := b.Acquire(ctx, 10, time.Minute); ok {
			granted <- "small"
		}
	}()
	waitWaiters(t, b, 2)
	if b.Used() != 60 {
		t.Fatalf("a later, smaller request went ahead: used %d", b.Used())
	}
	// A decode's extra is not queued.
	if !b.TryAcquire(5) || b.TryAcquire(50) {
		t.Fatal("TryAcquire")
	}
	b.Release(5)
	b.Release(60)
	<-granted
	<-granted
	if b.Used() != 70 {
		t.Fatalf("used %d", b.Used())
	}
	// A waiter that times out takes nothing and lets the next through.
	if _, ok := b.Acquire(ctx, 40, 10*time.Millisecond); ok {
		t.Fatal("acquired over the budget")
	}
	if _, ok := b.Acquire(ctx, 30, 10*time.Millisecond); !ok {
		t.Fatal("room left unused after a waiter timed out")
	}
	// A request over the whole budget takes all of it, once free.
	b.Release(100)
	if n, ok := b.Acquire(ctx, 500, time.Second); !ok || n != 100 {
		t.Fatalf("oversized request: %d %v", n, ok)
	}
}

// TestGrowInTurn: a call that needs more as it decodes waits for it
// before new calls, takes at most the rest of the budget (and then runs
// alone), and does not wait while holding what another such call needs
// to finish: that one would wait for it in turn.
func TestGrowInTurn(t *testing.T) {
	ctx := context.Background()
	b := NewBudget(100, nil)
	a, _ := b.Acquire(ctx, 50, 0)
	other, _ := b.Acquire(ctx, 30, 0)
	grown := make(chan int64, 1)
	go func() {
		got, ok, _ := b.grow(ctx, a, 80, time.Minute)
		if !ok {
			got = -1
		}
		grown <- got
	}()
	waitWaiters(t, b, 1)
	// 20 are free, but a new call waits behind the growing one.
	newCall := make(chan bool, 1)
	go func() {
		_, ok := b.Acquire(ctx, 10, time.Minute)
		newCall <- ok
	}()
	waitWaiters(t, b, 2)
	// Another call growing while the first waits is refused at once: it
	// holds what the first needs, and the first what it needs.
	if got, ok, _ := b.grow(ctx, other, 60, time.Hour); ok {
		t.Fatalf("a second call grew by %d while the first waited for what it holds", got)
	}
	b.Release(other)
	if got := <-grown; got != 50 {
		t.Fatalf("grew by %d, want the rest of the budget, 50", got)
	}
	if b.Used() != 100 {
		t.Fatalf("used %d with the grown call alone", b.Used())
	}
	b.Release(a + 50)
	if !<-newCall {
		t.Fatal("the new call was refused")
	}
	b.Release(10)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used != 0 || len(b.claims) != 0 || b.claimsHeld != 0 {
		t.Fatalf("left: used %d, %d claims holding %d", b.used, len(b.claims), b.claimsHeld)
	}
}

func waitWaiters(t *testing.T, b *Budget, n int) {
	t.Helper()
	testkit.Eventually(t, "budget waiters", func() error {
		b.mu.Lock()
		got := b.waiters.Len() + b.reading.Len()
		b.mu.Unlock()
		if got != n {
			return fmt.Errorf("%d waiters, want %d", got, n)
		}
		return nil
	})
}

func TestCharge(t *testing.T) {
	for _, tc := range []struct{ n, want int64 }{
		{1, 2 * smallChunk}, {smallChunk, 2 * smallChunk}, {smallChunk + 1, 2 * chunkSize}, {15_000_000, 2 * 229 * chunkSize},
	} {
		if got := Charge(tc.n); got != tc.want {
			t.Errorf("Charge(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

func TestPortConfigValidate(t *testing.T) {
	p := DefaultPortConfig()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	p.MaxCallBytes, p.MaxConnections, p.IdleTimeout, p.ReadTimeout = 1<<30, 0, 0, -1
	err := config.Under("$.agent", p.Validate())
	for _, want := range []string{"agent.max_call_bytes: must be between 1KiB and 256MiB", "agent.max_connections", "agent.idle_timeout", "agent.read_timeout"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want %q", err, want)
		}
	}
}

// TestEmptyStringAtChunkEnd: a frame that ends, exactly at a chunk's
// end, with an empty string reads it (it used to index past the chunks).
func TestEmptyStringAtChunkEnd(t *testing.T) {
	for _, size := range []int{smallChunk, chunkSize * 2} {
		b := NewBudget(1<<20, nil)
		fr := &frameReader{budget: b}
		if err := fr.fill(bytes.NewReader(make([]byte, size)), nil, int64(size), nil); err != nil {
			t.Fatal(err)
		}
		in := newCallProtocol(fr, DefaultLimits().Config())
		in.reset(1<<20, 0)
		if _, err := fr.Read(make([]byte, size-4)); err != nil {
			t.Fatal(err)
		}
		for fr.left > 4 {
			if _, err := fr.Read(make([]byte, fr.left-4)); err != nil {
				t.Fatal(err)
			}
		}
		if s, err := in.ReadString(context.Background()); err != nil || s != "" {
			t.Fatalf("size %d: %q %v", size, s, err)
		}
		if _, err := in.ReadBinary(context.Background()); err == nil {
			t.Fatalf("size %d: read past the end of the frame", size)
		}
		fr.release()
	}
}

// TestFrameReadsTheSameWhole: a frame read into one slice (several
// chunks' worth, up to maxFlatPooled) and one read into chunks (larger)
// give the same bytes through Read, ReadByte and rest, whatever the
// head already read; rest hands a frame read whole out in place, and
// one read in chunks is read from rest's copy after it.
func TestFrameReadsTheSameWhole(t *testing.T) {
	for _, size := range []int{1, smallChunk, smallChunk + 1, chunkSize, chunkSize + 1, 3*chunkSize + 7, maxFlatPooled, maxFlatPooled + 1, 3*chunkSize*7 + 5} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i*7 + i>>9)
		}
		b := NewBudget(1<<30, nil)
		fr := &frameReader{budget: b}
		for round := range 2 { // the second from pooled buffers
			head := data[:min(size, 11+round)]
			if err := fr.fill(bytes.NewReader(data[len(head):]), head, int64(size), nil); err != nil {
				t.Fatal(err)
			}
			copied := fr.copies() > 0
			rest := fr.rest()
			if !bytes.Equal(rest, data) {
				t.Fatalf("size %d: rest differs", size)
			}
			// One chunk, or one slice up to maxFlatPooled: in place.
			if want := size > maxFlatPooled; copied != want {
				t.Fatalf("size %d: rest copied the frame: %v, want %v", size, copied, want)
			}
			// A copy takes the chunks' place: the frame is read from it.
			if copied && (fr.whole == nil || len(fr.chunks) != 1 || &(*fr.whole)[0] != &rest[0] || fr.copies() != 0) {
				t.Fatalf("size %d: the frame is not read from its copy, its chunks given back", size)
			}
			got := make([]byte, 0, size)
			c, _ := fr.ReadByte()
			got = append(got, c)
			for fr.left > 0 {
				p := make([]byte, min(int(fr.left), 1000+round*chunkSize))
				n, err := fr.Read(p)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, p[:n]...)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("size %d: read differs", size)
			}
			if fr.held() < int64(size) {
				t.Fatalf("size %d: held %d", size, fr.held())
			}
			fr.release()
		}
	}
}

// TestClaimsNeverWaitOnEachOther: calls read in chunks take their claims
// as they arrive; a chunk that would leave no call able to finish waits
// (and is refused after its wait) instead of being given, so two calls
// each half read never hold the budget between them for good, while a
// stalled claim, however large, holds back no one.
func TestClaimsNeverWaitOnEachOther(t *testing.T) {
	ctx := context.Background()
	b := NewBudget(100, nil)
	var c1, c2 claim
	b.open(&c1, 80, nil)
	b.open(&c2, 80, nil)
	for _, step := range []struct {
		c    *claim
		n    int64
		want bool
	}{
		{&c1, 10, true}, {&c2, 10, true}, {&c1, 30, true},
		// Both would hold 40 needing 40 more with 20 free.
		{&c2, 30, false},
	} {
		if ok, _ := b.take(ctx, step.c, step.n, 10*time.Millisecond); ok != step.want {
			t.Fatalf("take %d: %v, want %v (used %d)", step.n, ok, step.want, b.Used())
		}
	}
	b.Release(b.close(&c1))
	b.Release(b.close(&c2))

	// A chunk that fits but would leave neither call able to finish waits
	// for the other to finish, then is given.
	b.open(&c1, 80, nil)
	b.open(&c2, 80, nil)
	if ok1, _ := b.take(ctx, &c1, 40, 0); !ok1 {
		t.Fatal("c1")
	}
	if ok2, _ := b.take(ctx, &c2, 10, 0); !ok2 {
		t.Fatal("c2")
	}
	granted := make(chan bool, 1)
	go func() {
		ok, _ := b.take(ctx, &c2, 20, time.Minute)
		granted <- ok
	}()
	waitWaiters(t, b, 1)
	// Requests that may be given are not held up behind it: a call of
	// one chunk, and the other call's next chunks.
	if n, ok := b.Acquire(ctx, 5, time.Minute); !ok {
		t.Fatal("a call of one chunk waited behind a claim's chunk that must wait")
	} else {
		b.Release(n)
	}
	if ok, _ := b.take(ctx, &c1, 40, time.Minute); !ok {
		t.Fatal("the call that can finish waited")
	}
	select {
	case <-granted:
		t.Fatal("chunk given while the other call could not finish")
	default:
	}
	b.Release(b.close(&c1))
	if !<-granted {
		t.Fatal("chunk not given once the other call finished")
	}
	b.Release(b.close(&c2))
	if b.Used() != 0 {
		t.Fatalf("used %d", b.Used())
	}

	// A call being read takes its next chunks before a new call that
	// waited first: the new call may need the room the other frees once
	// read.
	p1, _ := b.Acquire(ctx, 60, 0)
	b.open(&c1, 40, nil)
	if ok, _ := b.take(ctx, &c1, 20, 0); !ok {
		t.Fatal("first chunk")
	}
	newCall := make(chan bool, 1)
	go func() {
		_, ok := b.Acquire(ctx, 30, time.Minute)
		newCall <- ok
	}()
	waitWaiters(t, b, 1)
	if ok, _ := b.take(ctx, &c1, 20, 0); !ok {
		t.Fatal("a call being read waited behind a new call")
	}
	b.Release(b.close(&c1))
	if !<-newCall {
		t.Fatal("new call")
	}
	b.Release(p1 + 30)

	// A claim stalled near its start, with most of the budget still to
	// come, goes last: another call reads all of its own.
	var stalled, other claim
	b.open(&stalled, 100, nil)
	b.open(&other, 90, nil)
	if ok, _ := b.take(ctx, &stalled, 10, time.Millisecond); !ok {
		t.Fatal("first chunk")
	}
	for range 9 {
		if ok, _ := b.take(ctx, &other, 10, time.Millisecond); !ok {
			t.Fatalf("held back by a stalled claim (used %d)", b.Used())
		}
	}
	b.Release(b.close(&other))
	b.Release(b.close(&stalled))
}

// TestClaimsUnderContention: calls of many sizes taking their claims
// chunk by chunk at once, each up to the whole budget, all end (given or
// refused after a short wait) with the budget never over its limit, and
// some are served: one that can finish is never kept waiting by others.
func TestClaimsUnderContention(t *testing.T) {
	const limit, calls = 1000, 8
	b := NewBudget(limit, nil)
	var served, refused atomic.Int64
	var wg sync.WaitGroup
	for g := range calls {
		wg.Go(func() {
			var c claim
			for i := range 25 {
				total := int64(100 + (g*131+i*71)%901)
				b.open(&c, total, nil)
				ok := true
				for got := int64(0); ok && got < total; got += 50 {
					ok, _ = b.take(context.Background(), &c, 50, 20*time.Millisecond)
					time.Sleep(time.Millisecond) // the chunk arriving
					if u := b.Used(); u > limit {
						t.Errorf("used %d over the limit", u)
					}
				}
				held := b.close(&c)
				if ok {
					served.Add(1)
					if held != total {
						t.Errorf("held %d of a claim of %d", held, total)
					}
				} else {
					refused.Add(1)
				}
				b.Release(held)
			}
		})
	}
	wg.Wait()
	t.Logf("%d served, %d refused", served.Load(), refused.Load())
	if b.Used() != 0 || served.Load() == 0 {
		t.Fatalf("used %d after; %d served, %d refused", b.Used(), served.Load(), refused.Load())
	}
}

// TestPeerShare: a call of a peer whose calls hold a quarter of the
// budget ahead of their bytes waits to start, without holding up
// another peer's call queued behind it, and starts once the peer's
// frames are in; a claim's chunks after its first are not held up, and
// count instead of the chunks before them.
func TestPeerShare(t *testing.T) {
	b := NewBudget(200, nil)
	ctx := context.Background()
	ahead := func(p *peer) int64 {
		b.mu.Lock()
		defer b.mu.Unlock()
		return p.ahead
	}
	a, other := b.peerOf("192.0.2.1"), b.peerOf("192.0.2.2")
	if ok, _ := b.acquire(ctx, 40, nil, a, time.Minute); !ok {
		t.Fatal("first call of a")
	}
	started := make(chan struct{})
	go func() {
		if ok, _ := b.acquire(ctx, 20, nil, a, time.Minute); ok {
			close(started)
		}
	}()
	waitWaiters(t, b, 1)
	// Another peer's call goes, though a's waits before it.
	if ok, _ := b.acquire(ctx, 20, nil, other, time.Minute); !ok {
		t.Fatal("other peer's call")
	}
	var c claim
	b.open(&c, 100, other)
	if ok, _ := b.take(ctx, &c, 20, time.Minute); !ok {
		t.Fatal("other peer's claim")
	}
	// Its next chunk, over the share with the peer's other call.
	if ok, _ := b.take(ctx, &c, 60, time.Minute); !ok {
		t.Fatal("other peer's claim's next chunk")
	}
	if got := ahead(other); got != 20+60 {
		t.Fatalf("other holds %d ahead, want its call's 20 and its claim's chunk of 60", got)
	}
	b.doneReading(other, 20)
	select {
	case <-started:
		t.Fatal("a's second call started while a held its share ahead")
	default:
	}
	b.doneReading(a, 40)
	<-started
	if got := b.Used(); got != 40+20+20+80 {
		t.Fatalf("used %d", got)
	}
	b.Release(b.close(&c))
	if got := ahead(other); got != 0 {
		t.Fatalf("other holds %d ahead with nothing being read", got)
	}
	b.doneReading(a, 20)
	b.donePeer(a)
	b.donePeer(other)
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.peers) != 0 {
		t.Fatalf("peers kept after their connections: %v", b.peers)
	}
}

// panicReader panics when read, as a bug on the path a frame is read
// through would.
type panicReader struct{}

func (panicReader) Read([]byte) (int, error) { panic("a bug reading the frame") }

// TestPanicReadingAFrameGivesBackItsCharge: a panic while a call's frame
// is read (serveConn recovers it and closes the connection) leaves
// nothing of the call's charge in the budget, whether the frame was
// charged at once (one chunk; read whole into one slice) or chunk by
// chunk under a claim. (Before, what the call had taken was kept for
// good, and a claim stayed among those every later chunk had to leave
// room for.)
func TestPanicReadingAFrameGivesBackItsCharge(t *testing.T) {
	b := NewBudget(4<<20, nil)
	s := &Server{budget: b, limits: Limits{}.withDefaults()}
	cn := &conn{br: bufio.NewReader(panicReader{}), bp: b.peerOf("peer")}
	for _, size := range []int64{1 << 10, 200 << 10, 2 << 20} {
		panicked := func() (v any) {
			defer func() { v = recover() }()
			_, _ = s.readFrame(context.Background(), cn, Call{Bytes: size}, nil, &frameReader{budget: b}, &arrival{s: s, cn: cn, wait: time.Minute})
			return nil
		}()
		if panicked == nil {
			t.Fatalf("frame of %d bytes: the read did not panic", size)
		}
		b.mu.Lock()
		used, claims, ahead := b.used, len(b.claims), cn.bp.ahead
		b.mu.Unlock()
		if used != 0 || claims != 0 || ahead != 0 || b.flat.Load() != 0 {
			t.Errorf("frame of %d bytes: after a panic reading it the budget holds %d bytes, %d claims, %d ahead of the peer's bytes, %d of flat frames",
				size, used, claims, ahead, b.flat.Load())
		}
		b.mu.Lock()
		b.used, b.claims, b.claimsHeld, cn.bp.ahead = 0, nil, 0, 0
		b.mu.Unlock()
	}
}
