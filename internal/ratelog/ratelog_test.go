package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestLimiterLetsABurstThroughPerIntervalAndCountsTheRest(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, nil)), time.Minute, 3)
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }
	written := 0
	for range 10000 {
		if l.Warn("bad entry", "invalid entry", "category", "x") {
			written++
		}
	}
	if written != 3 {
		t.Fatalf("%d lines written in one interval, want 3", written)
	}
	if n := strings.Count(buf.String(), "\n"); n != 3 {
		t.Fatalf("log has %d lines, want 3:\n%s", n, buf.String())
	}
	// Another kind has its own budget.
	if !l.Warn("other", "other message") {
		t.Fatal("another kind of line was held back")
	}
	now = now.Add(time.Minute)
	buf.Reset()
	if !l.Warn("bad entry", "invalid entry") {
		t.Fatal("no line let through in the next interval")
	}
	if !strings.Contains(buf.String(), "suppressed=9997") {
		t.Fatalf("the first line of the next interval does not count the held-back ones: %s", buf.String())
	}
}

func TestLimiterBoundsTheKindsItTracks(t *testing.T) {
	l := New(nil, time.Hour, 1)
	l.log = slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))
	for i := range 10 * maxKeys {
		l.Warn(strings.Repeat("k", i%50)+string(rune('a'+i%26))+string(rune(i)), "m")
	}
	if len(l.keys) > maxKeys {
		t.Fatalf("%d kinds tracked, want at most %d", len(l.keys), maxKeys)
	}
}

func TestDisabledLevelWritesNothing(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelError})), time.Minute, 3)
	if l.Warn("k", "m") || buf.Len() != 0 {
		t.Fatal("a warning was written below the handler's level")
	}
}

func TestClip(t *testing.T) {
	if got := Clip("short"); got != "short" {
		t.Fatalf("Clip(short) = %q", got)
	}
	long := strings.Repeat("é", 4<<20) // 8 MiB, two bytes a rune
	got := Clip(long)
	if len(got) > MaxClip+32 {
		t.Fatalf("Clip kept %d bytes of %d", len(got), len(long))
	}
	if !strings.HasSuffix(got, "...(8388608 bytes)") {
		t.Fatalf("Clip does not give the full length: %q", got[len(got)-40:])
	}
	if !strings.HasPrefix(got, "éé") || strings.ContainsRune(got, '\uFFFD') {
		t.Fatalf("Clip cut inside a rune: %q", got[:20])
	}
	if ClipBytes([]byte(long)) != got {
		t.Fatal("ClipBytes differs from Clip")
	}
}
