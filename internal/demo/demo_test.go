package demo

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestLinesAndRewrite(t *testing.T) {
	lines, err := Lines()
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 10000 {
		t.Fatalf("%d lines, want 10000", len(lines))
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	bad := 0
	for _, l := range lines {
		raw, js, ok := Rewrite(l, at)
		if !ok {
			bad++
			continue
		}
		if !strings.Contains(string(raw), "[02/Jan/2026:03:04:05 +0000]") {
			t.Fatalf("timestamp not replaced: %s", raw)
		}
		var rec map[string]any
		if err := json.Unmarshal(js, &rec); err != nil || rec["ts"].(float64) != float64(at.Unix()) {
			t.Fatalf("json %s: %v", js, err)
		}
	}
	if bad > 100 {
		t.Fatalf("%d lines do not parse", bad)
	}
}
