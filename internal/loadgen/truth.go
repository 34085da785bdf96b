package loadgen

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Window is the aggregation window of the ground truth: one minute.
const Window = 60_000 // ms

// Cell names one (key, window) of an aggregation.
type Cell struct {
	Key         string // the key's name (KeyName)
	WindowStart int64  // Unix ms, a multiple of Window
}

// Agg is the count and sum of value of a cell.
type Agg struct {
	Count int64 `json:"count"`
	Sum   int64 `json:"sum"`
}

// Truth is the count and sum of value per key per minute of a set of
// lines: what every system of the bench must answer. Not safe for
// concurrent use.
type Truth struct {
	keys  int
	cells map[truthKey]*Agg
	total Agg
}

type truthKey struct {
	key    int
	window int64
}

// NewTruth returns an empty truth for lines over keys keys.
func NewTruth(keys int) *Truth {
	return &Truth{keys: keys, cells: map[truthKey]*Agg{}}
}

// Add counts one line.
func (t *Truth) Add(r Record) {
	k := truthKey{r.Key, r.TsMs - ((r.TsMs%Window)+Window)%Window}
	a := t.cells[k]
	if a == nil {
		a = &Agg{}
		t.cells[k] = a
	}
	a.Count++
	a.Sum += r.Value
	t.total.Count++
	t.total.Sum += r.Value
}

// Total is the count and sum over every cell.
func (t *Truth) Total() Agg { return t.total }

// Len is the number of cells.
func (t *Truth) Len() int { return len(t.cells) }

// Cells returns the cells by their names.
func (t *Truth) Cells() map[Cell]Agg {
	out := make(map[Cell]Agg, len(t.cells))
	for k, a := range t.cells {
		out[Cell{KeyName(k.key, t.keys), k.window}] = *a
	}
	return out
}

// Compare checks got against want cell by cell: ok when they hold the
// same cells with the same count and sum. detail says how they differ
// (the first few cells that do), or sums them up when they agree.
func Compare(want, got map[Cell]Agg) (ok bool, detail string) {
	var wantTotal, gotTotal Agg
	var diffs []string
	missing, extra, wrong := 0, 0, 0
	for c, w := range want {
		wantTotal.Count += w.Count
		wantTotal.Sum += w.Sum
		g, found := got[c]
		switch {
		case !found:
			missing++
			if len(diffs) < 5 {
				diffs = append(diffs, fmt.Sprintf("%s@%d missing (want count %d sum %d)", c.Key, c.WindowStart, w.Count, w.Sum))
			}
		case g != w:
			wrong++
			if len(diffs) < 5 {
				diffs = append(diffs, fmt.Sprintf("%s@%d: count %d sum %d, want %d and %d", c.Key, c.WindowStart, g.Count, g.Sum, w.Count, w.Sum))
			}
		}
	}
	for c, g := range got {
		gotTotal.Count += g.Count
		gotTotal.Sum += g.Sum
		if _, found := want[c]; !found {
			extra++
			if len(diffs) < 5 {
				diffs = append(diffs, fmt.Sprintf("%s@%d not expected (count %d sum %d)", c.Key, c.WindowStart, g.Count, g.Sum))
			}
		}
	}
	if missing == 0 && extra == 0 && wrong == 0 {
		return true, fmt.Sprintf("exact: %d cells, count %d, sum %d", len(want), wantTotal.Count, wantTotal.Sum)
	}
	slices.Sort(diffs)
	return false, fmt.Sprintf("NOT exact: %d cells (want %d): %d missing, %d unexpected, %d wrong; count %d (want %d), sum %d (want %d); e.g. %s",
		len(got), len(want), missing, extra, wrong, gotTotal.Count, wantTotal.Count, gotTotal.Sum, wantTotal.Sum, strings.Join(diffs, "; "))
}

// ReadCells reads CSV lines key,window_start_ms,count,sum (what the
// bench's peers write); a header line starting with "key" is skipped. A
// cell named twice is an error: each system must merge its own.
func ReadCells(path string) (map[Cell]Agg, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read only
	out := map[Cell]Agg{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || (n == 1 && strings.HasPrefix(line, "key")) {
			continue
		}
		parts := strings.Split(line, ",")
		if len(parts) != 4 {
			return nil, fmt.Errorf("read cells %s:%d: want key,window_start_ms,count,sum, got %q", path, n, line)
		}
		var nums [3]int64
		for i, p := range parts[1:] {
			// DuckDB may write a sum as 123.0.
			v, err := strconv.ParseFloat(p, 64)
			if err != nil {
				return nil, fmt.Errorf("read cells %s:%d: %w", path, n, err)
			}
			nums[i] = int64(v)
		}
		c := Cell{parts[0], nums[0]}
		if _, dup := out[c]; dup {
			return nil, fmt.Errorf("read cells %s:%d: cell %s@%d twice", path, n, c.Key, c.WindowStart)
		}
		out[c] = Agg{nums[1], nums[2]}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read cells %s: %w", path, err)
	}
	return out, nil
}
