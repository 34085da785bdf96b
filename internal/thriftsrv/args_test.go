package thriftsrv

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
)

// givingUp serves a call as scribeapi's fast path does when scribewire
// gives up on its arguments: it takes them in one slice (ArgsFrame.Args),
// drops that, and decodes them through the protocol instead, as the
// generated code does (here: a struct of one binary field). It then
// holds what it decoded, before the message's end, until release: where
// a call taking that path holds the most.
type givingUp struct {
	want    []byte // the value sent
	decoded chan error
	release chan struct{}
}

func (g *givingUp) Process(ctx context.Context, in, _ thrift.TProtocol) (bool, thrift.TException) {
	v, err := g.decode(ctx, in)
	g.decoded <- err
	<-g.release
	runtime.KeepAlive(v)
	_ = in.ReadMessageEnd(ctx)
	return err == nil, thrift.WrapTException(err)
}

func (g *givingUp) ProcessorMap() map[string]thrift.TProcessorFunction { return nil }

func (g *givingUp) AddToProcessorMap(string, thrift.TProcessorFunction) {}

func (g *givingUp) decode(ctx context.Context, in thrift.TProtocol) ([]byte, error) {
	if _, _, _, err := in.ReadMessageBegin(ctx); err != nil {
		return nil, err
	}
	af, ok := in.(ArgsFrame)
	if !ok {
		return nil, errors.New("the server's protocol is not an ArgsFrame")
	}
	if len(af.Args()) == 0 {
		return nil, errors.New("no arguments in one slice")
	}
	if _, err := in.ReadStructBegin(ctx); err != nil {
		return nil, err
	}
	if _, _, _, err := in.ReadFieldBegin(ctx); err != nil {
		return nil, err
	}
	v, err := in.ReadBinary(ctx)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(v, g.want) {
		return nil, errors.New("the value decoded is not the one sent")
	}
	if _, typ, _, err := in.ReadFieldBegin(ctx); err != nil || typ != thrift.STOP {
		return nil, errors.Join(err, errors.New("no field stop"))
	}
	return v, in.ReadStructEnd(ctx)
}

// TestArgsGivenUpHeldWithinTheBudget: calls over 1 MiB (read in chunks)
// whose arguments a processor takes in one slice (ArgsFrame.Args, a copy
// of the chunks' bytes) and then decodes through the protocol, as Scribe's
// fast path does when it gives up, hold no more memory than the budget
// charges them, several at once with the budget full. The copy used to be
// held beside the chunks until the message's end, uncharged, while the
// protocol's decoded values took the share of the charge it was said to
// use: such a call held three times its frame for a charge of two.
func TestArgsGivenUpHeldWithinTheBudget(t *testing.T) {
	const calls = 3
	const value = 4<<20 - 100 // over maxFlatPooled: read in chunks
	val := make([]byte, value)
	for i := range val {
		val[i] = byte(i*7 + i>>11)
	}
	frames := make([][]byte, calls)
	for i := range frames {
		f := binary.BigEndian.AppendUint32(nil, 0) // size, below
		f = append(f, strictHeader("Log", byte(thrift.ONEWAY), uint32(i))...)
		f = append(f, byte(thrift.STRING), 0, 1)
		f = binary.BigEndian.AppendUint32(f, value)
		f = append(f, val...)
		f = append(f, byte(thrift.STOP))
		binary.BigEndian.PutUint32(f, uint32(len(f)-4))
		frames[i] = f
	}
	size := int64(len(frames[0]) - 4)
	if size <= maxFlatPooled {
		t.Fatalf("a frame of %d bytes is read whole", size)
	}
	b := NewBudget(calls*Charge(size), nil)
	g := &givingUp{want: val, decoded: make(chan error, calls), release: make(chan struct{})}
	srv, err := Listen("127.0.0.1:0", g, Limits{ReadTimeout: 10 * time.Minute, BudgetWait: 10 * time.Minute},
		slog.New(slog.DiscardHandler), WithBudget(b))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	released := false
	defer func() {
		if !released {
			close(g.release)
		}
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	conns := make([]net.Conn, calls)
	for i := range conns {
		c, err := net.Dial("tcp", srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	base := liveHeap()
	sent := make(chan error, calls)
	for i, c := range conns {
		go func() {
			_, err := c.Write(frames[i])
			sent <- err
		}()
	}
	for range calls {
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
		if err := <-g.decoded; err != nil {
			t.Fatal(err)
		}
	}
	// Every call is decoded and holds its values, before its message's
	// end.
	held := liveHeap() - base
	used := b.Used()
	t.Logf("%d calls of %d bytes, each charged %d: the budget holds %d of %d; the heap grew by %d",
		calls, size, Charge(size), used, b.Limit(), held)
	if used > b.Limit() {
		t.Errorf("the budget holds %d, over its limit of %d", used, b.Limit())
	}
	// Slack for the connections' buffers and the like, far less than a
	// frame.
	const slack = 1 << 20
	if held > used+slack {
		t.Errorf("the calls hold %d bytes of memory (%.2f frames each), %d more than the %d charged to the budget (limit %d)",
			held, float64(held)/float64(calls*size), held-used, used, b.Limit())
	}
	close(g.release)
	released = true
	runtime.KeepAlive(frames)
}

// liveHeap is the bytes of the heap's live objects, pools emptied.
func liveHeap() int64 {
	// A sync.Pool's objects go at the second collection.
	for range 3 {
		runtime.GC()
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// TestArgsCopyWithinTheReservation: Args copies a frame read in chunks
// only within what the call reserved for decoded values (the copy is held
// beside the chunks while it is made); short of it, it returns nil, and
// the frame is still read through the protocol from its chunks.
func TestArgsCopyWithinTheReservation(t *testing.T) {
	size := int64(maxFlatPooled + 5)
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + i>>9)
	}
	fr := &frameReader{budget: NewBudget(1<<30, nil)}
	defer fr.release()
	if err := fr.fill(bytes.NewReader(data), nil, size, nil); err != nil {
		t.Fatal(err)
	}
	in := newCallProtocol(fr, DefaultLimits().Config())
	in.reset(fr.held()+size-1, fr.held())
	if a := in.Args(); a != nil || fr.whole != nil {
		t.Fatalf("Args copied %d bytes with %d reserved for decoded values", len(a), size-1)
	}
	in.reset(fr.held()+size, fr.held())
	if a := in.Args(); !bytes.Equal(a, data) || fr.whole == nil || in.used != 0 {
		t.Fatalf("Args with room for its copy: %d bytes, equal %v, read from the copy %v, %d charged after",
			len(a), bytes.Equal(a, data), fr.whole != nil, in.used)
	}
	got := make([]byte, size)
	if _, err := io.ReadFull(fr, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the frame read after the copy differs (%v)", err)
	}
}
