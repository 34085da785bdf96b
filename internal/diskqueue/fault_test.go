package diskqueue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/testkit"
)

// faults is a FileHook that fails chosen operations.
type faults struct {
	mu   sync.Mutex
	fail map[FileOp]int // how many more of each to fail; -1: all
	only string         // if set, only paths containing it fail
	skip string         // if set, paths containing it do not fail
	rnd  *rand.Rand     // if set, each write or sync fails with probability 1/8
	ops  []string       // every operation seen
}

func (f *faults) hook(op FileOp, path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, string(op)+" "+filepath.Base(path))
	base := filepath.Base(path)
	if f.only != "" && !strings.Contains(base, f.only) || f.skip != "" && strings.Contains(base, f.skip) {
		return nil
	}
	if f.rnd != nil && (op == OpWrite || op == OpSync || op == OpTruncate) && f.rnd.IntN(8) == 0 {
		return syscall.ENOSPC
	}
	switch n := f.fail[op]; {
	case n < 0:
		return syscall.ENOSPC
	case n > 0:
		f.fail[op] = n - 1
		return syscall.ENOSPC
	}
	return nil
}

func (f *faults) set(op FileOp, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail == nil {
		f.fail = map[FileOp]int{}
	}
	f.fail[op] = n
}

func (f *faults) clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail, f.rnd = nil, nil
}

func (f *faults) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ops)
}

func openFaulty(t *testing.T, dir string, f *faults, mut func(*Options)) (*Queue, *testkit.LogBuffer) {
	return open(t, dir, func(o *Options) {
		o.FileHook = f.hook
		o.RetryInterval = time.Nanosecond
		if mut != nil {
			mut(o)
		}
	})
}

func segSizes(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	m := map[string]int64{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), segSuffix) {
			fi, _ := e.Info()
			m[e.Name()] = fi.Size()
		}
	}
	return m
}

// reopenAndReadAll closes q, opens dir again and reads everything.
func reopenAndReadAll(t *testing.T, q *Queue, dir string) []string {
	t.Helper()
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q, _ = open(t, dir, nil)
	defer q.Close()
	st := q.Stats()
	return readAll(t, q, int(st.NextSeq-st.Acked), true)
}

// A write error in a group commit used to make the queue refuse every
// later append (and the agent exit). Now the commit is rolled back,
// only its callers fail, and nothing of theirs remains.
func TestWriteAndSyncErrorsFailOnlyTheirGroup(t *testing.T) {
	for _, op := range []FileOp{OpWrite, OpSync} {
		t.Run(string(op), func(t *testing.T) {
			dir := t.TempDir()
			f := &faults{}
			q, lb := openFaulty(t, dir, f, nil)
			mustAppend(t, q, entries("ok", 3))
			before := segSizes(t, dir)
			f.set(op, 1)
			if _, err := q.Append(entries("refused", 5)); err == nil || !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("append with a failing %s = %v, want ENOSPC", op, err)
			}
			if after := segSizes(t, dir); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("segments after the rollback %v, before %v", after, before)
			}
			st := q.Stats()
			if st.WriteErrors != 1 || st.Unavailable || st.NextSeq != 4 || st.Entries != 3 {
				t.Fatalf("stats after a rolled-back commit: %+v", st)
			}
			if first := mustAppend(t, q, entries("later", 2)); first != 4 {
				t.Fatalf("append after the rollback got %d, want 4", first)
			}
			if !strings.Contains(lb.String(), "queue write failed") {
				t.Errorf("no error logged: %s", lb.String())
			}
			want := "ok-0,ok-1,ok-2,later-0,later-1"
			if got := strings.Join(readAll(t, q, 5, false), ","); got != want {
				t.Fatalf("read %s, want %s", got, want)
			}
			if got := strings.Join(reopenAndReadAll(t, q, dir), ","); got != want {
				t.Fatalf("after reopening read %s, want %s", got, want)
			}
		})
	}
}

// A commit that started a new segment and then failed removes it.
func TestFailedRollRemovesItsNewSegment(t *testing.T) {
	for _, op := range []FileOp{OpCreate, OpRename, OpSyncDir, OpWrite} {
		t.Run(string(op), func(t *testing.T) {
			dir := t.TempDir()
			f := &faults{}
			small := func(o *Options) { o.SegmentBytes = 300 }
			q, _ := openFaulty(t, dir, f, small)
			mustAppend(t, q, entries("ok", 5))
			before := segSizes(t, dir)
			f.set(op, 1)
			if _, err := q.Append(entries("refused", 20)); err == nil {
				t.Fatal("append with a failing roll succeeded")
			}
			if after := segSizes(t, dir); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("files after the rollback %v, before %v", after, before)
			}
			mustAppend(t, q, entries("later", 20))
			want := slices.Concat(messages(entries("ok", 5)), messages(entries("later", 20)))
			if got := reopenAndReadAll(t, q, dir); !slices.Equal(got, want) {
				t.Fatalf("read %v, want %v", got, want)
			}
		})
	}
}

// When the rollback fails too, appends are refused (ErrUnavailable)
// while the queue keeps delivering and acknowledging what is durable, and
// retries the repair until it succeeds.
func TestFailedRollbackRefusesAppendsUntilRepaired(t *testing.T) {
	dir := t.TempDir()
	f := &faults{}
	q, lb := openFaulty(t, dir, f, nil)
	mustAppend(t, q, entries("ok", 3))
	f.set(OpWrite, 1)
	f.set(OpTruncate, -1)
	if _, err := q.Append(entries("refused", 5)); err == nil {
		t.Fatal("append with a failing write succeeded")
	}
	if !q.Stats().Unavailable {
		t.Fatalf("stats do not say unavailable: %+v", q.Stats())
	}
	for range 3 {
		if _, err := q.Append(entries("refused", 1)); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("append while the rollback fails = %v, want ErrUnavailable", err)
		}
	}
	b := read(t, q, 1<<20, 100)
	if strings.Join(messages(b.Entries), ",") != "ok-0,ok-1,ok-2" {
		t.Fatalf("read %v while unavailable", messages(b.Entries))
	}
	if err := q.Ack(b); err != nil {
		t.Fatalf("ack while unavailable: %v", err)
	}
	f.clear()
	if _, err := q.Append(entries("later", 2)); err != nil {
		t.Fatalf("append once the repair can succeed: %v", err)
	}
	if st := q.Stats(); st.Unavailable || st.NextSeq != 6 {
		t.Fatalf("stats after the repair: %+v", st)
	}
	if !strings.Contains(lb.String(), "queue repaired") {
		t.Errorf("no note of the repair: %s", lb.String())
	}
	if got := strings.Join(reopenAndReadAll(t, q, dir), ","); got != "later-0,later-1" {
		t.Fatalf("after reopening read %s", got)
	}
}

// TestCloseRepairsAPendingRollback: a commit whose fsync failed wrote its
// records whole, and its rollback failed too; the queue is closed before
// a repair succeeded (an agent stopped by its operator over the errors).
// Close cuts them: left there, the next Open took them for entries, and
// delivered what their callers were told had failed (and appended again:
// duplicates).
func TestCloseRepairsAPendingRollback(t *testing.T) {
	dir := t.TempDir()
	f := &faults{}
	q, _ := openFaulty(t, dir, f, nil)
	mustAppend(t, q, entries("ok", 3))
	f.set(OpSync, 1)
	f.set(OpTruncate, 1)
	if _, err := q.Append(entries("failed", 2)); err == nil {
		t.Fatal("append with a failing sync succeeded")
	}
	if !q.Stats().Unavailable {
		t.Fatalf("the rollback did not fail: %+v", q.Stats())
	}
	if got := strings.Join(reopenAndReadAll(t, q, dir), ","); got != "ok-0,ok-1,ok-2" {
		t.Fatalf("after closing and reopening read %s", got)
	}
}

// Concurrent appends while writes, fsyncs and rollbacks fail at random:
// every Append either succeeds or fails, and what is read (before and
// after reopening) is exactly what succeeded, each once, in order.
func TestRandomFaultsLoseAndRepeatNothing(t *testing.T) {
	dir := t.TempDir()
	f := &faults{rnd: rand.New(rand.NewPCG(1, 2))}
	q, _ := openFaulty(t, dir, f, func(o *Options) { o.SegmentBytes = 2 << 10 })
	var (
		mu sync.Mutex
		ok = map[uint64][]string{}
		wg sync.WaitGroup
	)
	for w := range 8 {
		wg.Go(func() {
			for c := range 40 {
				es := entries(fmt.Sprintf("w%d-c%d", w, c), 1+c%7)
				first, err := q.Append(es)
				if err != nil {
					continue
				}
				mu.Lock()
				ok[first] = messages(es)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	f.clear()
	testkit.Eventually(t, "appends to succeed without faults", func() error {
		first, err := q.Append(entries("final", 1))
		if err == nil {
			ok[first] = []string{"final-0"}
		}
		return err
	})
	var want []string
	for _, seq := range slices.Sorted(func(yield func(uint64) bool) {
		for k := range ok {
			if !yield(k) {
				return
			}
		}
	}) {
		want = append(want, ok[seq]...)
	}
	st := q.Stats()
	t.Logf("%d appends succeeded, %d commits failed", len(ok), st.WriteErrors)
	if st.WriteErrors == 0 {
		t.Fatal("no commit failed: the test injected nothing")
	}
	if int(st.NextSeq-1) != len(want) {
		t.Fatalf("next sequence number %d after %d entries", st.NextSeq, len(want))
	}
	if got := readAll(t, q, len(want), false); !slices.Equal(got, want) {
		t.Fatalf("read %d entries, want the %d appended", len(got), len(want))
	}
	if got := reopenAndReadAll(t, q, dir); !slices.Equal(got, want) {
		t.Fatalf("after reopening read %d entries, want the %d appended", len(got), len(want))
	}
}

// A failed write of the acknowledged position changes nothing and can be
// retried.
func TestAckWriteErrorCanBeRetried(t *testing.T) {
	dir := t.TempDir()
	f := &faults{only: "acked"}
	q, _ := openFaulty(t, dir, f, nil)
	mustAppend(t, q, entries("a", 4))
	b1 := read(t, q, 1<<20, 2)
	if err := q.Ack(b1); err != nil {
		t.Fatal(err)
	}
	b2 := read(t, q, 1<<20, 2)
	f.set(OpSync, 1)
	if err := q.Ack(b2); err == nil {
		t.Fatal("ack with a failing fsync succeeded")
	}
	if st := q.Stats(); st.Acked != 3 {
		t.Fatalf("acked = %d after a failed ack, want 3", st.Acked)
	}
	if err := q.Ack(b2); err != nil {
		t.Fatalf("retried ack: %v", err)
	}
	if st := q.Stats(); st.Acked != 5 || st.Bytes != 0 {
		t.Fatalf("stats after the retried ack: %+v", st)
	}
	q.Close()
	q, _ = open(t, dir, nil)
	defer q.Close()
	if st := q.Stats(); st.Acked != 5 {
		t.Fatalf("acked after reopening = %d, want 5", st.Acked)
	}
}

// Open on a full disk cannot start its segment: it opens all the same,
// delivers what is durable, refuses appends, and starts the segment once
// it can.
func TestOpenOnAFullDiskStillDelivers(t *testing.T) {
	dir := t.TempDir()
	q, _ := open(t, dir, nil)
	mustAppend(t, q, entries("old", 3))
	q.Close()
	f := &faults{}
	f.set(OpCreate, -1)
	q, lb := openFaulty(t, dir, f, nil)
	defer q.Close()
	if !q.Stats().Unavailable || !strings.Contains(lb.String(), "cannot start a new queue segment") {
		t.Fatalf("open on a full disk: %+v %s", q.Stats(), lb.String())
	}
	if _, err := q.Append(entries("refused", 1)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("append = %v, want ErrUnavailable", err)
	}
	b := read(t, q, 1<<20, 10)
	if strings.Join(messages(b.Entries), ",") != "old-0,old-1,old-2" {
		t.Fatalf("read %v", messages(b.Entries))
	}
	if err := q.Ack(b); err != nil {
		t.Fatal(err)
	}
	f.clear()
	if first := mustAppend(t, q, entries("new", 1)); first != 4 {
		t.Fatalf("append after space returned got %d, want 4", first)
	}
	nb := read(t, q, 1<<20, 10)
	if nb.First != 4 || nb.Incarnation == b.Incarnation || nb.Incarnation == "" {
		t.Fatalf("new entry read as %d with incarnation changed %v", nb.First, nb.Incarnation != b.Incarnation)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := q.Read(ctx, 1<<20, 10); !errors.Is(err, context.Canceled) {
		t.Fatalf("a further read = %v, want nothing left", err)
	}
}

// The segment an earlier run started and left empty is replaced by this
// run's (same first sequence number) when Open could not create it at
// once; the reader, positioned in the old one, follows.
func TestReplacedEmptySegmentIsFollowed(t *testing.T) {
	dir := t.TempDir()
	q, _ := open(t, dir, nil)
	mustAppend(t, q, entries("old", 3))
	if err := q.Ack(read(t, q, 1<<20, 10)); err != nil {
		t.Fatal(err)
	}
	q.Close()
	q, _ = open(t, dir, nil) // starts segment 4 and leaves it empty
	q.Close()
	f := &faults{}
	f.set(OpCreate, -1)
	q, _ = openFaulty(t, dir, f, nil)
	defer q.Close()
	if !q.Stats().Unavailable {
		t.Fatal("open did not fail to start its segment")
	}
	got := make(chan Batch, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b, err := q.Read(ctx, 1<<20, 10)
		if err != nil {
			t.Error(err)
		}
		got <- b
	}()
	f.clear()
	if first := mustAppend(t, q, entries("new", 1)); first != 4 {
		t.Fatalf("append got %d, want 4", first)
	}
	if b := <-got; b.First != 4 || strings.Join(messages(b.Entries), ",") != "new-0" || q.Stats().Lost != 0 {
		t.Fatalf("read %d %v, lost %d", b.First, messages(b.Entries), q.Stats().Lost)
	}
}

// The queue directory an Open makes, and its missing parents, have
// durable names before Open returns: their parents are fsynced. Only the
// queue directory itself was (for its segments' names), so a machine
// crash soon after an agent's first start could lose the directory with
// every entry acknowledged in it.
func TestOpenMakesItsDirectoryDurable(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "agent", "queue")
	f := &faults{}
	q, _ := openFaulty(t, dir, f, nil)
	defer q.Close()
	for _, want := range []string{"syncdir " + filepath.Base(base), "syncdir agent"} {
		if !slices.Contains(f.seen(), want) {
			t.Errorf("Open did %q, not %q", f.seen(), want)
		}
	}
}
