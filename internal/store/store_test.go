package store

import (
	"strings"
	"testing"
)

func TestValidTable(t *testing.T) {
	for _, ok := range []string{"puma", "copier", "a", "A.b-c_d", strings.Repeat("t", 200)} {
		if !ValidTable(ok) {
			t.Errorf("ValidTable(%q) = false", ok)
		}
	}
	for _, bad := range []string{"", "_x", ".x", "-x", "a/b", "a b", "a:b", strings.Repeat("t", 201)} {
		if ValidTable(bad) {
			t.Errorf("ValidTable(%q) = true", bad)
		}
	}
}
