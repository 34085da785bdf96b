package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/calligraphus"
	"github.com/freeway-dev/freeway/internal/segment"
)

// TestStagesFromSegments: each probe is found in the segment that holds
// it, and its freshness is split at its answer and at that segment's
// publish; probes not answered or not found are left out.
func TestStagesFromSegments(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the publish time is read with statx")
	}
	root := t.TempDir()
	bucket := filepath.Join(root, "bench", "0")
	if err := os.MkdirAll(filepath.Join(bucket, ".fence"), 0o755); err != nil {
		t.Fatal(err)
	}
	enc := segment.NewEncoder()
	data := enc.AppendHeader(nil)
	data = enc.AppendBlock(data, &segment.Block{Messages: [][]byte{
		[]byte(`{"ts":1,"key":"k1","id":"x","value":1}`),
		[]byte(`{"ts":1,"key":"probe-0","id":"p00001","value":0}`),
	}})
	tmp := filepath.Join(bucket, ".0000000000000001-0000000000000001.seg.inprogress")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	final := filepath.Join(bucket, "0000000000000001-0000000000000001.seg")
	if err := os.Rename(tmp, final); err != nil {
		t.Fatal(err)
	}
	published, created, err := probeSegments(root)
	if err != nil {
		t.Fatal(err)
	}
	pub, ok := published["p00001"]
	if !ok || len(published) != 1 {
		t.Fatalf("probes found %v, want p00001 alone", published)
	}
	if c := created["p00001"]; !c.IsZero() && c.After(pub) {
		t.Errorf("segment created %v after its publish %v", c, pub)
	}
	sent := map[string]time.Time{"p00001": pub.Add(-100 * time.Millisecond), "p00002": pub}
	acked := map[string]time.Time{"p00001": pub.Add(-70 * time.Millisecond), "p00002": pub}
	seen := map[string]time.Time{"p00001": pub.Add(40 * time.Millisecond)}
	st := stages(sent, acked, seen, published, created)
	if st.Probes != 1 || st.LogP50 != 30 || st.ToPublishP50 != 70 || st.ToSeenP99 != 40 {
		t.Fatalf("stages %+v, want 1 probe: Log 30 ms, to publish 70 ms, to seen 40 ms", st)
	}
	r := &report{Freshness: []freshnessRun{{SegmentAge: "200ms", Stages: &st}}}
	if md := r.markdown(); !strings.Contains(md, "the Log call 30 / 30 ms, from its answer to the publish of the probe's segment 70 / 70 ms") {
		t.Errorf("report lacks the stages:\n%s", md)
	}
}

// TestFreshnessSettingsOnEngines: the freshness run on the engines takes
// its own max_in_flight and seq_window where set, and the other runs'
// otherwise; -1 is freeway's default window.
func TestFreshnessSettingsOnEngines(t *testing.T) {
	o := options{engInFly: 8, engSeqWin: 131072, freshInFly: 4, freshSeqWin: -1}
	e := o.onEngines()
	if e.inFlight != 8 || e.seqWindow != 131072 {
		t.Fatalf("on the engines: %d in flight, window %d; want 8 and 131072", e.inFlight, e.seqWindow)
	}
	if f := e.forFreshness(); f.inFlight != 4 || f.seqWindow != 0 {
		t.Errorf("freshness: %d in flight, window %d; want 4 and 0 (the default)", f.inFlight, f.seqWindow)
	}
	o.freshInFly, o.freshSeqWin = 0, 0
	if f := o.onEngines().forFreshness(); f.inFlight != 8 || f.seqWindow != 131072 {
		t.Errorf("freshness unset: %d in flight, window %d; want the engines' 8 and 131072", f.inFlight, f.seqWindow)
	}
	o.freshInFly, o.freshSeqWin = 2, 65536
	if f := o.onEngines().forFreshness(); f.inFlight != 2 || f.seqWindow != 65536 {
		t.Errorf("freshness set: %d in flight, window %d; want 2 and 65536", f.inFlight, f.seqWindow)
	}
}

// TestProbeKeysCoverEveryBucket: the probes' keys land one in each bucket
// (the router's hash), so that the lag is measured in every bucket, and
// each is one the probe app's filter and the stages' search take.
func TestProbeKeysCoverEveryBucket(t *testing.T) {
	if !strings.Contains(probeApp, `where: key >= "probe-" and key < "probe."`) {
		t.Fatalf("the probe app's filter is not the one this test checks: %s", probeApp)
	}
	for n := 1; n <= 16; n++ {
		keys := probeKeys(n)
		if len(keys) != n {
			t.Fatalf("%d buckets: %d keys", n, len(keys))
		}
		for b, k := range keys {
			if got := calligraphus.BucketOf(k, n); got != b {
				t.Fatalf("%d buckets: key %q is in bucket %d, listed for %d", n, k, got, b)
			}
			if k < "probe-" || k >= "probe." || !strings.HasPrefix(`"key":"`+k, `"key":"probe-`) {
				t.Fatalf("key %q is not a probe's", k)
			}
		}
	}
}
