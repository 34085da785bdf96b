// Package testkit holds what the tests of every package share: polling
// for a condition with a generous deadline, and a log buffer that several
// goroutines may write to. It imports nothing of Freeway, so that the
// tests of any package, internal or not, can use it.
//
// Helpers that need a Freeway type live next to that type's package, as
// its conformance suites do: dfs fault wrappers in internal/dfs/dfstest,
// the example apps in internal/apps/appstest.
package testkit

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// Deadline bounds every wait: long enough that a loaded machine (the
// race detector, five test runs on two cores) does not fail a test that
// is merely slow. A test asserts what happens, never how fast.
const Deadline = 90 * time.Second

// Eventually polls cond until it returns nil. After Deadline it fails t
// with what and the last error cond returned.
func Eventually(t testing.TB, what string, cond func() error) {
	t.Helper()
	eventually(t, what, cond, Deadline)
}

func eventually(t testing.TB, what string, cond func() error, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	wait := time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s: %v", what, err)
		}
		time.Sleep(wait)
		// Quick to notice a condition that holds soon, gentle on a real
		// engine polled for longer.
		wait = min(2*wait, 20*time.Millisecond)
	}
}

// WaitFor polls cond until it holds; after Deadline it fails t with what.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	Eventually(t, what, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
}

var errNotYet = errors.New("the condition still does not hold")

// LogBuffer collects log output for assertions. Writes and reads may come
// from any goroutine.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Lines returns the lines written so far that contain every one of subs.
func (l *LogBuffer) Lines(subs ...string) []string {
	var out []string
	for line := range strings.SplitSeq(l.String(), "\n") {
		if line == "" {
			continue
		}
		match := true
		for _, s := range subs {
			if !strings.Contains(line, s) {
				match = false
				break
			}
		}
		if match {
			out = append(out, line)
		}
	}
	return out
}

// Logger returns a logger writing text lines at every level, debug
// included, to l.
func (l *LogBuffer) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// MemDir is a temporary directory in memory if the machine has one
// (/dev/shm), else t.TempDir: for tests that sync thousands of times
// for nothing (crash tests), removed when t ends.
func MemDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", prefix)
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}
