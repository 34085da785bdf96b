package copier

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/layout"
)

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
