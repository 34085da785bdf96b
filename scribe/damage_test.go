package scribe

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// A byte flipped on disk in one queued entry used to cost every entry
// after it in its segment file; now it costs that entry alone, and the
// agent's metric and fb303 say 1.
func TestDamagedQueueRecordLosesOnlyItself(t *testing.T) {
	dir := t.TempDir()
	upAddr := deadAddr(t)
	cfg := testConfig(dir, upAddr)
	cfg.SegmentBytes = 4 << 10
	a := startAgent(t, cfg)
	c := dial(t, a.Addr())
	var want []string
	pad := strings.Repeat("p", 60)
	for i := range 200 {
		m := fmt.Sprintf("d-%03d-%s", i, pad)
		mustLog(t, c, []*scribethrift.LogEntry{{Category: "c", Message: []byte(m)}})
		if i != 42 {
			want = append(want, m)
		}
	}
	a.stopped(t)
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	if len(segs) < 3 {
		t.Fatalf("%d segments, want several", len(segs))
	}
	var victim string
	for _, s := range segs {
		b, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.Index(b, []byte("d-042")); i >= 0 {
			b[i+2] ^= 0x20
			if err := os.WriteFile(s, b, 0o644); err != nil {
				t.Fatal(err)
			}
			victim = s
		}
	}

	up := startUpstream(t, upAddr, nil)
	b := startAgent(t, cfg)
	testkit.WaitFor(t, "the queue shipped", func() bool { return b.q.Stats().Entries == 0 })
	var got []string
	for _, g := range up.received(t) {
		got = append(got, g.msg)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("upstream has %d entries, want the 199 undamaged ones", len(got))
	}
	if n := gather(t, b, "freeway_agent_queue_lost_entries_total", "", ""); n != 1 {
		t.Fatalf("freeway_agent_queue_lost_entries_total = %v, want 1", n)
	}
	if n := b.fb303()["agent.queue_lost"]; n != 1 {
		t.Fatalf("fb303 agent.queue_lost = %d, want 1", n)
	}
	if logs := b.logs.String(); !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, filepath.Base(victim)) || !strings.Contains(logs, "offset=") {
		t.Fatalf("no error naming the file and offset: %s", logs)
	}
}
