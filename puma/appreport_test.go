package puma

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/ptail"
)

// TestMergeAppReports: the reports of several nodes merge as one node
// holding all their shards would report: counts add, the app is
// backfilling if it is on any node, the lowest eviction horizon, bytes
// per cell of the sums, and the newest SamplesPerReason samples of each
// reason, reasons in Rejections' order.
func TestMergeAppReports(t *testing.T) {
	at := func(s int) time.Time { return time.UnixMilli(t0 + int64(s)*1000).UTC() }
	var lateA, lateB []Rejected
	for i := range 4 {
		lateA = append(lateA, Rejected{Reason: "late", Line: fmt.Sprint("a", i), At: at(10 - 2*i)})
		lateB = append(lateB, Rejected{Reason: "late", Line: fmt.Sprint("b", i), At: at(9 - 2*i)})
	}
	a := []AppReport{{App: "x", State: AppState{State: "live"}, Memory: AppMemory{Cells: 10, Bytes: 1000, EvictedWindows: 1, EvictedCells: 5, EvictedBeforeMs: 2000},
		Rejections: Rejections{Dropped: map[string]uint64{"late": 4, "parse_error": 1}, Samples: append(lateA, Rejected{Reason: "parse_error", Line: "p", At: at(1)})}}}
	b := []AppReport{
		{App: "x", State: AppState{State: "backfilling", BackfillShards: 1, SegmentsRead: 3, SegmentsLeft: 7}, Memory: AppMemory{Cells: 30, Bytes: 2000, EvictedBeforeMs: 1000},
			Rejections: Rejections{Dropped: map[string]uint64{"late": 4}, Samples: lateB}},
		{App: "y", State: AppState{State: "live"}},
	}
	got := MergeAppReports([][]AppReport{a, b})
	x := got["x"]
	wantSamples := []Rejected{
		{Reason: "late", Line: "a0", At: at(10)}, {Reason: "late", Line: "b0", At: at(9)}, {Reason: "late", Line: "a1", At: at(8)},
		{Reason: "late", Line: "b1", At: at(7)}, {Reason: "late", Line: "a2", At: at(6)}, {Reason: "parse_error", Line: "p", At: at(1)},
	}
	want := AppReport{App: "x", State: AppState{State: "backfilling", BackfillShards: 1, SegmentsRead: 3, SegmentsLeft: 7},
		Memory:     AppMemory{Cells: 40, Bytes: 3000, BytesPerCell: 75, EvictedWindows: 1, EvictedCells: 5, EvictedBeforeMs: 1000},
		Rejections: Rejections{Dropped: map[string]uint64{"late": 8, "parse_error": 1}, Samples: wantSamples}}
	if !reflect.DeepEqual(x, want) {
		t.Fatalf("merged\n%+v\nwant\n%+v", x, want)
	}
	if y := got["y"]; y.State.State != "live" || len(got) != 2 {
		t.Fatalf("merged %+v", got)
	}
}

// TestAppsHandler: a node answers GET AppsPath with its reports, which
// decode to what AppReports says, and its shards' read stalls; other
// methods are refused.
func TestAppsHandler(t *testing.T) {
	e := newEnv(t, orders(t))
	p := e.node("n1")
	s := testShard(t, p, 0)
	adopt(p, s)
	feed(s, 10, order(t0, "eu", "book", 1), []byte("not json"))
	since := time.UnixMilli(t0).UTC()
	s.readStall.fail(since, "live", ptail.Position{Segment: "orders/0/x.seg", Offset: 5}, fmt.Errorf("read: %w", dfs.ErrChecksum))
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + AppsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got NodeAppReports
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%d %v", resp.StatusCode, err)
	}
	want := p.AppReports()
	if got.Node != "n1" || len(got.Apps) != 1 || got.Apps[0].Memory.Cells != 1 || got.Apps[0].Rejections.Dropped["parse_error"] != 1 ||
		!reflect.DeepEqual(got.Apps[0].Memory, want[0].Memory) || len(got.Apps[0].Rejections.Samples) != 1 {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	wantStalls := []ShardReadStall{{Category: "orders", Bucket: 0, ReadStall: ReadStall{Reader: "live", Since: since, Failures: 1, Segment: "orders/0/x.seg", Offset: 5, Kind: "checksum", Error: "read: checksum error"}}}
	if !reflect.DeepEqual(got.ReadStalls, wantStalls) {
		t.Fatalf("read stalls %+v, want %+v", got.ReadStalls, wantStalls)
	}
	post, err := http.Post(srv.URL+AppsPath, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	post.Body.Close()
	if post.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", post.StatusCode)
	}
}
