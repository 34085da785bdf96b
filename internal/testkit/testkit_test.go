package testkit

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// fatalT records a Fatalf and ends the goroutine, as testing.T does.
type fatalT struct {
	testing.TB
	msg string
}

func (f *fatalT) Helper() {}

func (f *fatalT) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func run(fn func(t testing.TB)) string {
	ft := &fatalT{}
	var wg sync.WaitGroup
	wg.Go(func() { fn(ft) })
	wg.Wait()
	return ft.msg
}

func TestEventuallyReturnsOnceTheConditionHolds(t *testing.T) {
	tries := 0
	msg := run(func(t testing.TB) {
		eventually(t, "three tries", func() error {
			if tries++; tries < 3 {
				return errors.New("not yet")
			}
			return nil
		}, time.Hour)
	})
	if msg != "" || tries != 3 {
		t.Fatalf("failed with %q after %d tries", msg, tries)
	}
}

func TestEventuallyFailsWithTheLastError(t *testing.T) {
	n := 0
	msg := run(func(t testing.TB) {
		eventually(t, "the impossible", func() error { n++; return fmt.Errorf("try %d", n) }, 0)
	})
	if !strings.Contains(msg, "the impossible") || !strings.Contains(msg, fmt.Sprintf("try %d", n)) {
		t.Fatalf("failed with %q after %d tries", msg, n)
	}
}

func TestLogBufferLines(t *testing.T) {
	var l LogBuffer
	log := l.Logger()
	log.Debug("one", "path", "/a")
	log.Error("two", "path", "/b")
	log.Warn("three", "path", "/a")
	if got := l.Lines("path=/a"); len(got) != 2 || !strings.Contains(got[0], "msg=one") || !strings.Contains(got[1], "level=WARN") {
		t.Fatalf("lines with /a: %q", got)
	}
	if got := l.Lines("level=ERROR", "/b"); len(got) != 1 {
		t.Fatalf("error lines with /b: %q", got)
	}
}
