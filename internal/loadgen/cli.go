package loadgen

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// ClientTLS is the TLS of a connection to addr: the server must chain to
// caFile (empty: the system roots); certFile and keyFile, when set, are
// the client's certificate (for servers requiring one).
func ClientTLS(addr, caFile, certFile, keyFile string) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", addr, err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("a client certificate needs both its certificate and its key file")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("load client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// ParseCount reads a count such as 2000000, 2M, 10k or 1.5G (powers of
// 1000).
func ParseCount(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := 1.0
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k', 'K':
			mult, t = 1e3, t[:n-1]
		case 'm', 'M':
			mult, t = 1e6, t[:n-1]
		case 'g', 'G':
			mult, t = 1e9, t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || v*mult > 1<<62 || v*mult != float64(int64(v*mult)) {
		return 0, fmt.Errorf("%q is not a count (a whole number such as 2000000, 2M or 10k)", s)
	}
	return int64(v * mult), nil
}

// ParseStart reads an event time: RFC 3339, Unix seconds, or "now"
// (rounded down to the minute, so that windows start with the lines).
func ParseStart(s string, now time.Time) (time.Time, error) {
	switch s {
	case "":
		return time.Time{}, nil
	case "now":
		return now.Truncate(time.Minute), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if v, err := strconv.ParseFloat(s, 64); err == nil && v > 0 {
		return time.UnixMilli(int64(v * 1000)), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time (RFC 3339, Unix seconds or now)", s)
}

// Text is the summary as a few lines for people.
func (s Summary) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "acknowledged %d entries (%.1f MB) in %.2fs: %.0f entries/s, %.1f MB/s\n", s.Entries, float64(s.Bytes)/1e6, s.Seconds, s.PerSec, s.MBPerSec)
	fmt.Fprintf(&b, "Log calls: %d; latency p50 %.2fms p90 %.2fms p99 %.2fms max %.2fms\n", s.Calls, s.LatencyMs.P50, s.LatencyMs.P90, s.LatencyMs.P99, s.LatencyMs.Max)
	fmt.Fprintf(&b, "TRY_LATER answers: %d (retried); errors: %d; entries of unknown fate: %d", s.TryLater, s.Errors, s.Unknown)
	if s.Behind > 0 {
		fmt.Fprintf(&b, "; fell a second behind the rate %d times", s.Behind)
	}
	b.WriteString("\n")
	if s.LastErr != "" {
		fmt.Fprintf(&b, "last error: %s\n", s.LastErr)
	}
	return b.String()
}
