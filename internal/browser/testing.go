package browser

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
