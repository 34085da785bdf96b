package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/diskqueue"
)

// TestCheckQueueHolds: B2's check reads the agent's (compressed) queue
// back and passes only if it holds exactly the lines sent, each once: a
// line missing, changed or held twice fails it.
func TestCheckQueueHolds(t *testing.T) {
	var lines []string
	for i := range 3000 {
		lines = append(lines, fmt.Sprintf(`{"ts":%d,"key":"k%03d","value":%d,"pad":"%s"}`, 1_700_000_000+i, i%100, i, strings.Repeat("p", 100)))
	}
	linesPath := filepath.Join(t.TempDir(), "lines.json")
	if err := os.WriteFile(linesPath, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		edit func([]string) []string
		ok   bool
	}{
		{"every line once, out of order", func(ls []string) []string { return append(ls[1000:], ls[:1000]...) }, true},
		{"a line missing", func(ls []string) []string { return ls[1:] }, false},
		{"a line twice, another missing", func(ls []string) []string { return append(ls[1:], ls[2]) }, false},
		{"a line changed", func(ls []string) []string { ls[7] = strings.Replace(ls[7], "p", "q", 1); return ls }, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			q, err := diskqueue.Open(diskqueue.Options{Dir: dir, MaxBytes: 1 << 30, SegmentBytes: 256 << 10, Compress: true})
			if err != nil {
				t.Fatal(err)
			}
			held := c.edit(append([]string(nil), lines...))
			for len(held) > 0 {
				n := min(len(held), 1000)
				es := make([]diskqueue.Entry, n)
				for i := range es {
					es[i] = diskqueue.Entry{Category: "bench", Message: []byte(held[i])}
				}
				if _, err := q.Append(es); err != nil {
					t.Fatal(err)
				}
				held = held[n:]
			}
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}
			err = checkQueueHolds(dir, linesPath)
			if (err == nil) != c.ok {
				t.Fatalf("check: %v, want ok %v", err, c.ok)
			}
		})
	}
}
