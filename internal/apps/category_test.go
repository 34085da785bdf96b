package apps

import (
	"strings"
	"testing"
)

// TestAnyCategoryCanBeConsumed: an app may consume any category a Scribe
// client can send.
func TestAnyCategoryCanBeConsumed(t *testing.T) {
	for _, c := range []string{"web/access", "a b", "_internal", ".x", "../etc", strings.Repeat("c", 300), strings.Repeat("web/", 2500)} {
		s := Spec{Name: "a", Category: c, Format: "json", GroupBy: []string{"k"}, Aggregates: []AggregateSpec{{Fn: "count"}}}
		if _, err := Compile(s, "$.apps[0]"); err != nil {
			t.Errorf("category %.20q (%d bytes): %v", c, len(c), err)
		}
	}
}
