package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml/ast"
)

// Duration is a time.Duration written in YAML as "500ms", "10s", "5m",
// "2h" or "7d" (days, which time.ParseDuration lacks).
type Duration time.Duration

// ParseDuration parses "7d", "1d12h" and everything time.ParseDuration
// accepts.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var days time.Duration
	all := s
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.ParseFloat(s[:i], 64)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		// A float out of int64's range converts to anything (NaN and
		// 1e300 days became a large negative duration): refuse it.
		ns := n * float64(24*time.Hour)
		if math.IsNaN(ns) || math.Abs(ns) >= math.MaxInt64 {
			return 0, fmt.Errorf("duration %q is out of range (at most about 106751d)", all)
		}
		days = time.Duration(ns)
		s = s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (use e.g. 500ms, 10s, 5m, 2h, 7d)", s)
	}
	sum := days + d
	if (d > 0 && sum < days) || (d < 0 && sum > days) {
		return 0, fmt.Errorf("duration %q is out of range (at most about 106751d)", all)
	}
	return sum, nil
}

// UnmarshalText implements encoding.TextUnmarshaler (YAML and flags).
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// UnmarshalYAML decodes a YAML scalar, keeping its position for errors.
func (d *Duration) UnmarshalYAML(node ast.Node) error {
	return unmarshalScalar(node, d.UnmarshalText)
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// String formats like time.Duration without trailing zero units ("1m",
// not "1m0s"), and whole days as "7d", so that it reads back as written.
func (d Duration) String() string {
	v := time.Duration(d)
	if v > 0 && v%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(v/(24*time.Hour)), 10) + "d"
	}
	s := v.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Set and Type make Duration a pflag.Value.
func (d *Duration) Set(s string) error { return d.UnmarshalText([]byte(s)) }

// Type names the flag type in --help.
func (d *Duration) Type() string { return "duration" }

// ByteSize is a size in bytes written in YAML as 1048576, "64KiB",
// "16MiB", "1GiB" (or KB/MB/GB as powers of 1000).
type ByteSize int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000}, {"TB", 1000 * 1000 * 1000 * 1000},
	{"B", 1},
}

// ParseByteSize parses "64MiB" and friends.
func ParseByteSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	for _, u := range sizeUnits {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
			if err != nil || !(n >= 0) {
				return 0, fmt.Errorf("invalid size %q", s)
			}
			// A float out of int64's range converts to anything (NaN and
			// 1e300GiB became a negative size): refuse it.
			if b := n * float64(u.mult); b >= math.MaxInt64 {
				return 0, fmt.Errorf("size %q is out of range (at most 8EiB)", s)
			}
			return int64(n * float64(u.mult)), nil
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q (use e.g. 4096, 64KiB, 16MiB, 1GiB)", s)
	}
	return n, nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (b *ByteSize) UnmarshalText(t []byte) error {
	v, err := ParseByteSize(string(t))
	if err != nil {
		return err
	}
	*b = ByteSize(v)
	return nil
}

// UnmarshalYAML decodes a YAML scalar, keeping its position for errors.
func (b *ByteSize) UnmarshalYAML(node ast.Node) error {
	return unmarshalScalar(node, b.UnmarshalText)
}

// MarshalText implements encoding.TextMarshaler.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// String formats with the largest binary unit that divides the size.
func (b ByteSize) String() string {
	for _, u := range []struct {
		s string
		m int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if int64(b) >= u.m && int64(b)%u.m == 0 {
			return fmt.Sprintf("%d%s", int64(b)/u.m, u.s)
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// Set and Type make ByteSize a pflag.Value.
func (b *ByteSize) Set(s string) error { return b.UnmarshalText([]byte(s)) }

// Type names the flag type in --help.
func (b *ByteSize) Type() string { return "size" }

// nodeError is an error about one YAML node.
type nodeError struct {
	node ast.Node
	err  error
}

func (e *nodeError) Error() string { return e.err.Error() }

func unmarshalScalar(node ast.Node, parse func([]byte) error) error {
	var text string
	switch n := node.(type) {
	case *ast.StringNode:
		text = n.Value
	case *ast.IntegerNode, *ast.FloatNode:
		text = n.String()
	default:
		return &nodeError{node, fmt.Errorf("want a scalar, not %s", node.Type())}
	}
	if err := parse([]byte(text)); err != nil {
		return &nodeError{node, err}
	}
	return nil
}
