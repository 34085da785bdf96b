package scribeapi

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/scribewire"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// fastLog is callLog that also takes the fast path's entries: it records
// them as the generated structs they stand for (copied: the call's bytes
// are reused after it returns), so that both paths' records compare.
type fastLog struct {
	callLog
	fast int // calls taken through the fast path
}

func entriesOf(es []scribewire.Entry) []*scribethrift.LogEntry {
	out := make([]*scribethrift.LogEntry, len(es))
	for i, e := range es {
		out[i] = &scribethrift.LogEntry{Category: string(e.Category)}
		if e.Message != nil {
			out[i].Message = append([]byte{}, e.Message...)
		}
	}
	return out
}

func (f *fastLog) LogEntries(ctx context.Context, es []scribewire.Entry) (scribethrift.ResultCode, error) {
	f.mu.Lock()
	f.fast++
	f.mu.Unlock()
	return f.Log(ctx, entriesOf(es))
}

func (f *fastLog) LogBatchEntries(ctx context.Context, b *scribewire.Batch, es []scribewire.Entry) (scribethrift.ResultCode, error) {
	f.mu.Lock()
	f.fast++
	f.mu.Unlock()
	if b == nil {
		return f.LogBatch(ctx, nil)
	}
	return f.LogBatch(ctx, &scribethrift.Batch{AgentID: b.AgentID, FirstSeq: b.FirstSeq, Messages: entriesOf(es),
		ReceivedAtMs: b.ReceivedAtMs, Incarnation: b.Incarnation, Seqs: append([]int64(nil), b.Seqs...), Forwarded: b.Forwarded})
}

func startFuzzServer(tb testing.TB, h Handler) (*Server, *thriftsrv.Budget) {
	tb.Helper()
	budget := thriftsrv.NewBudget(fuzzBudget, nil)
	limits := thriftsrv.Limits{MaxCallBytes: fuzzMaxCall, ReadTimeout: 10 * time.Second, BudgetWait: 10 * time.Millisecond}
	srv, err := Listen("127.0.0.1:0", h, Info{Name: "fuzz", Metrics: prometheus.NewRegistry()}, limits,
		slog.New(slog.DiscardHandler), thriftsrv.WithBudget(budget))
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	tb.Cleanup(func() {
		cancel()
		<-done //nolint:errcheck // Serve's error after cancel is not what the test checks
	})
	return srv, budget
}

// normalize makes the records of both paths comparable: an absent list
// and an empty one are the same to every handler.
func normalize(calls []any) []any {
	out := make([]any, len(calls))
	for i, c := range calls {
		switch c := c.(type) {
		case []*scribethrift.LogEntry:
			if len(c) == 0 {
				c = nil
			}
			out[i] = c
		case *scribethrift.Batch:
			if c != nil {
				b := *c
				if len(b.Messages) == 0 {
					b.Messages = nil
				}
				c = &b
			}
			out[i] = c
		}
	}
	return out
}

// FuzzFastPathAnswersAsGenerated sends the same arbitrary byte stream to
// a server whose handler takes the fast path (scribewire) and to one
// whose handler does not (the generated decode): the replies must be the
// same bytes (OK, TRY_LATER, the very same exception for malformed
// input, the connection closed at the same point) and the handlers must
// have been given the same entries.
func FuzzFastPathAnswersAsGenerated(f *testing.F) {
	for _, seed := range scribeSeeds() {
		f.Add(seed)
	}
	f.Add(scribetestLogFrameWithMetadata())
	slowH, fastH := &callLog{}, &fastLog{}
	slow, slowBudget := startFuzzServer(f, slowH)
	fast, fastBudget := startFuzzServer(f, fastH)
	f.Fuzz(func(t *testing.T, stream []byte) {
		want, err := exchange(slow.Addr(), stream)
		if err != nil {
			t.Fatalf("exchange with the generated path: %v", err)
		}
		got, err := exchange(fast.Addr(), stream)
		if err != nil {
			t.Fatalf("exchange with the fast path: %v", err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("fast path replies\n%x\ngenerated path replies\n%x", got, want)
		}
		if g, w := normalize(fastH.take()), normalize(slowH.take()); !reflect.DeepEqual(g, w) {
			t.Fatalf("fast path handler got %+v, generated path handler %+v", g, w)
		}
		if slowBudget.Used() != 0 || fastBudget.Used() != 0 {
			t.Fatalf("budgets hold %d and %d bytes after the connections ended", slowBudget.Used(), fastBudget.Used())
		}
	})
}

// TestFastPathTakesOrdinaryCalls: the seeds' well-formed Log and LogBatch
// calls without metadata go through the fast path (it is no use if it
// gives up on them), and the replies match the generated path's.
func TestFastPathTakesOrdinaryCalls(t *testing.T) {
	slowH, fastH := &callLog{}, &fastLog{}
	slow, _ := startFuzzServer(t, slowH)
	fast, _ := startFuzzServer(t, fastH)
	seeds := scribeSeeds()
	stream := bytes.Join([][]byte{seeds[0], seeds[1], seeds[2], scribetestLogFrameWithMetadata()}, nil)
	want, err := exchange(slow.Addr(), stream)
	if err != nil {
		t.Fatal(err)
	}
	got, err := exchange(fast.Addr(), stream)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) || len(got) != 4 {
		t.Fatalf("replies differ or are not 4:\n%x\n%x", got, want)
	}
	if g, w := normalize(fastH.take()), normalize(slowH.take()); !reflect.DeepEqual(g, w) || len(g) != 4 {
		t.Fatalf("handlers got %+v and %+v", g, w)
	}
	if fastH.fast != 3 {
		t.Fatalf("%d calls took the fast path, want 3 (the one with metadata takes the generated one)", fastH.fast)
	}
}

func scribetestLogFrameWithMetadata() []byte {
	return clientFrame(func(c *scribethrift.ScribeClient) {
		_, _ = c.Log(context.Background(), []*scribethrift.LogEntry{{Category: "c", Message: []byte("m"), Metadata: map[string]string{"k": "v"}}})
	})
}

// TestFastPathOnCallsReadInChunks: calls over 1 MiB (their frames read in
// chunks, which the fast path's copy of their arguments then takes the
// place of) are answered and handled as the generated path does, whether
// the fast path decodes them or gives up on them (an entry with
// metadata) and the generated code decodes the arguments from the copy.
func TestFastPathOnCallsReadInChunks(t *testing.T) {
	limits := thriftsrv.Limits{MaxCallBytes: 16 << 20, ReadTimeout: 10 * time.Minute, BudgetWait: 10 * time.Minute}
	serve := func(h Handler) *Server {
		return start(t, h, limits, thriftsrv.WithBudget(thriftsrv.NewBudget(256<<20, nil)))
	}
	entries := func(metadata bool) []*scribethrift.LogEntry {
		es := make([]*scribethrift.LogEntry, 3000)
		for i := range es {
			es[i] = &scribethrift.LogEntry{Category: fmt.Sprintf("c%d", i%3), Message: bytes.Repeat([]byte{byte('a' + i%26)}, 700+i%50)}
		}
		if metadata {
			es[len(es)-1].Metadata = map[string]string{"k": "v"}
		}
		return es
	}
	inc := "i"
	frames := [][]byte{
		clientFrame(func(c *scribethrift.ScribeClient) { _, _ = c.Log(context.Background(), entries(false)) }),
		clientFrame(func(c *scribethrift.ScribeClient) { _, _ = c.Log(context.Background(), entries(true)) }),
		clientFrame(func(c *scribethrift.ScribeClient) {
			_, _ = c.LogBatch(context.Background(), &scribethrift.Batch{AgentID: "a", FirstSeq: 7, Messages: entries(false), Incarnation: &inc})
		}),
		clientFrame(func(c *scribethrift.ScribeClient) {
			_, _ = c.LogBatch(context.Background(), &scribethrift.Batch{AgentID: "a", FirstSeq: 8, Messages: entries(true), Incarnation: &inc})
		}),
	}
	for _, f := range frames {
		if len(f) <= 1<<20 {
			t.Fatalf("a frame of %d bytes is read whole, not in chunks", len(f))
		}
	}
	slowH, fastH := &callLog{}, &fastLog{}
	slow, fast := serve(slowH), serve(fastH)
	stream := bytes.Join(frames, nil)
	want, err := exchange(slow.Addr(), stream)
	if err != nil {
		t.Fatal(err)
	}
	got, err := exchange(fast.Addr(), stream)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) || len(got) != len(frames) {
		t.Fatalf("replies differ or are not %d:\n%x\n%x", len(frames), got, want)
	}
	if g, w := normalize(fastH.take()), normalize(slowH.take()); !reflect.DeepEqual(g, w) || len(g) != len(frames) {
		t.Fatalf("the handlers got different calls, or not %d", len(frames))
	}
	if fastH.fast != 2 {
		t.Fatalf("%d calls took the fast path, want 2 (those with metadata take the generated one)", fastH.fast)
	}
}
