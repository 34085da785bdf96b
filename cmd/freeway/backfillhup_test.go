package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBackfillGoesOnThroughSIGHUP sends SIGHUP to `freeway copier
// --backfill` once it is writing the destination's first file (operators
// send it to every freeway process: logrotate, configuration management).
// It used to kill the process mid-copy, SIGHUP being registered only by
// the long-running targets for their reload; the backfill now logs that it
// does not reload and goes on: it exits 0 with every merged file complete.
// A backfill that finishes before the signal is sent proves nothing: the
// test retries with more minutes of segments, then fails.
func TestBackfillGoesOnThroughSIGHUP(t *testing.T) {
	for attempt, periods := range []int{6, 12, 24} {
		f := newBackfillFixture(t, "file://"+filepath.ToSlash(filepath.Join(t.TempDir(), "warehouse")), "", periods, 25000)
		cmd, out, done := f.backfill(t)
		first := firstFile(t, f, cmd, out, done)
		if first == "" {
			t.Logf("attempt %d (%d minutes): the backfill finished before it could be sent SIGHUP (%v)", attempt, periods, <-done)
			continue
		}
		if err := cmd.Process.Signal(syscall.SIGHUP); errors.Is(err, os.ErrProcessDone) {
			<-done //nolint:errcheck // finished: the next attempt has more to do
			t.Logf("attempt %d (%d minutes): the backfill finished before SIGHUP reached it", attempt, periods)
			continue
		} else if err != nil {
			t.Fatal(err)
		}
		t.Logf("attempt %d (%d minutes): SIGHUP sent while the destination held %s", attempt, periods, first)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("the backfill sent SIGHUP ended with %v, want exit 0:\n%s", err, out.String())
			}
		case <-time.After(5 * time.Minute):
			_ = cmd.Process.Kill() // the test fails anyway
			t.Fatalf("the backfill sent SIGHUP did not finish in 5m:\n%s", out.String())
		}
		if !strings.Contains(out.String(), "does not reload its configuration") {
			t.Errorf("no warning that SIGHUP does not reload a backfill:\n%s", out.String())
		}
		if !strings.Contains(out.String(), "backfill: merged") {
			t.Errorf("no summary:\n%s", out.String())
		}
		f.checkMerged(t)
		return
	}
	t.Fatal("every backfill finished before it could be sent SIGHUP: give it more segments")
}
