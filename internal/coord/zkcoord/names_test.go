package zkcoord

import (
	"strings"
	"testing"
)

func TestEscape(t *testing.T) {
	cases := map[string]string{
		"calligraphus/access/0": "calligraphus%2Faccess%2F0",
		"puma":                  "puma",
		"a.b-c_d~e":             "a.b-c_d~e",
		".":                     "%2E",
		"..":                    "%2E%2E",
		"...":                   "...",
		"100%":                  "100%25",
		"a b":                   "a%20b",
		"héllo":                 "h%C3%A9llo",
		"\x00\xff":              "%00%FF",
	}
	for in, want := range cases {
		if got := escape(in); got != want {
			t.Errorf("escape(%q) = %q, want %q", in, got, want)
		}
		if back, err := unescape(want); err != nil || back != in {
			t.Errorf("unescape(%q) = %q, %v; want %q", want, back, err, in)
		}
	}
	// Names that differ only in how they nest must not collide.
	if escape("a/b") == escape("a%2Fb") {
		t.Error("escape is not injective")
	}
	for _, foreign := range []string{"a/b", "%2f", "%2", "%", "a b", "%41", ".", ".."} {
		if got, err := unescape(foreign); err == nil {
			t.Errorf("unescape(%q) = %q, want an error", foreign, got)
		}
	}
}

func FuzzEscape(f *testing.F) {
	for _, s := range []string{"", ".", "..", "a/b", "%", "%25", "héllo", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e := escape(s)
		if e == "." || e == ".." || strings.Contains(e, "/") {
			t.Fatalf("escape(%q) = %q is not a valid znode name", s, e)
		}
		for i := 0; i < len(e); i++ {
			if e[i] < 0x21 || e[i] > 0x7e {
				t.Fatalf("escape(%q) = %q holds byte %#x", s, e, e[i])
			}
		}
		back, err := unescape(e)
		if err != nil || back != s {
			t.Fatalf("unescape(escape(%q)) = %q, %v", s, back, err)
		}
	})
}

func TestNames(t *testing.T) {
	for _, name := range []string{"", "/abs", "trailing/", "a//b"} {
		if checkName("lease", name) == nil {
			t.Errorf("checkName(%q) passed", name)
		}
	}
	for _, name := range []string{"a", "a/b", "calligraphus/access/0", ".", "a/./b"} {
		if err := checkName("lease", name); err != nil {
			t.Errorf("checkName(%q): %v", name, err)
		}
	}
	for _, id := range []string{"", "a/b"} {
		if checkMember(id) == nil {
			t.Errorf("checkMember(%q) passed", id)
		}
	}
}
