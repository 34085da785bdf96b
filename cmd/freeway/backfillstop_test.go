package main

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBackfillStopsOnSIGINTOrSIGTERMAndResumes: SIGINT (^C) or SIGTERM
// sent to `freeway copier --backfill` while it writes the destination's
// first file stops it (it exits by itself, not killed by the signal,
// saying it was interrupted), and running it again finishes the work:
// every merged file whole, once. SIGHUP, which it goes on through
// (TestBackfillGoesOnThroughSIGHUP), must not have taken these with it.
// A backfill that finishes before the signal is sent proves nothing: the
// test retries with more minutes of segments, then fails.
func TestBackfillStopsOnSIGINTOrSIGTERMAndResumes(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			for attempt, periods := range []int{6, 12, 24} {
				f := newBackfillFixture(t, "file://"+filepath.ToSlash(filepath.Join(t.TempDir(), "warehouse")), "", periods, 25000)
				cmd, out, done := f.backfill(t)
				if firstFile(t, f, cmd, out, done) == "" {
					t.Logf("attempt %d (%d minutes): the backfill finished before it could be sent %v", attempt, periods, sig)
					continue
				}
				if err := cmd.Process.Signal(sig); errors.Is(err, os.ErrProcessDone) {
					<-done //nolint:errcheck // finished: the next attempt has more to do
					t.Logf("attempt %d (%d minutes): the backfill finished before %v reached it", attempt, periods, sig)
					continue
				} else if err != nil {
					t.Fatal(err)
				}
				var err error
				select {
				case err = <-done:
				case <-time.After(5 * time.Minute):
					_ = cmd.Process.Kill() // the test fails anyway
					t.Fatalf("the backfill sent %v did not stop in 5m:\n%s", sig, out.String())
				}
				var ee *exec.ExitError
				switch {
				case err == nil:
					t.Logf("attempt %d (%d minutes): the backfill finished before %v stopped it", attempt, periods, sig)
					continue
				case !errors.As(err, &ee):
					t.Fatal(err)
				case !ee.Exited():
					t.Fatalf("the backfill sent %v was killed by a signal (%v), not stopped:\n%s", sig, err, out.String())
				}
				t.Logf("attempt %d (%d minutes): sent %v, the backfill stopped: %v", attempt, periods, sig, err)
				if !strings.Contains(out.String(), "interrupted") {
					t.Errorf("the backfill stopped by %v does not say it was interrupted:\n%s", sig, out.String())
				}
				_, out, done = f.backfill(t)
				select {
				case err = <-done:
					if err != nil {
						t.Fatalf("the backfill run again ended with %v, want exit 0:\n%s", err, out.String())
					}
				case <-time.After(5 * time.Minute):
					t.Fatalf("the backfill run again did not finish in 5m:\n%s", out.String())
				}
				if !strings.Contains(out.String(), "backfill: merged") {
					t.Errorf("no summary:\n%s", out.String())
				}
				f.checkMerged(t)
				return
			}
			t.Fatalf("every backfill finished before %v stopped it: give it more segments", sig)
		})
	}
}

// firstFile waits until the backfill has a file at the destination and
// returns its name, or "" if the backfill finished first (its result
// left in done).
func firstFile(t *testing.T, f *backfillFixture, cmd *exec.Cmd, out interface{ String() string }, done chan error) string {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		select {
		case err := <-done:
			done <- err
			return ""
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill() // the test fails anyway
			t.Fatalf("the backfill wrote nothing in 2m:\n%s", out.String())
		}
		var got []string
		if err := walk(f.dst, f.cat, &got); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("list the destination: %v", err)
		}
		if len(got) > 0 {
			return got[0]
		}
		time.Sleep(10 * time.Millisecond)
	}
}
