package calligraphus

import (
	"bytes"
	"context"
	"strconv"
	"testing"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/scribewire"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// logBatchFrameBytes is the size of the frame (after its size) of a
// LogBatch call of b, as the port measures it against max_call_bytes.
func logBatchFrameBytes(t *testing.T, b *scribethrift.Batch) int64 {
	t.Helper()
	args, err := thrift.NewTSerializer().Write(context.Background(), &scribethrift.ScribeLogBatchArgs{Batch: b})
	if err != nil {
		t.Fatal(err)
	}
	return int64(scribeapi.BatchFrameHead - 4 + len(args))
}

// limitCluster starts writers w1 and w2 with the smallest max_call_bytes
// and returns keys of the buckets w2 holds, and of those w1 holds.
func limitCluster(t *testing.T, fsys dfs.FS) (cl *cluster, theirs, ours []string) {
	hub, _ := inprocCoord(t)
	newCoord := sessions(t, hub)
	cl = &cluster{t: t, fsys: fsys, observe: newCoord(), tweak: func(c *Config) { c.MaxCallBytes = 1 << 10 }}
	cl.add("w1", newCoord())
	cl.add("w2", newCoord())
	cl.waitMembers(2)
	cl.waitSettled(6)
	keys := bucketKeys(t)
	for b, h := range cl.holders() {
		switch h {
		case "w2":
			theirs = append(theirs, keys[b])
		case "w1":
			ours = append(ours, keys[b])
		}
	}
	if len(theirs) == 0 || len(ours) == 0 {
		t.Fatalf("w2 holds the buckets of %v, w1 of %v", theirs, ours)
	}
	return cl, theirs, ours
}

// TestForwardOfACallAtTheLimitIsTaken: an agent's batch as large as the
// port takes, all of it for buckets another writer holds. Forwarded, each
// entry carries its sequence number (8 bytes more), so one forwarded batch
// would be over the holder's limit (the same max_call_bytes) and refused
// at every retry: the agent would retry the batch forever. The writer
// sends it in batches the holder takes, and every entry lands.
func TestForwardOfACallAtTheLimitIsTaken(t *testing.T) {
	fsys := newLocal(t)
	cl, theirs, _ := limitCluster(t, fsys)
	limit := int64(cl.ws[0].c.cfg.MaxCallBytes) + thriftsrv.Envelope
	inc := "inc"
	b := &scribethrift.Batch{AgentID: "ag", Incarnation: &inc, FirstSeq: 1, ReceivedAtMs: 1_000_000}
	size := logBatchFrameBytes(t, b)
	for seq := int64(1); ; seq++ {
		e := &scribethrift.LogEntry{Category: "cat", Message: []byte(theirs[int(seq)%len(theirs)] + "#" + strconv.FormatInt(seq, 10))}
		n := int64(scribewire.EntrySize(e.Category, e.Message))
		if size+n > limit {
			break
		}
		b.Messages = append(b.Messages, e)
		size += n
	}
	if got := logBatchFrameBytes(t, b); got != size || got > limit {
		t.Fatalf("batch frame %d bytes (counted %d), limit %d", got, size, limit)
	}

	w1 := cl.ws[0].dial(t)
	testkit.WaitFor(t, "w1 to take the batch", func() bool {
		rc, err := w1.LogBatch(context.Background(), b)
		if err != nil {
			t.Fatal(err)
		}
		return rc == scribethrift.ResultCode_OK
	})
	if got := counter(t, cl.ws[0].reg, "freeway_thrift_calls_refused_total"); got != 0 {
		t.Fatalf("w1 refused %v calls unprocessed: the batch is meant to be at, not over, its limit", got)
	}
	for _, s := range cl.ws {
		s.stop()
	}
	seen := map[uint64]bool{}
	for _, e := range readAll(t, fsys) {
		seen[e.Seq] = true
	}
	for seq := 1; seq <= len(b.Messages); seq++ {
		if !seen[uint64(seq)] {
			t.Fatalf("entry %d of %d lost", seq, len(b.Messages))
		}
	}
}

// TestEntryTooLargeToForwardIsSaid: a stock client's call at the port's
// limit: an entry for a bucket this writer holds, and one large entry for
// a bucket another writer holds. Forwarded, the batch's fields make that
// entry larger than any call the holder takes, whatever it is split into:
// the writer answers TRY_LATER counted as too_large (logged as an error)
// before writing or sending anything, since the call can never be taken
// whole and each retry would write the first entry again.
func TestEntryTooLargeToForwardIsSaid(t *testing.T) {
	fsys := newLocal(t)
	cl, theirs, ours := limitCluster(t, fsys)
	limit := int64(cl.ws[0].c.cfg.MaxCallBytes) + thriftsrv.Envelope
	es := entries("cat", ours[0]+"#here", theirs[0]+"#")
	args, err := thrift.NewTSerializer().Write(context.Background(), &scribethrift.ScribeLogArgs{Messages: es})
	if err != nil {
		t.Fatal(err)
	}
	pad := limit - int64(scribeapi.LogFrameHead-4+len(args))
	es[1].Message = append(es[1].Message, bytes.Repeat([]byte("x"), int(pad))...)

	rc, err := cl.ws[0].dial(t).Log(context.Background(), es)
	if err != nil || rc != scribethrift.ResultCode_TRY_LATER {
		t.Fatalf("entry too large to forward: %v %v, want TRY_LATER", rc, err)
	}
	if got := counter(t, cl.ws[0].reg, "freeway_thrift_calls_refused_total"); got != 0 {
		t.Fatalf("w1 refused %v calls unprocessed: the call is meant to be at, not over, its limit", got)
	}
	if got := counter(t, cl.ws[0].reg, "freeway_calligraphus_try_later_total", "reason", "too_large"); got != 1 {
		t.Errorf("try_later{too_large} = %v, want 1", got)
	}
	if got := counter(t, cl.ws[1].reg, "freeway_thrift_calls_refused_total"); got != 0 {
		t.Errorf("w2 was sent %v calls it refused as too large", got)
	}
	for _, s := range cl.ws {
		s.stop()
	}
	if got := readAll(t, fsys); len(got) != 0 {
		t.Errorf("a call that can never be taken wrote %d entries (the first: %.40q)", len(got), got[0].Msg)
	}
}
