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
	"reflect"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/scribeapi/scribetest"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// Bounds of the fuzzed server: small, so that fuzzed inputs reach the
// refusals (a call over max_call_bytes, a decode over the budget).
const (
	fuzzMaxCall = 1 << 10
	fuzzBudget  = 512 << 10
	// fuzzAllocSlack bounds what serving one connection may allocate
	// beyond fuzzAllocPerByte per byte sent: buffers, the pooled chunks
	// of a frame, what the budget lets decoding take.
	fuzzAllocSlack   = 2 << 20
	fuzzAllocPerByte = 8
)

// callLog records every Log and LogBatch call, in order.
type callLog struct {
	mu    sync.Mutex
	calls []any // []*scribethrift.LogEntry or *scribethrift.Batch
}

func (c *callLog) Log(_ context.Context, es []*scribethrift.LogEntry) (scribethrift.ResultCode, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, es)
	return scribethrift.ResultCode_OK, nil
}

func (c *callLog) LogBatch(_ context.Context, b *scribethrift.Batch) (scribethrift.ResultCode, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, b)
	return scribethrift.ResultCode_OK, nil
}

func (c *callLog) take() []any {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.calls
	c.calls = nil
	return out
}

// FuzzScribe sends an arbitrary byte stream on one connection to a Scribe
// server as the agent and calligraphus run it (the framed loop of
// internal/thriftsrv, this package's service, a handler), then closes its
// side. Whatever the bytes:
//   - nothing panics (a panic would close the connection and be counted);
//   - the server ends the connection once the bytes run out;
//   - the in-flight budget is whole again afterwards;
//   - serving allocates no more than a bound linear in the bytes sent
//     (a length or count in the input cannot make it allocate more);
//   - every well-formed Log or LogBatch call at the head of the stream is
//     answered, in order, with its sequence id: OK once the handler got
//     exactly the entries sent (and no more bytes of them than the frame
//     held), or TRY_LATER without the handler having seen it.
func FuzzScribe(f *testing.F) {
	for _, seed := range scribeSeeds() {
		f.Add(seed)
	}
	reg := prometheus.NewRegistry()
	budget := thriftsrv.NewBudget(fuzzBudget, nil)
	logs := &testkit.LogBuffer{}
	h := &callLog{}
	limits := thriftsrv.Limits{MaxCallBytes: fuzzMaxCall, ReadTimeout: 10 * time.Second, BudgetWait: 10 * time.Millisecond}
	srv, err := Listen("127.0.0.1:0", h, Info{Name: "fuzz", Metrics: reg}, limits,
		slog.New(slog.NewTextHandler(logs, nil)), thriftsrv.WithBudget(budget))
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	f.Cleanup(func() {
		cancel()
		<-done //nolint:errcheck // Serve's error after cancel is not what the fuzz test checks
	})
	hs := &harness{srv: srv, reg: reg, logs: logs}
	cfg := thriftsrv.Limits{MaxCallBytes: fuzzMaxCall}.Config()

	f.Fuzz(func(t *testing.T, stream []byte) {
		want := wellFormedHead(stream, cfg)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		replies, err := exchange(srv.Addr(), stream)
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatalf("exchange: %v", err)
		}
		if n := hs.metric(t, "freeway_thrift_connections_closed_total", "reason", "panic"); n != 0 {
			t.Fatalf("the server panicked serving the stream:\n%s", logs.String())
		}
		if used := budget.Used(); used != 0 {
			t.Fatalf("budget holds %d bytes after the connection ended", used)
		}
		if got, bound := after.TotalAlloc-before.TotalAlloc, uint64(fuzzAllocSlack+fuzzAllocPerByte*len(stream)); got > bound {
			t.Fatalf("serving %d bytes allocated %d bytes (bound %d)", len(stream), got, bound)
		}
		calls := h.take()
		if len(replies) < len(want) {
			t.Fatalf("%d well-formed calls at the head of the stream, %d answered", len(want), len(replies))
		}
		for i, w := range want {
			name, typ, seq, rc, err := decodeReply(replies[i], cfg)
			if err != nil {
				t.Fatalf("reply %d to %s: %v", i, w.name, err)
			}
			if name != w.name || typ != thrift.REPLY || seq != w.seq {
				t.Fatalf("reply %d is %s %v seq %d, want a reply to %s seq %d", i, name, typ, seq, w.name, w.seq)
			}
			switch rc {
			case scribethrift.ResultCode_OK:
				if len(calls) == 0 {
					t.Fatalf("%s %d answered OK, the handler never saw it", w.name, i)
				}
				if !reflect.DeepEqual(calls[0], w.args) {
					t.Fatalf("%s %d: the handler got %+v, the client sent %+v", w.name, i, calls[0], w.args)
				}
				if n := entryBytes(calls[0]); n > int64(w.size) {
					t.Fatalf("%s %d: the handler got %d bytes of entries from a frame of %d", w.name, i, n, w.size)
				}
				calls = calls[1:]
			case scribethrift.ResultCode_TRY_LATER:
			default:
				t.Fatalf("%s %d answered %v", w.name, i, rc)
			}
		}
	})
}

// wellFormed is a Log or LogBatch call as a stock decoder reads it.
type wellFormed struct {
	name string
	seq  int32
	args any // []*scribethrift.LogEntry or *scribethrift.Batch
	size int
}

// wellFormedHead decodes the frames at the head of stream with thrift's
// own binary protocol and returns the Log and LogBatch calls up to the
// first frame that is anything else (incomplete, not a call, another
// method, arguments that do not decode).
func wellFormedHead(stream []byte, cfg *thrift.TConfiguration) []wellFormed {
	var out []wellFormed
	ctx := context.Background()
	for len(stream) >= 4 {
		size := binary.BigEndian.Uint32(stream)
		if size == 0 || uint64(size) > uint64(len(stream)-4) {
			break
		}
		frame := stream[4 : 4+size]
		stream = stream[4+size:]
		buf := &thrift.TMemoryBuffer{Buffer: bytes.NewBuffer(frame)}
		p := thrift.NewTBinaryProtocolConf(buf, cfg)
		name, typ, seq, err := p.ReadMessageBegin(ctx)
		if err != nil || typ != thrift.CALL {
			break
		}
		w := wellFormed{name: name, seq: seq, size: int(size)}
		switch name {
		case "Log":
			a := scribethrift.NewScribeLogArgs()
			if err := a.Read(ctx, p); err != nil {
				return out
			}
			w.args = a.Messages
		case "LogBatch":
			a := scribethrift.NewScribeLogBatchArgs()
			if err := a.Read(ctx, p); err != nil {
				return out
			}
			w.args = a.Batch
		default:
			return out
		}
		if p.ReadMessageEnd(ctx) != nil {
			break
		}
		out = append(out, w)
	}
	return out
}

// exchange sends stream on a new connection, closes the sending side and
// returns the reply frames until the server closes the connection.
func exchange(addr string, stream []byte) ([][]byte, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	// Write while reading: a server answering calls while the client
	// still sends must not deadlock on full socket buffers.
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(stream)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	var replies [][]byte
	var rerr error
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			if !errors.Is(err, io.EOF) && !isReset(err) {
				rerr = fmt.Errorf("read reply: %w", err)
			}
			break
		}
		reply := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(c, reply); err != nil {
			rerr = fmt.Errorf("read reply of %d bytes: %w", len(reply), err)
			break
		}
		replies = append(replies, reply)
	}
	// The server may close before reading everything sent: a write that
	// fails then is not the server's fault.
	<-werr //nolint:errcheck // see above
	return replies, rerr
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

func decodeReply(reply []byte, cfg *thrift.TConfiguration) (string, thrift.TMessageType, int32, scribethrift.ResultCode, error) {
	ctx := context.Background()
	p := thrift.NewTBinaryProtocolConf(&thrift.TMemoryBuffer{Buffer: bytes.NewBuffer(reply)}, cfg)
	name, typ, seq, err := p.ReadMessageBegin(ctx)
	if err != nil {
		return "", 0, 0, 0, err
	}
	if typ != thrift.REPLY {
		return name, typ, seq, 0, nil
	}
	var rc *scribethrift.ResultCode
	switch name {
	case "Log":
		r := scribethrift.NewScribeLogResult()
		err, rc = r.Read(ctx, p), r.Success
	case "LogBatch":
		r := scribethrift.NewScribeLogBatchResult()
		err, rc = r.Read(ctx, p), r.Success
	default:
		return name, typ, seq, 0, fmt.Errorf("reply to unexpected method %q", name)
	}
	if err == nil && rc == nil {
		err = errors.New("reply without a result code")
	}
	if err != nil {
		return name, typ, seq, 0, err
	}
	return name, typ, seq, *rc, nil
}

// entryBytes is what the entries of a call hold: categories, messages,
// metadata, agent id.
func entryBytes(call any) int64 {
	var es []*scribethrift.LogEntry
	var n int64
	switch c := call.(type) {
	case []*scribethrift.LogEntry:
		es = c
	case *scribethrift.Batch:
		if c == nil {
			return 0
		}
		es = c.Messages
		n += int64(len(c.AgentID))
		if c.Incarnation != nil {
			n += int64(len(*c.Incarnation))
		}
	}
	for _, e := range es {
		if e == nil {
			continue
		}
		n += int64(len(e.Category) + len(e.Message))
		for k, v := range e.Metadata {
			n += int64(len(k) + len(v))
		}
	}
	return n
}

// scribeSeeds are the seeds of FuzzScribe (also committed under
// testdata/fuzz/FuzzScribe): well-formed calls of stock and Freeway
// clients, and broken ones.
func scribeSeeds() [][]byte {
	strict := scribetest.LogFrame(true, [][2]string{{"access", "GET / 200"}, {"web/access", ""}})
	loose := scribetest.LogFrame(false, [][2]string{{"a", "x"}})
	empty := scribetest.LogFrame(true, nil)
	batch := clientFrame(func(c *scribethrift.ScribeClient) {
		inc := "inc-1"
		_, _ = c.LogBatch(context.Background(), &scribethrift.Batch{AgentID: "agent-1", FirstSeq: 41, ReceivedAtMs: 1700000000000,
			Incarnation: &inc, Messages: []*scribethrift.LogEntry{{Category: "c", Message: []byte("m"), Metadata: map[string]string{"k": "v"}}}})
	})
	getName := clientFrame(func(c *scribethrift.ScribeClient) { _, _ = c.GetName(context.Background()) })
	// Over max_call_bytes and its envelope: refused, then the next served.
	big := scribetest.LogFrameOf("c", bytes.Repeat([]byte("m"), fuzzMaxCall+thriftsrv.Envelope), 1)
	// A list claiming 2^20 entries in a frame of a few bytes.
	hugeList := []byte{0, 0, 0, 0, 0x80, 1, 0, 1, 0, 0, 0, 3, 'L', 'o', 'g', 0, 0, 0, 1, 15, 0, 1, 12, 0, 0x10, 0, 0}
	binary.BigEndian.PutUint32(hugeList, uint32(len(hugeList)-4))
	// A string claiming 2 GiB.
	hugeString := []byte{0, 0, 0, 0, 0x80, 1, 0, 1, 0, 0, 0, 3, 'L', 'o', 'g', 0, 0, 0, 1, 15, 0, 1, 12, 0, 0, 0, 1, 11, 0, 1, 0x7f, 0xff, 0xff, 0xff}
	binary.BigEndian.PutUint32(hugeString, uint32(len(hugeString)-4))
	return [][]byte{
		strict,
		loose,
		empty,
		batch,
		append(append(append([]byte(nil), strict...), batch...), loose...),
		append(append([]byte(nil), getName...), strict...),
		append(append([]byte(nil), big...), loose...),
		hugeList,
		hugeString,
		strict[:len(strict)-1], // cut short
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), // HTTP
		{0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0},           // TLS
		{0, 0, 0, 0},                                // empty frame
		{0x7f, 0xff, 0xff, 0xff, 0x80, 1, 0, 1},     // 2 GiB frame
	}
}

// clientFrame returns the frame a stock Thrift client sends for one call.
func clientFrame(send func(*scribethrift.ScribeClient)) []byte {
	var buf thrift.TMemoryBuffer
	buf.Buffer = new(bytes.Buffer)
	cfg := thriftsrv.Limits{}.Config()
	tr := thrift.NewTFramedTransportConf(&buf, cfg)
	out := thrift.NewTBinaryProtocolConf(tr, cfg)
	// The call fails reading its reply from an empty buffer, after its
	// frame is out.
	in := thrift.NewTBinaryProtocolConf(thrift.NewTMemoryBuffer(), cfg)
	send(scribethrift.NewScribeClientProtocol(tr, in, out))
	return append([]byte(nil), buf.Bytes()...)
}
