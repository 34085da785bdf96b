package scribe

import (
	"bytes"
	"context"
	"strings"
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

// TestBatchAnUpstreamKeepsRefusingIsSaid: a writer whose max_call_bytes
// is below the agent's (configured in another file) answers a batch over
// it TRY_LATER at every retry, and the agent's queue stops behind it.
// The agent cannot tell why, but it says, as a warning naming the batch
// and the keys to look at, that one batch keeps being refused. (Before, a
// fixed upstream list logged each TRY_LATER at debug level only.)
func TestBatchAnUpstreamKeepsRefusingIsSaid(t *testing.T) {
	up := startUpstreamLimits(t, "127.0.0.1:0", thriftsrv.Limits{MaxCallBytes: 1 << 10}, nil)
	a := startAgent(t, testConfig(t.TempDir(), up.srv.Addr()))
	mustLog(t, dial(t, a.Addr()), []*scribethrift.LogEntry{{Category: "big", Message: bytes.Repeat([]byte("x"), 100<<10)}})
	testkit.WaitFor(t, "the agent to say one batch keeps being refused", func() bool {
		return strings.Contains(a.logs.String(), "upstream keeps answering try_later to one batch")
	})
	for _, want := range []string{"first_seq=1", "entries=1", "agent.batch_bytes"} {
		if !strings.Contains(a.logs.String(), want) {
			t.Errorf("the warning lacks %q: %s", want, a.logs.String())
		}
	}
}
