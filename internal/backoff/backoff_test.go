package backoff

import (
	"context"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := WithJitter(50*time.Millisecond, 5*time.Second)
	b.Rand = func() float64 { return 0.999999 }
	var got []time.Duration
	for range 10 {
		got = append(got, b.Next().Round(time.Millisecond))
	}
	want := []time.Duration{50, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("backoff = %v", got)
		}
	}
	b.Reset()
	b.Rand = func() float64 { return 0 }
	if d := b.Next(); d != 25*time.Millisecond {
		t.Fatalf("after reset, lowest jitter = %v", d)
	}
}

func TestWithoutJitter(t *testing.T) {
	b := New(10*time.Millisecond, 40*time.Millisecond)
	want := []time.Duration{10, 20, 40, 40}
	for i, w := range want {
		if d := b.Next(); d != w*time.Millisecond {
			t.Fatalf("wait %d = %v, want %v", i, d, w*time.Millisecond)
		}
	}
	b.Reset()
	if d := b.Next(); d != 10*time.Millisecond {
		t.Fatalf("after reset = %v", d)
	}
}

func TestDelay(t *testing.T) {
	for failures, want := range map[int]time.Duration{0: 2 * time.Second, 1: 2 * time.Second, 2: 4 * time.Second, 5: 32 * time.Second, 6: time.Minute, 100: time.Minute} {
		if got := Delay(2*time.Second, time.Minute, failures); got != want {
			t.Errorf("Delay(%d) = %v, want %v", failures, got, want)
		}
	}
}

// Sleep waits its time, and returns false at once for an ended context.
func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Error("Sleep with a live context returned false")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Error("Sleep with an ended context returned true")
	}
}
