package calligraphus

import (
	"bytes"
	"context"
	"fmt"
	"path"
	"sync"
	"testing"

	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/scribewire"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// TestCancelledCallsBytesAreNotReadAfterItEnds: a call's entries alias
// the frame the port read them from, which is reused once the call has
// returned. A call can return before its bucket writer has written its
// entries (its context ended); what the writer writes later must still
// be the entries as they were in the call, never the bytes that reused
// the frame meanwhile (the blocks are encoded by the call, not by the
// writer).
func TestCancelledCallsBytesAreNotReadAfterItEnds(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	created := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	fsys.SetHook(func(c dfstest.Call) error {
		if _, ok := layout.ParseTempSegment(path.Base(c.Name)); c.Op == dfstest.OpCreate && ok {
			// The writer is about to open its segment: hold it there
			// until the call has ended and its bytes were reused.
			once.Do(func() { close(created) })
			<-release
		}
		return nil
	})
	_, co := inprocCoord(t)
	s := startServer(t, testConfig(), fsys, co, nil)
	s.waitRunning(t)

	frame := []byte{}
	var want []string
	for i := range 50 {
		m := fmt.Sprintf(`{"key":"k%d","n":%d}`, i, i)
		frame = append(frame, m...)
		want = append(want, m)
	}
	cat := []byte("cat")
	entries := make([]scribewire.Entry, len(want))
	off := 0
	for i, m := range want {
		entries[i] = scribewire.Entry{Category: cat, Message: frame[off : off+len(m)]}
		off += len(m)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rc := make(chan scribethrift.ResultCode, 1)
	go func() {
		r, err := s.c.LogBatchEntries(ctx, &scribewire.Batch{AgentID: "agent", FirstSeq: 1}, entries)
		if err != nil {
			t.Error(err)
		}
		rc <- r
	}()
	<-created
	cancel()
	if r := <-rc; r == scribethrift.ResultCode_OK {
		t.Fatal("a call whose entries are not written yet answered OK")
	}
	// The port reuses the frame for the next call.
	for i := range frame {
		frame[i] = 'X'
	}
	copy(cat, "XXX")
	close(release)
	s.stop() // publishes the open segment

	got := scan(t, fsys, layout.BucketDir("cat", 0))
	if len(got) != len(want) {
		t.Fatalf("%d entries written, want %d", len(got), len(want))
	}
	for i, e := range got {
		if e.Msg != want[i] || e.Seq != uint64(i+1) || e.Agent != "agent" {
			t.Fatalf("entry %d = %+v, want message %q, seq %d", i, e, want[i], i+1)
		}
		if bytes.Contains([]byte(e.Msg), []byte("XX")) {
			t.Fatalf("entry %d holds bytes written after its call ended: %q", i, e.Msg)
		}
	}
}
