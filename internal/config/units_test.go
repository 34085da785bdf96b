package config

import (
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	//nolint:gocritic // " 2h ": the spaces are the case under test
	for in, want := range map[string]time.Duration{"500ms": 500 * time.Millisecond, "1m": time.Minute, "7d": 7 * 24 * time.Hour, "1d12h": 36 * time.Hour, " 2h ": 2 * time.Hour} {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "7", "xd", "1y", "d", "1e300d", "NaNd", "Infd", "106752d", "106751d23h47m17s"} {
		if _, err := ParseDuration(bad); err == nil {
			t.Errorf("ParseDuration(%q) accepted", bad)
		}
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{"4096": 4096, "64KiB": 64 << 10, "16MiB": 16 << 20, "1GiB": 1 << 30, "1.5MiB": 3 << 19, "2MB": 2e6, "10B": 10} {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "MiB", "12 apples", "-5MiB", "NaNKiB", "InfMB", "1e300GiB", "8388608TiB"} {
		if _, err := ParseByteSize(bad); err == nil {
			t.Errorf("ParseByteSize(%q) accepted", bad)
		}
	}
	if s := ByteSize(16 << 20).String(); s != "16MiB" {
		t.Errorf("String = %s", s)
	}
}

func TestDurationString(t *testing.T) {
	for d, want := range map[time.Duration]string{time.Minute: "1m", time.Hour: "1h", 90 * time.Second: "1m30s", 7 * 24 * time.Hour: "7d", 36 * time.Hour: "36h", 500 * time.Millisecond: "500ms", 0: "0s", 61 * time.Minute: "1h1m"} {
		if got := Duration(d).String(); got != want {
			t.Errorf("Duration(%v).String() = %q, want %q", d, got, want)
		}
		back, err := ParseDuration(Duration(d).String())
		if err != nil || back != d {
			t.Errorf("%q reads back as %v, %v", Duration(d).String(), back, err)
		}
	}
}
