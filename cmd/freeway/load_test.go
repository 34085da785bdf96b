package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/loadgen"
)

func TestLoadRefusesBadFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--count", "2x"}, `--count: "2x" is not a count`},
		{[]string{"--format", "xml"}, `unknown line format "xml"`},
		{[]string{"--size", "20"}, "line size 20 is too small"},
		{[]string{"--keys", "0"}, "keys must be at least 1"},
		{[]string{"--start", "yesterday"}, `--start: "yesterday" is not a time`},
		{[]string{"--dry-run", "--count", "10"}, "--dry-run writes --count lines to --out"},
		{[]string{"--conns", "0", "--count", "1"}, "connections must be at least 1"},
		{[]string{"--batch", "0", "--count", "1"}, "batch must be at least 1"},
		{[]string{"--category", "", "--count", "1"}, "empty category"},
		{[]string{"--tls-cert", "x.pem", "--count", "1"}, "needs both its certificate and its key"},
		{[]string{"extra"}, "unknown command"},
	} {
		_, err := run(t, append([]string{"load"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("load %v: error %v, want one saying %q", c.args, err, c.want)
		}
	}
	out, err := run(t, "load", "--help")
	for _, want := range []string{"--rate", "--conns", "--batch", "--keys", "--count", "--duration", "--out", "--format", "--seed", "(default 176)"} {
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("load --help lacks %q (%v)", want, err)
		}
	}
}

func TestLoadDryRunWritesTheSeededLines(t *testing.T) {
	file := filepath.Join(t.TempDir(), "lines.json")
	out, err := run(t, "load", "--count", "1k", "--start", "1764583200", "--step", "1s", "--dry-run", "--out", file)
	if err != nil {
		t.Fatal(err)
	}
	// It says what it wrote, rather than nothing.
	if want := fmt.Sprintf("wrote 1000 lines (177000 bytes) to %s", file); !strings.Contains(out, want) {
		t.Errorf("load --dry-run printed %q, want %q", out, want)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 1000 {
		t.Fatalf("%d lines, want 1000", len(lines))
	}
	for i, l := range lines {
		var r struct {
			Ts    int64  `json:"ts"`
			Key   string `json:"key"`
			Value *int   `json:"value"`
		}
		if len(l) != 176 || json.Unmarshal([]byte(l), &r) != nil || r.Ts != 1764583200000+int64(i)*1000 || r.Key == "" || r.Value == nil {
			t.Fatalf("line %d (%d bytes): %s", i, len(l), l)
		}
	}
	// The same flags make the same bytes.
	again := filepath.Join(t.TempDir(), "again.json")
	if out, err := run(t, "load", "--count", "1000", "--start", "1764583200", "--step", "1s", "--dry-run", "--out", again); err != nil {
		t.Fatalf("load --dry-run: %v\n%s", err, out)
	}
	if b2, _ := os.ReadFile(again); string(b2) != string(b) {
		t.Fatal("the same seed and flags made different lines")
	}
}

// TestLoadCountsWhatFreewayAggregates points freeway load at the agent
// of a running freeway all: every line it reports acknowledged (and
// wrote to --out) is counted and summed by Puma.
func TestLoadCountsWhatFreewayAggregates(t *testing.T) {
	freewayBinary(t)
	dir := t.TempDir()
	ports := freePorts(t, 3)
	cfg := filepath.Join(dir, "freeway.yaml")
	agent, api := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[2])
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`data_dir: %s
agent: {listen: "%s", upstream: ["127.0.0.1:%d"]}
calligraphus: {listen: "127.0.0.1:%d"}
serving: {listen: "%s", thrift_listen: ""}
apps:
  - name: load
    category: load
    format: json
    time: {field: ts, layout: unix_ms}
    group_by: [key]
    aggregates: [{name: n, fn: count}, {name: total, fn: sum, field: value}]
`, filepath.Join(dir, "data"), agent, ports[1], ports[1], api)), 0o644); err != nil {
		t.Fatal(err)
	}
	startProc(t, cfg, api, 0)

	out := filepath.Join(dir, "sent.json")
	stdout, err := run(t, "load", "--addr", agent, "--count", "5000", "--conns", "3", "--batch", "70", "--keys", "50",
		"--start", "now", "--step", "1ms", "--out", out, "--json")
	if err != nil {
		t.Fatalf("%v: %s", err, stdout)
	}
	var sum loadgen.Summary
	if err := json.Unmarshal([]byte(stdout), &sum); err != nil {
		t.Fatalf("summary %q: %v", stdout, err)
	}
	if sum.Entries != 5000 || sum.Bytes != 5000*176 || sum.Calls < 72 || sum.Unknown != 0 || sum.PerSec <= 0 || sum.LatencyMs.Max <= 0 {
		t.Fatalf("summary %+v", sum)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var n, total int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r struct{ Value int64 }
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		n++
		total += r.Value
	}
	if n != 5000 {
		t.Fatalf("--out holds %d lines, want 5000", n)
	}
	q := fmt.Sprintf("http://%s/api/v1/query?app=load&group_by=&window=all&from=%d&to=%d", api, time.Now().Add(-time.Hour).Unix(), time.Now().Add(time.Hour).Unix())
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		if resp, err := http.Get(q); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = string(b)
			var a struct {
				Rows []struct{ Values map[string]float64 }
			}
			if json.Unmarshal(b, &a) == nil && len(a.Rows) == 1 && a.Rows[0].Values["n"] == float64(n) {
				if a.Rows[0].Values["total"] != float64(total) {
					t.Fatalf("sum %v, want %d", a.Rows[0].Values["total"], total)
				}
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("Puma never counted the 5000 lines: %s", last)
}
