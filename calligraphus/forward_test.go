package calligraphus

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

const clusterBuckets = 12

// clusterRouter buckets category "cat" into clusterBuckets by the
// message up to its first "#".
func clusterRouter() *Router {
	return NewRouter(1, map[string]Route{"cat": {Buckets: clusterBuckets, NewKeyFunc: func() func([]byte) (string, error) {
		return func(m []byte) (string, error) {
			k, _, _ := strings.Cut(string(m), "#")
			return k, nil
		}
	}}})
}

// cluster is several writers on one dfs and one coordination service.
type cluster struct {
	t       *testing.T
	fsys    dfs.FS
	ws      []*server
	coords  []coord.Coord
	observe coord.Coord   // for holder look-ups by the test
	tweak   func(*Config) // applied to every writer's configuration (nil: none)
}

// startCluster starts n writers w1..wn; newCoord opens one coordinator
// session per writer (and one for the test).
func startCluster(t *testing.T, n int, fsys dfs.FS, newCoord func() coord.Coord) *cluster {
	cl := &cluster{t: t, fsys: fsys, observe: newCoord()}
	for i := 1; i <= n; i++ {
		cl.add(fmt.Sprintf("w%d", i), newCoord())
	}
	cl.waitMembers(n)
	return cl
}

func (cl *cluster) add(id string, co coord.Coord) *server {
	cfg := testConfig()
	cfg.ID = id
	cfg.Linger = 0
	if cl.tweak != nil {
		cl.tweak(&cfg)
	}
	s := startServer(cl.t, cfg, cl.fsys, co, clusterRouter())
	cl.ws = append(cl.ws, s)
	cl.coords = append(cl.coords, co)
	return s
}

// waitMembers waits until every running writer sees n live writers.
func (cl *cluster) waitMembers(n int) {
	testkit.WaitFor(cl.t, fmt.Sprintf("every writer to see %d live writers", n), func() bool {
		for _, s := range cl.ws {
			if s.stopped() {
				continue
			}
			if len(s.c.currentView().ids) != n {
				return false
			}
		}
		return true
	})
}

// waitSettled waits until every bucket of "cat" is held by its
// preferred writer (as the first running writer sees the group), and
// checks that none holds more than most.
func (cl *cluster) waitSettled(most int) {
	var holders []string
	testkit.WaitFor(cl.t, "every bucket to be held by its preferred writer", func() bool {
		var v *view
		for _, s := range cl.ws {
			if !s.stopped() {
				v = s.c.currentView()
				break
			}
		}
		holders = cl.holders()
		for b, h := range holders {
			if h == "" || h != v.preferred("cat", b, clusterBuckets) {
				return false
			}
		}
		return true
	})
	per := map[string]int{}
	for _, h := range holders {
		per[h]++
	}
	for h, n := range per {
		if n > most {
			cl.t.Errorf("%s holds %d of %d buckets (holders %v)", h, n, clusterBuckets, holders)
		}
	}
}

// holders maps each bucket of "cat" to its lease holder ("" if none).
func (cl *cluster) holders() []string {
	out := make([]string, clusterBuckets)
	for b := range out {
		h, _, err := cl.observe.Holder(context.Background(), layout.WriterLease("cat", b))
		if err != nil {
			cl.t.Fatal(err)
		}
		out[b] = h
	}
	return out
}

// keys returns, for each bucket of "cat", a message routed there.
func bucketKeys(t *testing.T) []string {
	r := clusterRouter()
	keys := make([]string, clusterBuckets)
	found := 0
	for i := 0; found < clusterBuckets; i++ {
		k := "k" + strconv.Itoa(i)
		b, ok := r.Bucket("cat", []byte(k))
		if !ok {
			t.Fatal("unroutable key")
		}
		if keys[b] == "" {
			keys[b] = k
			found++
		}
	}
	return keys
}

// agentBatch is a batch of the agent "ag", incarnation "inc", entries
// first..first+n-1, spread over every bucket: entry i is keys[i%12] +
// "#" + its sequence number.
func agentBatch(keys []string, first int64, n int) *scribethrift.Batch {
	inc := "inc"
	b := &scribethrift.Batch{AgentID: "ag", Incarnation: &inc, FirstSeq: first, ReceivedAtMs: 1_000_000}
	for i := 0; i < n; i++ {
		seq := first + int64(i)
		b.Messages = append(b.Messages, &scribethrift.LogEntry{Category: "cat", Message: []byte(keys[int(seq)%len(keys)] + "#" + strconv.FormatInt(seq, 10))})
	}
	return b
}

// readAll reads every bucket of "cat" as readers count it: entry → (agent,
// seq), in bucket order.
func readAll(t *testing.T, fsys dfs.FS) []entry {
	t.Helper()
	var out []entry
	for b := 0; b < clusterBuckets; b++ {
		dir := layout.BucketDir("cat", b)
		infos, err := layout.Published(fsys, dir, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, fi := range infos {
			for _, e := range readSegment(t, fsys, path.Join(dir, fi.Name())) {
				e.Segment = dir
				out = append(out, e)
			}
		}
	}
	return out
}

// TestForwardingAndBalance: three writers share twelve buckets; an agent
// sends every batch to one writer, which forwards what others hold.
// Every entry arrives exactly once with its agent, sequence number and
// arrival time, in sequence order within its bucket; the buckets are
// spread (none holds more than 5); after one writer stops, the other two
// hold all twelve.
func TestForwardingAndBalance(t *testing.T) {
	t.Run("inproc", func(t *testing.T) {
		hub, _ := inprocCoord(t)
		testForwardingAndBalance(t, newLocal(t), sessions(t, hub))
	})
	t.Run("engines", func(t *testing.T) {
		fsys, newCoord := engineBackends(t)
		testForwardingAndBalance(t, fsys, newCoord)
	})
}

func randomSuffix(t *testing.T) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func testForwardingAndBalance(t *testing.T, fsys dfs.FS, newCoord func() coord.Coord) {
	keys := bucketKeys(t)
	cl := startCluster(t, 3, fsys, newCoord)
	w1 := cl.ws[0].dial(t)

	// The buckets of a category an app consumes are all known: each
	// writer takes those it is preferred for, without waiting for entries
	// (a writer started before the others took them all, and handed them
	// off as the others joined).
	cl.waitSettled(5)

	// Every batch to w1; each is answered OK at the first try.
	const batches, per = 8, 36
	seq := int64(1)
	for i := 0; i < batches; i++ {
		rc, err := w1.LogBatch(context.Background(), agentBatch(keys, seq, per))
		if err != nil || rc != scribethrift.ResultCode_OK {
			t.Fatalf("batch %d to w1: %v %v", i, rc, err)
		}
		seq += per
	}
	holders := cl.holders()
	perWriter := map[string]int{}
	for b, h := range holders {
		if h == "" {
			t.Errorf("bucket %d has no holder after entries were written to it", b)
		}
		perWriter[h]++
	}
	for h, n := range perWriter {
		if n > 5 {
			t.Errorf("%s holds %d of %d buckets (holders %v)", h, n, clusterBuckets, holders)
		}
	}
	if len(perWriter) != 3 {
		t.Errorf("buckets held by %v, want all three writers", perWriter)
	}
	for _, s := range cl.ws {
		if got := counter(t, s.reg, "freeway_calligraphus_buckets_held"); got != float64(perWriter[s.c.cfg.ID]) {
			t.Errorf("%s: buckets_held %v, holds %d", s.c.cfg.ID, got, perWriter[s.c.cfg.ID])
		}
	}
	if got := counter(t, cl.ws[0].reg, "freeway_calligraphus_entries_forwarded_total", "direction", "out"); got != float64(batches*per-perWriter["w1"]*batches*per/clusterBuckets) {
		t.Errorf("w1 forwarded %v entries, want %d (it holds %d buckets)", got, batches*per-perWriter["w1"]*batches*per/clusterBuckets, perWriter["w1"])
	}

	// One writer stops: it leaves the group and releases its buckets; the
	// others take them, entries or not.
	cl.ws[2].stop()
	cl.waitMembers(2)
	cl.waitSettled(6)
	for i := 0; i < batches; i++ {
		b := agentBatch(keys, seq, per)
		testkit.WaitFor(t, "a batch to be taken after w3 stopped", func() bool {
			rc, err := w1.LogBatch(context.Background(), b)
			if err != nil {
				t.Fatal(err)
			}
			return rc == scribethrift.ResultCode_OK
		})
		seq += per
	}
	holders = cl.holders()
	perWriter = map[string]int{}
	for _, h := range holders {
		perWriter[h]++
	}
	if perWriter["w1"]+perWriter["w2"] != clusterBuckets {
		t.Errorf("after w3 stopped, holders %v, want w1 and w2 to hold all %d", holders, clusterBuckets)
	}

	// A writer joins: the others hand its share over as entries flow.
	cl.add("w4", newCoord())
	cl.waitMembers(3)
	testkit.WaitFor(t, "w4 to take its share of the buckets", func() bool {
		b := agentBatch(keys, seq, per)
		rc, err := w1.LogBatch(context.Background(), b)
		if err != nil {
			t.Fatal(err)
		}
		if rc == scribethrift.ResultCode_OK {
			seq += per
		}
		perWriter := map[string]int{}
		for _, h := range cl.holders() {
			perWriter[h]++
		}
		return perWriter[""] == 0 && perWriter["w4"] > 0 && perWriter["w1"] <= 5 && perWriter["w2"] <= 5 && perWriter["w4"] <= 5
	})
	if got := counter(t, cl.ws[0].reg, "freeway_calligraphus_handoffs_total") + counter(t, cl.ws[1].reg, "freeway_calligraphus_handoffs_total"); got == 0 {
		t.Errorf("no hand-offs counted though w4 took buckets over")
	}
	for _, s := range cl.ws {
		s.stop()
	}

	// Every entry, with its agent, sequence number and arrival; in order
	// within each bucket. Batches retried after w3 stopped may repeat
	// entries (same sequence numbers, dropped by Puma); before, none.
	got := readAll(t, fsys)
	seen := map[uint64]int{}
	last := map[string]uint64{}
	for _, e := range got {
		if e.Agent != "ag/inc" || e.Arrival != 1_000_000 {
			t.Fatalf("entry %q: agent %q arrival %d", e.Msg, e.Agent, e.Arrival)
		}
		want := keys[int(e.Seq)%len(keys)] + "#" + strconv.FormatUint(e.Seq, 10)
		if e.Msg != want {
			t.Fatalf("entry %q has sequence number %d (want message %q)", e.Msg, e.Seq, want)
		}
		// A new entry comes after every earlier one of its bucket; only a
		// repeat (of a retried batch) may come later.
		if e.Seq < last[e.Segment] && seen[e.Seq] == 0 {
			t.Errorf("bucket %s: seq %d after %d", e.Segment, e.Seq, last[e.Segment])
		}
		last[e.Segment] = max(last[e.Segment], e.Seq)
		seen[e.Seq]++
	}
	// (A batch answered TRY_LATER in the last phase may have been written
	// in part; only entries up to seq were answered OK.)
	for s := int64(1); s < seq; s++ {
		n := seen[uint64(s)]
		if n == 0 {
			t.Errorf("entry %d lost", s)
		}
		if n > 1 && s <= batches*per {
			t.Errorf("entry %d written %d times though its batch was answered OK at once", s, n)
		}
	}
	if len(seen) < int(seq-1) {
		t.Errorf("%d distinct entries, want at least %d", len(seen), seq-1)
	}
}

// TestForwardedBatchIsNotForwardedAgain: a forwarded batch reaching a
// writer that does not hold the bucket (the holder changed meanwhile) is
// refused, never sent on: no loop.
func TestForwardedBatchIsNotForwardedAgain(t *testing.T) {
	hub, _ := inprocCoord(t)
	cl := startCluster(t, 2, newLocal(t), sessions(t, hub))
	// A category no app consumes (one bucket, taken on traffic only): w1
	// takes it (forwarded batches are written where they land).
	one := func(s *server, forwarded bool) scribethrift.ResultCode {
		rc, err := s.dial(t).LogBatch(context.Background(), &scribethrift.Batch{Messages: entries("other", "x"), Forwarded: thriftBool(forwarded)})
		if err != nil {
			t.Fatal(err)
		}
		return rc
	}
	if rc := one(cl.ws[0], true); rc != scribethrift.ResultCode_OK {
		t.Fatalf("w1: %v", rc)
	}
	if rc := one(cl.ws[1], true); rc != scribethrift.ResultCode_TRY_LATER {
		t.Errorf("forwarded batch to w2 for w1's bucket: %v, want TRY_LATER", rc)
	}
	if got := counter(t, cl.ws[1].reg, "freeway_calligraphus_entries_forwarded_total", "direction", "out"); got != 0 {
		t.Errorf("w2 forwarded %v entries of a forwarded batch", got)
	}
	// Not forwarded, the same batch goes to the holder.
	if rc := one(cl.ws[1], false); rc != scribethrift.ResultCode_OK {
		t.Errorf("batch to w2 for w1's bucket: %v, want OK (forwarded to w1)", rc)
	}
	if got := counter(t, cl.ws[1].reg, "freeway_calligraphus_entries_forwarded_total", "direction", "out"); got != 1 {
		t.Errorf("w2 forwarded %v entries, want 1", got)
	}
	if got := counter(t, cl.ws[0].reg, "freeway_calligraphus_entries_forwarded_total", "direction", "in"); got != 2 {
		t.Errorf("w1 took %v forwarded entries, want 2 (the test's and w2's)", got)
	}
}

func (s *server) stopped() bool {
	select {
	case <-s.ctxDone():
		return true
	default:
		return false
	}
}

// readSegment reads one published segment in full.
func readSegment(t *testing.T, fsys dfs.FS, name string) []entry {
	t.Helper()
	data, err := dfs.ReadFile(fsys, name)
	if err != nil {
		t.Fatal(err)
	}
	r, err := segment.NewReader(bytes.NewReader(data), 0)
	if err != nil {
		t.Fatalf("segment %s: %v", name, err)
	}
	var out []entry
	var b segment.Block
	for {
		err := r.Next(&b)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("segment %s: %v", name, err)
		}
		for i, m := range b.Messages {
			e := entry{Agent: b.Agent, Msg: string(m), Arrival: b.ArrivalMs}
			if b.Seqs != nil {
				e.Seq = b.Seqs[i]
			}
			out = append(out, e)
		}
	}
}
