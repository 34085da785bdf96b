package copier

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
)

// segmentLines reads the messages of the segment name in fsys, failing
// the test on any damage.
func segmentLines(t *testing.T, fsys dfs.FS, name string) []string {
	t.Helper()
	f, err := fsys.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := segment.NewReader(f, 0)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var out []string
	for {
		var b segment.Block
		switch err := r.Next(&b); {
		case err == io.EOF:
			return out
		case err != nil:
			t.Fatalf("%s: %v", name, err)
		}
		for _, m := range b.Messages {
			out = append(out, string(m))
		}
	}
}

// destinationLines is every line at the destination, in the order a
// reader of the warehouse takes them: the period files in period order
// (their names sort so), then each bucket's segments in name order.
func destinationLines(t *testing.T, fsys dfs.FS) []string {
	t.Helper()
	var periods, segs []string
	for _, name := range files(t, fsys, "") {
		switch {
		case dfs.Hidden(name):
		case strings.HasSuffix(name, layout.SegmentExt):
			segs = append(segs, segmentLines(t, fsys, name)...)
		default:
			periods = append(periods, strings.Split(strings.TrimSuffix(readMergedText(t, fsys, name), "\n"), "\n")...)
		}
	}
	return append(periods, segs...)
}

// straddling publishes a bucket whose first segment straddles the end of
// hour 07: its first block arrived in hour 07, its second in hour 08
// (published a second later, as a writer's segment_max_age has it); a
// second segment follows in hour 08. It returns every line in bucket
// order.
func straddling(t *testing.T, e *mergeEnv) []string {
	t.Helper()
	end := t0.Add(time.Hour)
	a, b, c := lines("before the hour", 4), lines("after the hour", 3), lines("next segment", 2)
	e.publishAt(t, "access", 0, 1, end.Add(time.Second),
		blk{end.Add(-500 * time.Millisecond), a}, blk{end.Add(300 * time.Millisecond), b})
	e.publishAt(t, "access", 0, 2, end.Add(10*time.Minute), blk{end.Add(10 * time.Minute), c})
	return slices.Concat(a, b, c)
}

// TestCopyAfterMergeCopiesOnlyWhatIsNotMerged: merging stopped inside a
// segment (the period ended there); merge_period is then removed. The
// segment goes to the destination without the blocks already in the
// period file: every line is at the destination once.
func TestCopyAfterMergeCopiesOnlyWhatIsNotMerged(t *testing.T) {
	e := newMergeEnv(t)
	want := straddling(t, e)
	e.clock.Set(t0.Add(90 * time.Minute)) // hour 07 closed, 08 open
	if st := mergePass(t, e.copier(t, "merging", e.merging(nil))); st.Merged != 1 {
		t.Fatalf("merge %+v, want hour 07 written", st)
	}
	if got := readMergedText(t, e.dst, hourFile("access", 0, t0)); got != text(want[:4]) {
		t.Fatalf("hour 07 holds %q", got)
	}

	n := e.copier(t, "copying")
	if st := copyOnce(t, n); st.Copied != 2 {
		t.Fatalf("copy %+v, want both segments", st)
	}
	if got := destinationLines(t, e.dst); !slices.Equal(got, want) {
		t.Errorf("destination holds %d lines %q, want each of the %d once: %q", len(got), got, len(want), want)
	}
	// A pass from scratch (progress as it is) finds it all done.
	if st := copyOnce(t, e.copier(t, "again")); st.Copied+st.Replaced != 0 {
		t.Errorf("another pass %+v, want nothing copied", st)
	}
	if last, _ := LastCopied(context.Background(), e.st, "copier", "access", 0); last != layout.SegmentName(1, 2) {
		t.Errorf("progress %q, want the last segment", last)
	}
}

// TestSwitchToCopyingCrashAnywhereDeliversEveryLineOnce: a merging copier
// dies at any point of its pass (each destination call, each progress
// write) and comes back copying segments; or a copier switched to copying
// dies at any point of its first pass and comes back, after a merge that
// recorded its period file done or (pending) one that died after
// publishing it, before recording it: every line is at the destination
// once.
func TestSwitchToCopyingCrashAnywhereDeliversEveryLineOnce(t *testing.T) {
	for _, verify := range []string{VerifySize, VerifyChecksum} {
		for _, phase := range []string{"merging", "copying", "pending"} {
			t.Run(verify+"/"+phase, func(t *testing.T) {
				for k := 1; ; k++ {
					if !switchCrashAt(t, verify, phase, k) {
						if k < 5 {
							t.Fatalf("only %d fault points", k)
						}
						return
					}
				}
			})
		}
	}
}

// switchCrashAt fails the k-th call of the phase's copier, in the
// destination and in the store (one run each, the store's before and
// after the write applies), then restarts a copier that copies segments;
// it reports whether a fault was reached. The bucket: a segment of hour
// 07, then the segments of straddling: the period file of hour 07 ends
// inside the second one.
func switchCrashAt(t *testing.T, verify, phase string, k int) (fired bool) {
	for _, where := range []string{"dfs", "store", "store-after"} {
		e := newMergeEnv(t)
		first := lines("first segment", 3)
		e.publishAt(t, "access", 0, 0, t0.Add(20*time.Minute), blk{t0.Add(20 * time.Minute), first})
		want := slices.Concat(first, straddling(t, e))
		e.clock.Set(t0.Add(90 * time.Minute))
		ffs := &faultFS{FS: e.dst}
		fst := &faultStore{Store: e.st, after: where == "store-after"}
		opts := []option{withDest(ffs), withStore(fst), withConfig(func(c *Config) { c.Verify = verify })}
		switch phase {
		case "merging":
			opts = append(opts, e.merging(nil))
		case "copying":
			mergePass(t, e.copier(t, "merging", e.merging(nil)))
		case "pending":
			// The file is published; recording it done fails.
			m := e.copier(t, "merging", e.merging(nil), withStore(&faultStore{Store: e.st, k: 2}))
			if _, err := m.CopyOnce(context.Background()); !errors.Is(err, errInjected) {
				t.Fatalf("merging pass: %v", err)
			}
			m.session.Close()
		}
		crashed := e.copier(t, "crashed", opts...)
		ffs.n = 0
		if where == "dfs" {
			ffs.k = k
		} else {
			fst.k = k
		}
		_, _ = crashed.CopyOnce(context.Background())
		crashed.session.Close()
		fired = fired || ffs.fired || fst.fired

		copyOnce(t, e.copier(t, "restarted", withConfig(func(c *Config) { c.Verify = verify })))
		if got := destinationLines(t, e.dst); !slices.Equal(got, want) {
			t.Errorf("%s fault %d: destination holds %d lines %q, want each of the %d once", where, k, len(got), got, len(want))
		}
		for _, name := range files(t, e.dst, "") {
			if dfs.Hidden(name) && !strings.Contains(name, "/dt=") {
				t.Errorf("%s fault %d: %s left at the destination", where, k, name)
			}
		}
		if last, _ := LastCopied(context.Background(), e.st, "copier", "access", 0); last != layout.SegmentName(1, 2) {
			t.Errorf("%s fault %d: progress %q, want the last segment", where, k, last)
		}
	}
	return fired
}

// TestCopyAfterMergeThatFinishedNoSegment: merging wrote its first period
// file from inside the bucket's first segment, so its "last" is empty;
// merge_period is then removed. The copier copies the bucket, rather
// than taking its own empty mark for another copier's and stopping every
// pass.
func TestCopyAfterMergeThatFinishedNoSegment(t *testing.T) {
	e := newMergeEnv(t)
	straddling(t, e)
	e.clock.Set(t0.Add(90 * time.Minute))
	mergePass(t, e.copier(t, "merging", e.merging(nil)))
	if last, recorded, _ := BucketProgress(context.Background(), e.st, "copier", "access", 0); last != "" || !recorded {
		t.Fatalf("after the merge: last %q recorded %v, want an empty mark", last, recorded)
	}
	n := e.copier(t, "copying")
	for i := range 2 {
		if st, err := n.CopyOnce(context.Background()); err != nil || st.Errors != 0 {
			t.Fatalf("copy pass %d: %+v %v", i, st, err)
		}
	}
	if last, _ := LastCopied(context.Background(), e.st, "copier", "access", 0); last != layout.SegmentName(1, 2) {
		t.Errorf("progress %q, want the last segment", last)
	}
}

// TestMergePeriodChangedAfterCrashDeliversEveryLineOnce: a merging copier
// publishes a period file and dies before recording it done; it comes
// back with another merge_period (1h → 30m, 30m → 1h), under which the
// period file decided has another name. It is found published under the
// name it had, not written again under the new one.
func TestMergePeriodChangedAfterCrashDeliversEveryLineOnce(t *testing.T) {
	for _, c := range []struct{ before, after time.Duration }{{time.Hour, 30 * time.Minute}, {30 * time.Minute, time.Hour}} {
		t.Run(fmt.Sprint(c.before, "→", c.after), func(t *testing.T) {
			e := newMergeEnv(t)
			first, second := lines("first", 3), lines("second", 4)
			e.publishAt(t, "access", 0, 1, t0.Add(35*time.Minute), blk{t0.Add(35 * time.Minute), first})
			e.publishAt(t, "access", 0, 2, t0.Add(100*time.Minute), blk{t0.Add(100 * time.Minute), second})
			e.clock.Set(t0.Add(90 * time.Minute)) // the first segment's period is closed under both
			period := func(d time.Duration) option {
				return e.merging(func(c *Config) { c.MergePeriod = config.Duration(d) })
			}
			// The second progress write, that the file is done, fails.
			fst := &faultStore{Store: e.st, k: 2}
			crashed := e.copier(t, "crashed", period(c.before), withStore(fst))
			if _, err := crashed.CopyOnce(context.Background()); !errors.Is(err, errInjected) {
				t.Fatalf("crashed pass: %v", err)
			}
			crashed.session.Close()

			e.clock.Set(t0.Add(4 * time.Hour))
			st := mergePass(t, e.copier(t, "restarted", period(c.after)))
			if st.Conflicts != 0 {
				t.Errorf("%+v", st)
			}
			if got, want := destinationLines(t, e.dst), slices.Concat(first, second); !slices.Equal(got, want) {
				t.Errorf("destination holds %q in %q, want each line once", got, files(t, e.dst, ""))
			}
		})
	}
}

// TestStaleMergingCopierIsFencedByACopyingOne: merge_period is removed
// in a rolling restart while the merging copier is paused: its lease
// goes to the new, copying, process, which copies the bucket. The merging
// copier then wakes up unaware, with the progress it read before, and
// must not merge (and publish) the lines just copied as segments, nor
// leave the period file it wrote before its decision was refused.
func TestStaleMergingCopierIsFencedByACopyingOne(t *testing.T) {
	e := newMergeEnv(t)
	want := straddling(t, e)
	e.clock.Set(t0.Add(90 * time.Minute))
	stale := e.copier(t, "stale", e.merging(nil))
	if st, err := stale.pass(context.Background(), staleLease{epoch: 1}, nil, true); err != nil || st.Merged != 1 {
		t.Fatalf("merging pass: %+v %v", st, err)
	}
	if st, err := e.copier(t, "new").pass(context.Background(), staleLease{epoch: 2}, nil, true); err != nil || st.Copied != 2 {
		t.Fatalf("copying pass: %+v %v", st, err)
	}
	e.clock.Set(t0.Add(3 * time.Hour)) // hour 08 closed
	if _, err := stale.pass(context.Background(), staleLease{epoch: 1}, nil, true); !errors.Is(err, errFenced) {
		t.Errorf("stale merging pass: %v, want it fenced", err)
	}
	for _, name := range files(t, e.dst, "") {
		if dfs.Hidden(name) {
			t.Errorf("%s left at the destination", name)
		}
	}
	if got := destinationLines(t, e.dst); !slices.Equal(got, want) {
		t.Errorf("destination holds %q in %q, want each line once", got, files(t, e.dst, ""))
	}
	if last, _ := LastCopied(context.Background(), e.st, "copier", "access", 0); last != layout.SegmentName(1, 2) {
		t.Errorf("progress %q, want the last segment", last)
	}
}

// TestStaleCopyingCopierIsFencedByAMergingOne: merge_period is set in a
// rolling restart while the copying copier is paused; the new, merging,
// process decides a period file. The copying copier then wakes up
// unaware: its progress write is refused.
func TestStaleCopyingCopierIsFencedByAMergingOne(t *testing.T) {
	e := newMergeEnv(t)
	e.publishAt(t, "access", 0, 1, t0.Add(10*time.Minute), blk{t0.Add(10 * time.Minute), lines("copied", 2)})
	stale := e.copier(t, "stale")
	if st, err := stale.pass(context.Background(), staleLease{epoch: 1}, nil, true); err != nil || st.Copied != 1 {
		t.Fatalf("copying pass: %+v %v", st, err)
	}
	// A segment straddling the end of hour 07: the merge's first file
	// ends inside it, so "last" stays where the copying copier left it.
	end := t0.Add(time.Hour)
	e.publishAt(t, "access", 0, 2, end.Add(time.Second),
		blk{end.Add(-500 * time.Millisecond), lines("merged", 2)}, blk{end.Add(300 * time.Millisecond), lines("not yet", 2)})
	e.clock.Set(t0.Add(90 * time.Minute))
	if st, err := e.copier(t, "new", e.merging(nil)).pass(context.Background(), staleLease{epoch: 2}, nil, true); err != nil || st.Merged != 1 {
		t.Fatalf("merging pass: %+v %v", st, err)
	}
	if _, err := stale.pass(context.Background(), staleLease{epoch: 1}, nil, true); !errors.Is(err, errFenced) {
		t.Errorf("stale copying pass: %v, want it fenced", err)
	}
	if last, _ := LastCopied(context.Background(), e.st, "copier", "access", 0); last != layout.SegmentName(1, 1) {
		t.Errorf("progress %q, moved by the stale copier", last)
	}
}
