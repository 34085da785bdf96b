package puma

import (
	"fmt"
	"hash/maphash"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/config"

	"github.com/freeway-dev/freeway/internal/apps"
)

// at is the time of a block that arrived at arrivalMs and is read now.
func at(arrivalMs int64) blockTime { return newBlockTime(arrivalMs, time.Now().UnixMilli()) }

// dump lists a table's cells as "window(s from t0) key values".
func dump(tb *table) []string {
	var out []string
	tb.spans[0].each(math.MinInt64, math.MaxInt64, func(w int64, key string, c cell) {
		vals := map[string]string{}
		for k, v := range tb.layout.results(c) {
			if v == nil {
				vals[k] = "null"
			} else {
				vals[k] = fmt.Sprint(v)
			}
		}
		out = append(out, fmt.Sprintf("%+ds %s %s", (w-t0)/1000, strings.ReplaceAll(key, "\x00", "|"), formatMap(vals)))
	})
	sort.Strings(out)
	return out
}

func TestEventTimeWindows(t *testing.T) {
	tb, err := newTable(orders(t), tableDeps{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range [][]byte{
		order(t0, "eu", "book", 10),
		order(t0+59_999, "eu", "book", 20),
		order(t0+60_000, "eu", "book", 5),
		order(t0+30_000, "us", "book", "7.5"),
		order(t0+30_000, "us", "pen", nil), // no amount: counted only
		order(t0-1, "eu", "book", 1),       // the window before t0
	} {
		tb.apply(l, at(arrival))
	}
	equalRows(t, "cells", dump(tb), []string{
		"+0s eu|book {hi=20 lo=10 mean=15 n=2 total=30}",
		"+0s us|book {hi=7.5 lo=7.5 mean=7.5 n=1 total=7.5}",
		"+0s us|pen {hi=null lo=null mean=null n=1 total=0}",
		"+60s eu|book {hi=5 lo=5 mean=5 n=1 total=5}",
		"-60s eu|book {hi=1 lo=1 mean=1 n=1 total=1}",
	})
	if tb.watermark != t0+60_000 {
		t.Fatalf("watermark %d, want %d", tb.watermark-t0, 60_000)
	}
}

func TestArrivalTimeWithoutTimeField(t *testing.T) {
	tb, err := newTable(orders(t, func(s *apps.Spec) { s.Time = nil }), tableDeps{})
	if err != nil {
		t.Fatal(err)
	}
	tb.apply(order(0, "eu", "book", 1), at(t0+61_000))
	equalRows(t, "cells", dump(tb), []string{"+60s eu|book {hi=1 lo=1 mean=1 n=1 total=1}"})
}

func TestLateness(t *testing.T) {
	tb, err := newTable(orders(t), tableDeps{}) // lateness 5m
	if err != nil {
		t.Fatal(err)
	}
	wm := t0 + 10*60_000
	tb.apply(order(wm, "eu", "book", 1), at(arrival))
	tb.apply(order(wm-5*60_000, "eu", "book", 2), at(arrival))   // exactly at the limit: counted
	tb.apply(order(wm-5*60_000-1, "eu", "book", 4), at(arrival)) // beyond: late
	tb.apply(order(t0-3600_000, "eu", "book", 8), at(arrival))   // far beyond: late
	if tb.drops[reasonLate] != 2 {
		t.Fatalf("late = %d, want 2", tb.drops[reasonLate])
	}
	equalRows(t, "cells", dump(tb), []string{
		"+300s eu|book {hi=2 lo=2 mean=2 n=1 total=2}",
		"+600s eu|book {hi=1 lo=1 mean=1 n=1 total=1}",
	})
	// A later record moves the watermark; an earlier one does not.
	tb.apply(order(wm-60_000, "eu", "book", 1), at(arrival))
	if tb.watermark != wm {
		t.Fatalf("watermark moved back to %d", tb.watermark-t0)
	}
}

func TestDropReasons(t *testing.T) {
	tb, err := newTable(orders(t, func(s *apps.Spec) { s.Where = `kind != "refund"` }), tableDeps{})
	if err != nil {
		t.Fatal(err)
	}
	tb.apply([]byte(`not json`), at(arrival))
	tb.apply([]byte(`{"region": "eu", "kind": "x"}`), at(arrival)) // no time
	tb.apply([]byte(`{"ts": "soon", "kind": "x"}`), at(arrival))   // bad time
	tb.apply(order(t0, "eu", "refund", 1), at(arrival))            // filtered
	tb.apply(order(t0, "eu", "book", "lots"), at(arrival))         // counted, amount bad ×4 aggregates
	if d := tb.drops; d[reasonParse] != 1 || d[reasonBadTime] != 2 || d[reasonFiltered] != 1 || d[reasonBadValue] != 4 || d[reasonLate] != 0 {
		t.Fatalf("drops %v (%v)", d, reasonNames)
	}
	equalRows(t, "cells", dump(tb), []string{"+0s eu|book {hi=null lo=null mean=null n=1 total=0}"})
}

func TestRetentionInMemory(t *testing.T) {
	tb, err := newTable(orders(t), tableDeps{}) // window 1m, retention 1h
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []int64{0, 59, 60} {
		tb.apply(order(t0+m*60_000, "eu", "book", 1), at(arrival))
	}
	tb.apply(order(t0+120*60_000-1, "eu", "book", 1), at(arrival)) // watermark: t0+2h-1ms
	if gone := tb.expire(0); len(gone) != 1 || gone[0] != t0 {
		t.Fatalf("expired %v, want [t0] (horizon t0+1h-1ms)", gone)
	}
	tb.apply(order(t0+120*60_000, "eu", "book", 1), at(arrival)) // horizon t0+1h: the window ending there goes
	gone := tb.expire(0)
	if len(gone) != 1 || gone[0] != t0+59*60_000 {
		t.Fatalf("expired %v, want [t0+59m]", gone)
	}
	equalRows(t, "cells", dump(tb), []string{
		"+3600s eu|book {hi=1 lo=1 mean=1 n=1 total=1}",
		"+7140s eu|book {hi=1 lo=1 mean=1 n=1 total=1}",
		"+7200s eu|book {hi=1 lo=1 mean=1 n=1 total=1}",
	})
	if len(tb.expire(0)) != 0 {
		t.Fatal("expired twice")
	}
}

func TestFingerprint(t *testing.T) {
	fp := func(a *apps.App) string { return fingerprint(a, a.WindowMs) }
	base := fp(orders(t))
	// The fingerprint the code before variable states gave this app: its
	// stored cells are still read.
	if base != "5c62cd7f" {
		t.Fatalf("fingerprint %s, was 5c62cd7f", base)
	}
	if fp(orders(t)) != base {
		t.Fatal("fingerprint is not stable")
	}
	same := []func(*apps.Spec){
		func(s *apps.Spec) { s.Where = "amount > 1" },
		func(s *apps.Spec) { s.Retention *= 2 },
		func(s *apps.Spec) { s.AllowedLateness *= 2 },
	}
	for i, m := range same {
		if fp(orders(t, m)) != base {
			t.Errorf("change %d altered the shape", i)
		}
	}
	changed := []func(*apps.Spec){
		func(s *apps.Spec) { s.Window *= 2 },
		func(s *apps.Spec) { s.GroupBy = []string{"kind", "region"} },
		func(s *apps.Spec) { s.Aggregates[1].Fn = "max" },
		func(s *apps.Spec) { s.Aggregates[1].Field = "ts" },
		func(s *apps.Spec) { s.Aggregates = s.Aggregates[:4] },
	}
	for i, m := range changed {
		if fp(orders(t, m)) == base {
			t.Errorf("change %d kept the shape", i)
		}
	}
}

func TestDirtyCells(t *testing.T) {
	// Retention shorter than lateness (refused by validation, set here
	// past it): an expired window can come back, and the cells taken of
	// it before must not be marked changed in the one that came back.
	app := orders(t, func(s *apps.Spec) {
		s.Retention = config.Duration(time.Minute)
		s.AllowedLateness = config.Duration(time.Minute)
		s.MaxFuture = config.Duration(30 * time.Second)
	})
	app.LatenessMs = time.Hour.Milliseconds()
	tb, err := newTable(app, tableDeps{})
	if err != nil {
		t.Fatal(err)
	}
	taken := func() []string {
		var out []string
		tb.takeDirty(0, func(k cellKey, c cell) int64 {
			out = append(out, fmt.Sprintf("%+ds %s n=%v", (k.window-t0)/1000, strings.ReplaceAll(k.key, "\x00", "|"), c.f[0]))
			return 0
		})
		sort.Strings(out)
		return out
	}
	tb.apply(order(t0, "eu", "book", 1), at(arrival))
	tb.apply(order(t0, "eu", "book", 1), at(arrival))
	tb.apply(order(t0+60_000, "eu", "book", 1), at(arrival))
	tb.apply(order(t0, "us", "book", 1), at(arrival))
	if n := tb.spans[0].changed(); n != 3 {
		t.Fatalf("%d cells changed: a cell changed twice is counted once", n)
	}
	var marks takenMarks
	first := func() []string {
		var out []string
		marks = tb.takeDirty(0, func(k cellKey, c cell) int64 {
			out = append(out, fmt.Sprintf("%+ds %s n=%v", (k.window-t0)/1000, strings.ReplaceAll(k.key, "\x00", "|"), c.f[0]))
			return 0
		})
		if !slices.IsSorted(out) {
			t.Errorf("taken out of row order: %q", out)
		}
		return out
	}
	equalRows(t, "first", first(), []string{"+0s eu|book n=2", "+0s us|book n=1", "+60s eu|book n=1"})
	equalRows(t, "nothing changed", taken(), nil)
	tb.remark(0, marks)
	tb.remark(0, marks)
	if n := tb.spans[0].changed(); n != 3 {
		t.Fatalf("%d cells changed after remarking twice, want 3", n)
	}
	tb.apply(order(t0, "eu", "book", 1), at(arrival)) // changed again while remarked: once
	equalRows(t, "remarked", first(), []string{"+0s eu|book n=3", "+0s us|book n=1", "+60s eu|book n=1"})
	tb.apply(order(t0, "us", "book", 1), at(arrival))
	equalRows(t, "one changed", first(), []string{"+0s us|book n=2"})
	tb.remark(0, marks)
	equalRows(t, "remarked one", taken(), []string{"+0s us|book n=2"})

	// Expire the window at t0, dirty; then bring it back.
	tb.apply(order(t0, "eu", "book", 1), at(arrival))
	tb.apply(order(t0+60_000, "us", "book", 1), at(arrival))
	equalRows(t, "before expiry", first(), []string{"+0s eu|book n=4", "+60s us|book n=1"})
	old := marks
	tb.apply(order(t0, "eu", "book", 1), at(arrival))
	tb.apply(order(t0+150_000, "eu", "book", 1), at(arrival)) // horizon t0+90s
	if gone := tb.expire(0); len(gone) != 1 || gone[0] != t0 {
		t.Fatalf("expired %v", gone)
	}
	if tb.ncells != 3 {
		t.Fatalf("%d cells", tb.ncells)
	}
	tb.apply(order(t0, "eu", "book", 1), at(arrival)) // late, allowed: a new cell
	if tb.ncells != 4 {
		t.Fatalf("%d cells", tb.ncells)
	}
	equalRows(t, "after expiry", first(), []string{"+0s eu|book n=1", "+120s eu|book n=1"})
	tb.remark(0, old) // the old t0 window is gone: its eu|book not listed, nor its successor
	equalRows(t, "remark after expiry", taken(), []string{"+60s us|book n=1"})
}

// TestSortByKeyIsByteOrder: the sort of a window's cells for a checkpoint
// (by the first 8 bytes of each key as an integer, then the keys) gives
// the keys' byte order, on keys that share prefixes, hold zero bytes and
// end within and beyond 8 bytes; sorted whole, and in two halves sorted
// at once and merged (parallelSortMin lowered: the sort of a large
// checkpoint).
func TestSortByKeyIsByteOrder(t *testing.T) {
	defer func(n int) { parallelSortMin = n }(parallelSortMin)
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte{0, 1, 'a', 'b', 0xff}
	var ranks []keyRank
	for round := range 400 {
		parallelSortMin = []int{1 << 30, 2}[round%2]
		wc := &windowCells{index: keyIndex{seed: maphash.MakeSeed()}}
		var idx []int32
		for range 1 + rng.IntN(300) {
			b := make([]byte, rng.IntN(12))
			for i := range b {
				b[i] = alphabet[rng.IntN(len(alphabet))]
			}
			key := string(b)
			if _, ok := wc.find(key); ok {
				continue
			}
			idx = append(idx, wc.add(hashKey(wc.index.seed, key), key, &layout{}))
		}
		rng.Shuffle(len(idx), func(i, j int) { idx[i], idx[j] = idx[j], idx[i] })
		ranks = wc.sortByKey(idx, ranks)
		got := make([]string, len(idx))
		for i, j := range idx {
			got[i] = wc.key(j)
		}
		// IsSortedFunc fails where cmp(next, previous) < 0: an equal
		// pair (a cell given twice) counts as out of order.
		strictly := func(next, previous string) int {
			if next > previous {
				return 1
			}
			return -1
		}
		if !slices.IsSortedFunc(got, strictly) || len(got) != wc.len() {
			t.Fatalf("round %d: %q is not in byte order", round, got)
		}
	}
}

// TestKeyIndexAgreesWithMap: a window's key index (hashKey, lookup,
// add, grow) finds every key added, at the index a map of the same keys
// gives, and no key that was not added, over keys that share prefixes,
// hold zero bytes, are empty or long; and a key read as a view of the
// window's key bytes stays the same while the window grows.
func TestKeyIndexAgreesWithMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	alphabet := []byte{0, 1, 'a', 'b', 0xff}
	randKey := func() string {
		b := make([]byte, rng.IntN(20))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		if rng.IntN(50) == 0 {
			b = append(b, strings.Repeat("long", 100)...)
		}
		return string(b)
	}
	for round := range 20 {
		wc := &windowCells{index: keyIndex{seed: maphash.MakeSeed()}, stride: 1}
		l := &layout{}
		want := map[string]int32{}
		var views []string
		for range 1 + rng.IntN(20_000) {
			key := randKey()
			i, ok := wc.find(key)
			if j, had := want[key]; ok != had || i != j {
				t.Fatalf("round %d: find(%q) = %d, %v; want %d, %v", round, key, i, ok, j, had)
			}
			if !ok {
				want[key] = wc.add(hashKey(wc.index.seed, key), key, l)
				views = append(views, wc.key(want[key]))
			}
		}
		if wc.len() != len(want) || len(wc.slots) != len(want) {
			t.Fatalf("round %d: %d cells, %d slots, %d keys", round, wc.len(), len(wc.slots), len(want))
		}
		if 4*wc.len() > 3*len(wc.index.slots) {
			t.Fatalf("round %d: %d cells in an index of %d", round, wc.len(), len(wc.index.slots))
		}
		for key, j := range want {
			if i, ok := wc.find(key); !ok || i != j || wc.key(j) != key || views[j] != key {
				t.Fatalf("round %d: find(%q) = %d, %v; key(%d) %q, view %q", round, key, i, ok, j, wc.key(j), views[j])
			}
		}
	}
}

// TestKeyIndexComparesKeysOnEqualHashes: keys whose hashes are all the
// same (their high halves agree, so every probe compares keys) are each
// found at their own index, and a key not added is not.
func TestKeyIndexComparesKeysOnEqualHashes(t *testing.T) {
	wc := &windowCells{index: keyIndex{slots: make([]uint64, 64)}}
	const h = 0xdeadbeef_00000005
	keys := []string{"", "a", "a\x00", "ab", "b", "ba", "\xff", strings.Repeat("x", 40)}
	for i, key := range keys {
		wc.keyBytes = append(wc.keyBytes, key...)
		wc.ends = append(wc.ends, len(wc.keyBytes))
		wc.insert(h, int32(i))
	}
	for i, key := range keys {
		if j, ok := wc.lookup(h, key); !ok || j != int32(i) {
			t.Fatalf("lookup(%q) = %d, %v; want %d", key, j, ok, i)
		}
	}
	for _, key := range []string{"c", "a\x00\x00", "abc", strings.Repeat("x", 41)} {
		if j, ok := wc.lookup(h, key); ok {
			t.Fatalf("lookup(%q) = %d, found", key, j)
		}
	}
}

// TestCellsAgreeWithNaiveWindows: lines at random times about window
// edges, on random keys (some new to their window, most not), land in
// the cells a window start computed for each line names (span.atTime
// passes the division by for a time in the current window; the key
// index finds the cell), for an app of one window length (place) and of
// two (applyExtracted, the key hashed once for both spans).
func TestCellsAgreeWithNaiveWindows(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, windows := range [][]config.Duration{nil, {config.Duration(time.Minute), config.Duration(10 * time.Minute)}} {
		app := orders(t, func(s *apps.Spec) {
			s.AllowedLateness = config.Duration(24 * time.Hour)
			s.Retention = config.Duration(24 * time.Hour)
			if windows != nil {
				s.Window, s.Windows = 0, windows
			}
		})
		tb, err := newTable(app, tableDeps{})
		if err != nil {
			t.Fatal(err)
		}
		want := make([]map[cellKey]float64, len(tb.spans))
		for i := range want {
			want[i] = map[cellKey]float64{}
		}
		ts := t0
		for range 20_000 {
			switch rng.IntN(4) {
			case 0: // about an edge of a minute
				ts = apps.WindowStart(ts, 60_000) + int64(rng.IntN(3)-1)
			case 1: // anywhere in two hours, within the allowed lateness
				ts = t0 + rng.Int64N(2*3600_000)
			default:
				ts += int64(rng.IntN(50))
			}
			region, kind := fmt.Sprint("r", rng.IntN(30)), fmt.Sprint("k", rng.IntN(3))
			tb.apply(order(ts, region, kind, 1), at(arrival))
			for i, sp := range tb.spans {
				want[i][cellKey{window: apps.WindowStart(ts, sp.ms), key: apps.EncodeKey([]string{region, kind})}]++
			}
		}
		if tb.drops != [nReasons]uint64{} {
			t.Fatalf("drops %v", tb.drops)
		}
		for i, sp := range tb.spans {
			got := map[cellKey]float64{}
			sp.each(math.MinInt64, math.MaxInt64, func(w int64, key string, c cell) {
				got[cellKey{window: w, key: key}] = tb.layout.results(c)["n"].(float64)
			})
			if !maps.Equal(got, want[i]) {
				t.Fatalf("windows %v, span %d: %d cells, want %d", windows, i, len(got), len(want[i]))
			}
		}
	}
}
