package calligraphus

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// histSum is the sum of the observations of histogram name's series
// whose label step is step.
func histSum(t *testing.T, reg *prometheus.Registry, name, step string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "step" && lp.GetValue() == step {
					return m.GetHistogram().GetSampleSum()
				}
			}
		}
	}
	return 0
}

// TestPublishStepsMeasured: on a dfs where only a close makes bytes
// durable, freeway_calligraphus_publish_step_seconds tells where a
// batch's acknowledgement waited. The writer's clock is moved on only
// while the segment's close is held, so all of that time, and none of
// it elsewhere, is the close's.
func TestPublishStepsMeasured(t *testing.T) {
	_, co := inprocCoord(t)
	fsys := dfstest.NewFaulty(newLocal(t)).LikeHDFS()
	var clock atomic.Int64 // ns added to a fixed start
	start := time.Unix(1_700_000_000, 0)
	now := func() time.Time { return start.Add(time.Duration(clock.Load())) }
	s := startServerWith(t, testConfig(), fsys, co, nil, func(c *Calligraphus) { c.now = now })
	cl := s.dial(t)

	blocked, release := make(chan struct{}), make(chan struct{})
	fsys.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpClose && tempSeq(c.Name) == 1 {
			close(blocked)
			<-release
		}
		return nil
	})
	b := logAsync(cl, entries("cat", "a"))
	<-blocked
	clock.Add(int64(3 * time.Second)) // the close takes 3 s
	close(release)
	var got result
	testkit.WaitFor(t, "the batch to be answered", func() bool {
		select {
		case got = <-b:
			return true
		default:
			return false
		}
	})
	if got.err != nil || got.rc != scribethrift.ResultCode_OK {
		t.Fatalf("batch: %v %v, want OK", got.rc, got.err)
	}
	const name = "freeway_calligraphus_publish_step_seconds"
	for _, step := range []string{stepQueue, stepClose, stepWait, stepRename, stepFence} {
		if n := counter(t, s.reg, name, "step", step); n != 1 {
			t.Errorf("step %s observed %v times, want 1", step, n)
		}
	}
	if got := histSum(t, s.reg, name, stepClose); got != 3 {
		t.Errorf("close step: %v s, want 3", got)
	}
	for _, step := range []string{stepQueue, stepWait, stepRename, stepFence} {
		if got := histSum(t, s.reg, name, step); got != 0 {
			t.Errorf("step %s: %v s, want 0 (the clock moved only during the close)", step, got)
		}
	}
}
