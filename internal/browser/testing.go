package browser

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Need returns the Chromium to run, or skips t when there is none; under
// FREEWAY_REQUIRE_ENGINES=1 or FREEWAY_REQUIRE_BROWSER=1 (`make test`,
// whose scripts/deps.sh installs Debian's chromium) it fails t instead.
func Need(t testing.TB) string {
	t.Helper()
	path, err := Find()
	if err != nil {
		if os.Getenv("FREEWAY_REQUIRE_ENGINES") == "1" || os.Getenv("FREEWAY_REQUIRE_BROWSER") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return path
}

// Open starts the Chromium at path (Need's) for t, with a context of 2
// minutes for its calls; done closes both. It is for the test to defer,
// before the servers the pages read are closed: a server's Close waits
// for the browser's requests.
func Open(t testing.TB, path string) (c *Chrome, ctx context.Context, done func()) {
	t.Helper()
	c, err := Start(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	return c, ctx, func() {
		cancel()
		_ = c.Close() // the test is over: what it checked is what counts
	}
}

// Artifacts is the directory where a test leaves what a person may want
// to look at (screenshots): $FREEWAY_ARTIFACTS/<test name> when that is
// set (`make test` sets it to test-artifacts/), else a new directory
// under the system's temporary one, kept after the test. The test's
// output says where.
func Artifacts(t testing.TB) string {
	t.Helper()
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	dir := ""
	if root := os.Getenv("FREEWAY_ARTIFACTS"); root != "" {
		dir = filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	} else {
		var err error
		if dir, err = os.MkdirTemp("", "freeway-artifacts-"+name+"-"); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("artifacts (screenshots) in %s", dir)
	return dir
}
