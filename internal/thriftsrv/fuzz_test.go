package thriftsrv

import (
	"bytes"
	"context"
	"testing"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/thrift/gen/freeway"
)

// FuzzCall feeds arbitrary frames through the server's path: header,
// frame in chunks, decode with its charges, processing, reply. Nothing
// may panic, and the budget's charges must balance.
func FuzzCall(f *testing.F) {
	var buf thrift.TMemoryBuffer
	buf.Buffer = new(bytes.Buffer)
	cfg := DefaultLimits().Config()
	p := thrift.NewTBinaryProtocolConf(&buf, cfg)
	ctx := context.Background()
	// Into a bytes.Buffer: these do not fail.
	_ = p.WriteMessageBegin(ctx, "Query", thrift.CALL, 3)
	_ = (&freeway.QueryQueryArgs{Req: &freeway.QueryRequest{App: "a", FromUnix: 1, ToUnix: 2, GroupBy: []string{"x", ""}}}).Write(ctx, p)
	_ = p.WriteMessageEnd(ctx)
	f.Add(append([]byte(nil), buf.Bytes()...))
	f.Add(append(oldHeader("Apps", 1, 1), 0))
	f.Add(append(strictHeader("Query", 1, 1), 12, 0, 1, 11, 0, 1, 0, 0, 0, 0, 15, 0, 4, 11, 0x7f, 0xff, 0xff, 0xff))
	f.Add(append(strictHeader("nope", 1, 1), 0))
	proc := freeway.NewQueryProcessor(badQueries{})
	f.Fuzz(func(t *testing.T, payload []byte) {
		size := int64(len(payload))
		if size == 0 {
			return
		}
		_, head, err := readHeader(bytes.NewReader(payload), size, nil)
		if err != nil {
			return
		}
		b := NewBudget(1<<20, nil)
		held, _ := b.Acquire(ctx, Charge(size), 0)
		fr := &frameReader{budget: b}
		if err := fr.fill(bytes.NewReader(payload[len(head):]), head, size, nil); err != nil {
			t.Fatal(err)
		}
		in := newCallProtocol(fr, cfg)
		in.reset(held, fr.held())
		out := &outBuffer{}
		out.start()
		_, _ = proc.Process(ctx, in, thrift.NewTBinaryProtocolConf(out, cfg)) // any answer goes; the budget below is the check
		fr.release()
		b.Release(held + in.extra)
		if b.Used() != 0 {
			t.Fatalf("budget holds %d after the call", b.Used())
		}
	})
}
