package freeway

import (
	"slices"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/config"
)

// appsYAML is an app of the sketch aggregates in two windows, as a user
// writes it; line 11 is the topk, line 12 the percentile.
const appsYAML = `apps:
  - name: pages
    category: web
    format: json
    windows: [1m, 1h]
    group_by: [page]
    aggregates:
      - {name: hits, fn: count}
      - {name: users, fn: count_distinct, field: user}
      - {name: first_seen, fn: first, field: ts}
      - {name: top_paths, fn: topk, field: path, k: 10}
      - {name: latency, fn: percentile, field: ms, quantiles: [0.5, 0.9, 0.99]}
`

// TestSketchAppsInYAML: the aggregates' parameters and the windows list
// decode; a bad parameter or window is reported at its own line and
// column.
func TestSketchAppsInYAML(t *testing.T) {
	cfg := DefaultConfig()
	if err := config.Decode("c.yaml", []byte(appsYAML), &cfg, cfg.Validate); err != nil {
		t.Fatal(err)
	}
	as, err := cfg.CompiledApps()
	if err != nil {
		t.Fatal(err)
	}
	a := as[0]
	if !slices.Equal(a.WindowsMs, []int64{60_000, 3600_000}) || a.Aggs[3].Params.K != 10 || !slices.Equal(a.Aggs[4].Params.Quantiles, []float64{0.5, 0.9, 0.99}) {
		t.Fatalf("windows %v, k %d, quantiles %v", a.WindowsMs, a.Aggs[3].Params.K, a.Aggs[4].Params.Quantiles)
	}
	for _, tc := range []struct {
		old, new  string
		line, col int
		msg       string
	}{
		{"k: 10}", "k: 500}", 11, 53, "k must be between 1 and 100"},
		{"[0.5, 0.9, 0.99]", "[0.5, 1.9]", 12, 63, "quantile 1.9 is not between 0 and 1"},
		{"fn: count_distinct, field: user}", "fn: count_distinct, field: user, k: 3}", 9, 59, "k is only for topk"},
		{"windows: [1m, 1h]", "windows: [1m, 1500ms]", 5, 19, "must be a whole number of seconds"},
		{"windows: [1m, 1h]", "windows: [1m, 1m]", 5, 19, "appears twice"},
		{"fn: first, field: ts}", "fn: median, field: ts}", 10, 32, "unknown function"},
	} {
		src := strings.Replace(appsYAML, tc.old, tc.new, 1)
		cfg := DefaultConfig()
		err := config.Decode("c.yaml", []byte(src), &cfg, cfg.Validate)
		var ce *config.Error
		if !asConfigError(err, &ce) || ce.Line != tc.line || ce.Column != tc.col || !strings.Contains(ce.Msg, tc.msg) {
			t.Errorf("%s: %v, want line %d column %d: %s", tc.new, err, tc.line, tc.col, tc.msg)
		}
	}
}

// TestMemoryBoundsInYAML: an app's max_cells and puma.memory_limit decode
// (a byte size), and a bad value is reported at its own line and column.
func TestMemoryBoundsInYAML(t *testing.T) {
	src := "puma:\n  memory_limit: 512MiB\n" + strings.Replace(appsYAML, "    format: json\n", "    format: json\n    max_cells: 5000\n", 1)
	cfg := DefaultConfig()
	if err := config.Decode("c.yaml", []byte(src), &cfg, cfg.Validate); err != nil {
		t.Fatal(err)
	}
	as, err := cfg.CompiledApps()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Puma.MemoryLimit != 512<<20 || as[0].Spec.MaxCells != 5000 {
		t.Fatalf("memory_limit %d, max_cells %d", cfg.Puma.MemoryLimit, as[0].Spec.MaxCells)
	}
	if DefaultConfig().Puma.MemoryLimit != 0 {
		t.Fatal("memory_limit has a default: the README says none")
	}
	for _, tc := range []struct {
		old, new  string
		line, col int
		msg       string
	}{
		{"max_cells: 5000", "max_cells: -1", 7, 16, "must not be negative"},
		{"memory_limit: 512MiB", "memory_limit: lots", 2, 17, "invalid size"},
	} {
		bad := strings.Replace(src, tc.old, tc.new, 1)
		cfg := DefaultConfig()
		err := config.Decode("c.yaml", []byte(bad), &cfg, cfg.Validate)
		var ce *config.Error
		if !asConfigError(err, &ce) || ce.Line != tc.line || ce.Column != tc.col || !strings.Contains(ce.Msg, tc.msg) {
			t.Errorf("%s: %v, want line %d column %d: %s", tc.new, err, tc.line, tc.col, tc.msg)
		}
	}
}
