package scribeapi

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"

	"github.com/freeway-dev/freeway/internal/scribeapi/scribetest"
	"github.com/freeway-dev/freeway/internal/scribewire"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// countingEntries counts the entries it takes on the fast path.
type countingEntries struct {
	countingHandler
	fast atomic.Int64
}

func (h *countingEntries) LogEntries(_ context.Context, es []scribewire.Entry) (scribethrift.ResultCode, error) {
	h.fast.Add(int64(len(es)))
	return scribethrift.ResultCode_OK, nil
}

func (h *countingEntries) LogBatchEntries(ctx context.Context, _ *scribewire.Batch, es []scribewire.Entry) (scribethrift.ResultCode, error) {
	return h.LogEntries(ctx, es)
}

// TestLogOfMillionsOfTinyEntries: a stock client's Log call of more than
// 1,048,576 entries (here with empty messages, 16 bytes each: a 16 MiB
// call, well within max_call_bytes) is taken whole and answered OK, on
// the fast path and on the generated code's. (Before, a list of more
// than 1<<20 elements did not decode: the call was answered
// PROTOCOL_ERROR and its connection closed, and the client sent the
// same call again, forever.)
func TestLogOfMillionsOfTinyEntries(t *testing.T) {
	const n = 1<<20 + 1
	frame := scribetest.LogFrameOf("c", nil, n)
	slow := &countingHandler{n: new(atomic.Int64)}
	fast := &countingEntries{countingHandler: countingHandler{n: new(atomic.Int64)}}
	for name, h := range map[string]Handler{"generated": slow, "fast": fast} {
		hs := serve(t, h, thriftsrv.Limits{})
		if reply := call(t, dial(t, hs.srv.Addr()), frame); !bytes.HasSuffix(reply, scribetest.OK) {
			t.Fatalf("%s: answered %x, want OK; log: %s", name, reply, hs.logs.String())
		}
	}
	if got := slow.n.Load(); got != n {
		t.Errorf("generated decode took %d entries, want %d", got, n)
	}
	if got := fast.fast.Load(); got != n {
		t.Errorf("fast path took %d entries, want %d", got, n)
	}
}
