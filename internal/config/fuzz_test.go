package config

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

// FuzzDecode decodes arbitrary YAML into a document of every kind of
// value (strings, sizes, durations, lists of structs), then validates it
// with errors at the paths of the values it refuses. Nothing panics, and
// every error but an empty file's is a *Error carrying the file, a line
// and a column inside the file: each refused value was written in it.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"name: x\nsize: 16MiB\nitems:\n  - {fn: count, every: 7d}\n  - fn: bad\n",
		"name: bad\n",
		"items:\n  - every: -1s\n",
		"size: 1e300GiB\n",
		"size: NaNKiB\n",
		"items:\n  - every: 1e300d\n",
		"items: [{fn: a}, {fn: bad, every: 1h}]\n",
		"a: &x {name: y}\n<<: *x\n",
		"name: [1, 2]\n",
		"items:\n  - fn: count\n    colour: red\n",
		"name: x\n---\nname: y\n",
		"- 1\n- 2\n",
		"\"\\xff\": 1\n",
		"name: |\n  multi\n  line\n",
		"\t\n",
		"# only a comment\n",
		"---\n",
		"{",
		"name: x\nitems:\n  -\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d := &doc{Name: "default"}
		err := Decode("fuzz.yaml", data, d, func() error {
			var errs []error
			if d.Name == "bad" {
				errs = append(errs, Errorf("$.name", "bad name"))
			}
			if d.Size < 0 {
				errs = append(errs, Errorf("$.size", "negative size %d", d.Size))
			}
			for i, it := range d.Items {
				if it.Fn == "bad" {
					errs = append(errs, Errorf(fmt.Sprintf("$.items[%d].fn", i), "bad fn"))
				}
				if it.Every < 0 {
					errs = append(errs, Errorf(fmt.Sprintf("$.items[%d].every", i), "negative duration %v", it.Every))
				}
			}
			if len(errs) > 0 {
				return errs[0]
			}
			return nil
		})
		checkDecodeError(t, data, err)
	})
}

// checkDecodeError checks an error of Decode: a *Error of the file, at
// a line and column inside it, unless the file is empty.
func checkDecodeError(t *testing.T, data []byte, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("%q: error %T is not a *config.Error: %v", data, err, err)
	}
	if ce.File != "fuzz.yaml" || !strings.HasPrefix(ce.Error(), "fuzz.yaml") {
		t.Fatalf("%q: error does not name the file: %v", data, err)
	}
	if strings.HasPrefix(ce.Msg, "the file is empty") {
		return // about the whole file
	}
	if ce.Line < 1 || ce.Column < 1 {
		t.Fatalf("%q: error without a position: %v", data, err)
	}
	if lines := yamlLines(data); ce.Line > lines {
		t.Fatalf("%q: error at line %d of a file of %d lines: %v", data, ce.Line, lines, err)
	}
}

// yamlLines counts the lines of data as YAML does: "\r\n", "\r" and "\n"
// each end one.
func yamlLines(data []byte) int {
	s := strings.ReplaceAll(string(data), "\r\n", "\n")
	return strings.Count(s, "\n") + strings.Count(s, "\r") + 1
}

// FuzzParseDuration: a duration either is refused or is what it says,
// without wrapping around (a huge or NaN count of days is refused, not
// read as a negative duration); and a duration's text reads back as the
// same duration.
func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"500ms", "10s", "5m", "2h", "7d", "1d12h", "1.5d", "-1d", "0", "1e300d", "NaNd", "Infd",
		"106751d", "106751d23h47m16s", "106752d", "106751d23h47m17s", "-106751d-23h47m17s", "d", "1d-1h", " 2h ", "9223372036854775807ns", "0x1p4d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseDuration(s)
		if err != nil {
			return
		}
		if days, rest, ok := strings.Cut(strings.TrimSpace(s), "d"); ok && days != "" {
			// The parts add up: the days, then what time.ParseDuration
			// says of the rest, within the rounding of a float of days.
			var r time.Duration
			if rest != "" {
				r, _ = time.ParseDuration(rest)
			}
			var n float64
			_, _ = fmt.Sscan(days, &n) // the fuzzed text: no number is a zero, as ParseDuration reads it
			want := n*float64(24*time.Hour) + float64(r)
			if math.IsNaN(want) || math.Abs(want) >= math.MaxInt64 {
				t.Fatalf("%q is %v (%d ns), but it names %v ns, beyond what a duration holds", s, v, int64(v), want)
			}
			if diff := math.Abs(float64(v) - want); diff > 1+math.Abs(want)*1e-9 {
				t.Fatalf("%q is %v (%d ns), want about %v ns", s, v, int64(v), want)
			}
		}
		back, err := ParseDuration(Duration(v).String())
		if err != nil || back != v {
			t.Fatalf("%q is %d ns, written %q, read back %d ns (%v)", s, int64(v), Duration(v).String(), int64(back), err)
		}
	})
}

// FuzzParseByteSize: a size either is refused or is a non-negative
// count of bytes, the one it says (no wrap around); and a size's text
// reads back as the same size.
func FuzzParseByteSize(f *testing.F) {
	for _, s := range []string{"4096", "64KiB", "16MiB", "1GiB", "1.5GiB", "1TB", "3B", "0", "-1", "-0KiB", "1e300GiB",
		"NaNKiB", "InfMB", "8EiB", "8388608TiB", "9223372036854775807", " 7 MiB ", "KiB", "0x10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseByteSize(s)
		if err != nil {
			return
		}
		if v < 0 {
			t.Fatalf("%q is %d bytes", s, v)
		}
		for _, u := range sizeUnits {
			if num, ok := strings.CutSuffix(strings.TrimSpace(s), u.suffix); ok {
				var n float64
				_, _ = fmt.Sscan(strings.TrimSpace(num), &n) // the fuzzed text: no number is a zero, as ParseByteSize reads it
				want := n * float64(u.mult)
				if math.IsNaN(want) || want >= math.MaxInt64 {
					t.Fatalf("%q is %d bytes, but it names %v bytes, beyond what a size holds", s, v, want)
				}
				if math.Abs(float64(v)-want) > 1+want*1e-9 {
					t.Fatalf("%q is %d bytes, want about %v", s, v, want)
				}
				break
			}
		}
		back, err := ParseByteSize(ByteSize(v).String())
		if err != nil || back != v {
			t.Fatalf("%q is %d bytes, written %q, read back %d (%v)", s, v, ByteSize(v).String(), back, err)
		}
	})
}
