package serving

import (
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"regexp"
	"strings"
	"testing"
)

// TestVendoredFiles: every file under ui/vendor is listed with its
// SHA-256 in ui/vendor/README.md, and has it: the vendored libraries
// are the published bytes, pinned.
func TestVendoredFiles(t *testing.T) {
	readme, err := fs.ReadFile(uiFS(), "vendor/README.md")
	if err != nil {
		t.Fatal(err)
	}
	sums := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^([0-9a-f]{64})  (\S+)$`).FindAllStringSubmatch(string(readme), -1) {
		sums["vendor/"+m[2]] = m[1]
	}
	if len(sums) == 0 {
		t.Fatal("no sums in ui/vendor/README.md")
	}
	seen := 0
	err = fs.WalkDir(uiFS(), "vendor", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || path == "vendor/README.md" {
			return err
		}
		b, err := fs.ReadFile(uiFS(), path)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		switch want, ok := sums[path]; {
		case !ok:
			t.Errorf("%s is vendored but has no sum in ui/vendor/README.md", path)
		case hex.EncodeToString(sum[:]) != want:
			t.Errorf("%s: sha256 %x, README.md says %s", path, sum, want)
		}
		seen++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != len(sums) {
		t.Errorf("README.md lists %d files, %d are vendored", len(sums), seen)
	}
	page, _ := fs.ReadFile(uiFS(), "index.html")
	for path := range sums {
		if !strings.HasSuffix(path, "LICENSE") && !strings.Contains(string(page), "/ui/"+path) {
			t.Errorf("index.html does not load %s", path)
		}
	}
}
