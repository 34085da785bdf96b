package freeway

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/config"
)

// FuzzConfig loads an arbitrary configuration file as `freeway` does
// (strict decoding over the defaults, then validation of every section
// and app). Nothing panics. An error is a *config.Error naming the file,
// with a line and a column inside it unless the file is empty. A file
// that loads runs: its apps compile, their extractors and the routes'
// key extractors build and read a line, and its options flatten.
func FuzzConfig(f *testing.F) {
	example, err := os.ReadFile("../../examples/freeway.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	for _, s := range []string{
		"apps:\n  - {name: a, category: c, aggregates: [{fn: count}]}\n",
		"apps:\n  - {name: a, category: web/access, format: logfmt, where: 'x > 1', group_by: [x], aggregates: [{fn: sum, field: x}]}\ncategories:\n  web/access: {buckets: 2, shard_key: [x]}\n",
		"apps:\n  - {name: a, category: c, format: regex, pattern: '(?P<x>\\d+)', group_by: [y], aggregates: [{fn: count}]}\n",
		"apps:\n  - name: a\n    category: c\n    format: tsv\n    fields: [t, k]\n    time: {field: t, layout: unix}\n    aggregates: [{fn: cnt}]\n",
		"apps:\n  - {name: a, category: c, window: 1e300d, aggregates: [{fn: count}]}\n",
		"agent:\n  max_queue_bytes: NaNKiB\n",
		"buckets: 0\n",
		"buckets: 99999999999999999999\n",
		"log: {level: loud}\n",
		"categories:\n  \"\": {buckets: 1}\n",
		"categories:\n  a.b[0]: {buckets: -1}\n",
		"categories:\n  x: {shard_key: [k]}\n",
		"serving: {listen: ''}\n",
		"puma: {max_cells: -1}\n",
		"apps: [{name: a, category: c, aggregates: [{fn: count}]}, {name: a, category: d, aggregates: [{fn: count}]}]\n",
		"apps:\n  - &a {name: a, category: c, aggregates: [{fn: count}]}\n  - *a\n",
		"data_dir: ''\n",
		"unknown_key: 1\n",
		"# comments only\n",
		"[]\n",
		"apps: {name: a}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := DefaultConfig()
		err := config.Decode("fuzz.yaml", data, &cfg, cfg.Validate)
		if err != nil {
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("%q: error %T is not a *config.Error: %v", data, err, err)
			}
			if ce.File != "fuzz.yaml" || !strings.HasPrefix(ce.Error(), "fuzz.yaml") {
				t.Fatalf("%q: error does not name the file: %v", data, err)
			}
			if !strings.HasPrefix(ce.Msg, "the file is empty") && (ce.Line < 1 || ce.Column < 1) {
				t.Fatalf("%q: error without a position: %v", data, err)
			}
			if lines := yamlLines(data); ce.Line > lines {
				t.Fatalf("%q: error at line %d of a file of %d lines: %v", data, ce.Line, lines, err)
			}
			return
		}
		compiled, err := cfg.CompiledApps()
		if err != nil {
			t.Fatalf("%q: valid, but its apps do not compile: %v", data, err)
		}
		line := []byte(`{"k": "v"} k=v`)
		for _, a := range compiled {
			_, _ = a.NewExtractor().Extract(line, 1) // must not panic; any answer goes
		}
		routes, err := cfg.Routes()
		if err != nil {
			t.Fatalf("%q: valid, but its routes are not: %v", data, err)
		}
		for cat, r := range routes {
			if r.Buckets < 1 {
				t.Fatalf("%q: category %q has %d buckets", data, cat, r.Buckets)
			}
			if r.NewKeyFunc != nil {
				_, _ = r.NewKeyFunc()(line) // must not panic; any answer goes
			}
		}
		flatOptions(cfg)
	})
}

// yamlLines counts the lines of data as YAML does: "\r\n", "\r" and "\n"
// each end one.
func yamlLines(data []byte) int {
	s := strings.ReplaceAll(string(data), "\r\n", "\n")
	return strings.Count(s, "\n") + strings.Count(s, "\r") + 1
}
