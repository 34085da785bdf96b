package browser

import (
	"runtime"
	"testing"
)

// outcomeTB records whether Need failed or skipped the test it was given,
// and ends the goroutine as testing.T does.
type outcomeTB struct {
	testing.TB
	failed, skipped bool
}

func (o *outcomeTB) Helper()           {}
func (o *outcomeTB) Fatal(args ...any) { o.failed = true; runtime.Goexit() }
func (o *outcomeTB) Skip(args ...any)  { o.skipped = true; runtime.Goexit() }

// TestNeedWithoutChromium: with no Chromium on $PATH, Need skips a local
// run but fails one that requires the engines or the browser (`make test`,
// CI), so that the dashboard's browser test cannot silently not run there.
func TestNeedWithoutChromium(t *testing.T) {
	for _, c := range []struct {
		env      string
		wantFail bool
	}{
		{"", false},
		{"FREEWAY_REQUIRE_ENGINES", true},
		{"FREEWAY_REQUIRE_BROWSER", true},
	} {
		t.Run("require="+c.env, func(t *testing.T) {
			t.Setenv("PATH", t.TempDir())
			t.Setenv("FREEWAY_CHROMIUM", "")
			t.Setenv("FREEWAY_REQUIRE_ENGINES", "")
			t.Setenv("FREEWAY_REQUIRE_BROWSER", "")
			if c.env != "" {
				t.Setenv(c.env, "1")
			}
			o := &outcomeTB{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				Need(o)
			}()
			<-done
			if o.failed != c.wantFail || o.skipped == c.wantFail {
				t.Fatalf("failed %v, skipped %v; want failed %v", o.failed, o.skipped, c.wantFail)
			}
		})
	}
}
