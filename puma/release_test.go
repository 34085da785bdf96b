package puma

import (
	"testing"
	"time"
)

// TestMemoryReleaseAtMostOnceAnInterval: the shards' large checkpoints
// share one release of memory to the OS per interval, the first at once.
func TestMemoryReleaseAtMostOnceAnInterval(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	freed := 0
	r := &memoryRelease{every: 30 * time.Second, free: func() { freed++ }, now: func() time.Time { return now }}
	r.release()
	if freed != 1 {
		t.Fatalf("first release: %d calls of free, want 1", freed)
	}
	for _, step := range []time.Duration{0, 10 * time.Second, 19 * time.Second} {
		now = now.Add(step)
		r.release()
	}
	if freed != 1 {
		t.Fatalf("releases within 30s of the first: %d calls of free, want 1", freed)
	}
	now = now.Add(time.Second) // 30s after the first
	r.release()
	if freed != 2 {
		t.Fatalf("release 30s after the first: %d calls of free, want 2", freed)
	}
}
