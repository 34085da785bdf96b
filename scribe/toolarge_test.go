package scribe

import (
	"bytes"
	"context"
	"testing"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// TestEntryTheUpstreamCannotTakeIsRefused: the agent and its upstream
// have the same max_call_bytes (as the documentation asks: at least the
// agent's). An app's call of one entry, at that limit, makes a LogBatch
// over it (the batch adds the agent id, incarnation and sequence number):
// acknowledged, it could never be shipped, and the shipper retried it
// forever with everything queued after it. The agent answers such a call
// TRY_LATER (too_large), and the entries after it are shipped.
func TestEntryTheUpstreamCannotTakeIsRefused(t *testing.T) {
	limits := thriftsrv.Limits{MaxCallBytes: 1 << 10}
	up := startUpstreamLimits(t, "127.0.0.1:0", limits, nil)
	cfg := testConfig(t.TempDir(), up.srv.Addr())
	cfg.MaxCallBytes = config.ByteSize(limits.MaxCallBytes)
	a := startAgent(t, cfg)
	c := dial(t, a.Addr())

	big := []*scribethrift.LogEntry{{Category: "big"}}
	args, err := thrift.NewTSerializer().Write(context.Background(), &scribethrift.ScribeLogArgs{Messages: big})
	if err != nil {
		t.Fatal(err)
	}
	pad := limits.MaxCallBytes + thriftsrv.Envelope - int64(scribeapi.LogFrameHead-4+len(args))
	big[0].Message = bytes.Repeat([]byte("x"), int(pad))
	rc, err := c.Log(context.Background(), big)
	if err != nil {
		t.Fatal(err)
	}
	after := entries("access", "after", 0, 3)
	mustLog(t, c, after)
	want := len(after)
	if rc == scribethrift.ResultCode_OK {
		want++ // acknowledged: it must arrive
	}
	testkit.WaitFor(t, "every entry answered OK to reach upstream", func() bool { return up.count(t) == want })

	if rc != scribethrift.ResultCode_TRY_LATER {
		t.Errorf("an entry too large to ship: %v, want TRY_LATER", rc)
	}
	if n := counterValue(t, a, "freeway_thrift_calls_refused_total"); n != 0 {
		t.Fatalf("the agent's port refused %v calls unprocessed: the call is meant to be at, not over, its limit", n)
	}
	if n := a.c.tryLater[tryLaterTooLarge].Load(); n != 1 {
		t.Errorf("try_later too_large counted %d, want 1", n)
	}
}
