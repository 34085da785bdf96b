package calligraphus

import (
	"context"
	"fmt"
	"testing"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// TestRestartedWriterForwardsBeforeItCanJoin: a writer restarted after a
// crash, with the same id, cannot join the group while its dead
// predecessor's session lives on (up to a session timeout on ZooKeeper).
// Meanwhile it still forwards entries to the holders it sees in the group,
// rather than answering TRY_LATER for every bucket held elsewhere; it joins
// once the old registration is gone.
func TestRestartedWriterForwardsBeforeItCanJoin(t *testing.T) {
	t.Run("inproc", func(t *testing.T) {
		hub, _ := inprocCoord(t)
		testRestartedWriterForwardsBeforeItCanJoin(t, newLocal(t), sessions(t, hub))
	})
	t.Run("engines", func(t *testing.T) {
		fsys, newCoord := engineBackends(t)
		testRestartedWriterForwardsBeforeItCanJoin(t, fsys, newCoord)
	})
}

func testRestartedWriterForwardsBeforeItCanJoin(t *testing.T, fsys dfs.FS, newCoord func() coord.Coord) {
	// The crashed w1's session, not expired yet: its membership lives on.
	ghost := newCoord()
	if _, err := ghost.Join(context.Background(), layout.WriterMembers, "w1", []byte("127.0.0.1:1")); err != nil {
		t.Fatal(err)
	}

	// A category no app consumes (one bucket, taken on traffic) whose
	// preferred writer is w2, so that w2 keeps it.
	both := newView([]coord.Member{{ID: "w1"}, {ID: "w2"}}, "", false)
	cat := ""
	for i := 0; cat == ""; i++ {
		if c := fmt.Sprintf("other%d", i); both.preferred(c, 0, 1) == "w2" {
			cat = c
		}
	}

	cl := &cluster{t: t, fsys: fsys, observe: newCoord()}
	w2 := cl.add("w2", newCoord())
	rc, err := w2.dial(t).LogBatch(context.Background(), &scribethrift.Batch{Messages: entries(cat, "x"), Forwarded: thriftBool(true)})
	if err != nil || rc != scribethrift.ResultCode_OK {
		t.Fatalf("w2: %v %v", rc, err)
	}

	// The restarted w1: entries for w2's bucket are forwarded there.
	w1 := cl.add("w1", newCoord())
	testkit.WaitFor(t, "the restarted w1 to see w2 while its old registration lives", func() bool {
		return w1.c.currentView().addr["w2"] != ""
	})
	rc, err = w1.dial(t).LogBatch(context.Background(), &scribethrift.Batch{Messages: entries(cat, "y")})
	if err != nil || rc != scribethrift.ResultCode_OK {
		t.Fatalf("w1, for w2's bucket: %v %v", rc, err)
	}
	if got := counter(t, w1.reg, "freeway_calligraphus_entries_forwarded_total", "direction", "out"); got != 1 {
		t.Errorf("w1 forwarded %v entries, want 1", got)
	}

	// The old session ends: w1 joins with its own address.
	ghost.Close()
	testkit.WaitFor(t, "w2 to see the restarted w1's address", func() bool {
		return w2.c.currentView().addr["w1"] == w1.c.advertised
	})
}
