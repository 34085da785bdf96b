package progress

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestFormat(t *testing.T) {
	start := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	s := State{Files: 25, TotalFiles: 100, Bytes: 256 << 20, TotalBytes: 1 << 30, Start: start}
	got := Format(s, start.Add(10*time.Second))
	want := "[=====>              ]  25% 256.0 MiB/1.0 GiB 25/100 files 25.6 MiB/s ETA 30s"
	if got != want {
		t.Errorf("Format:\n%q\nwant\n%q", got, want)
	}
	if got := Format(State{Start: start}, start); !strings.Contains(got, "100%") || !strings.Contains(got, "ETA -") {
		t.Errorf("nothing to do: %q", got)
	}
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 5 << 40: "5.0 TiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestTerminalAndPlain: on a terminal the line is redrawn in place, often;
// elsewhere plain lines come at most every 10s, and the last one always.
func TestTerminalAndPlain(t *testing.T) {
	now := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	var tty, plain bytes.Buffer
	pt, pp := New(&tty, true, "backfill", clock), New(&plain, false, "backfill", clock)
	s := State{TotalFiles: 15, TotalBytes: 1500, Start: now}
	for i := range 15 {
		s.Files, s.Bytes = i, int64(i*100)
		now = now.Add(time.Second)
		pt.Update(s)
		pp.Update(s)
	}
	s.Files, s.Bytes = 15, 1500
	pt.Done(s)
	pp.Done(s)
	if n := strings.Count(tty.String(), "\r"); n != 16 || strings.Count(tty.String(), "\n") != 1 || !strings.HasSuffix(tty.String(), "\x1b[K\n") {
		t.Errorf("terminal output: %q", tty.String())
	}
	lines := strings.Split(strings.TrimSuffix(plain.String(), "\n"), "\n")
	if len(lines) != 3 || strings.Contains(plain.String(), "\r") || !strings.Contains(lines[2], "15/15 files") {
		t.Errorf("plain output: %q", plain.String())
	}
}
