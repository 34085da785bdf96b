package serving

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/puma"
)

var queryParams = map[string]bool{"app": true, "from": true, "to": true, "group_by": true, "window": true, "limit": true}

// parseQuery turns URL parameters into a query; errors are the caller's,
// and quote what the caller sent clipped (ratelog.Clip).
func (s *Server) parseQuery(params map[string][]string) (puma.Query, error) {
	var q puma.Query
	for _, k := range slices.Sorted(maps.Keys(params)) {
		if !queryParams[k] {
			return q, fmt.Errorf("unknown parameter %q (want app, from, to, group_by, window, limit)", ratelog.Clip(k))
		}
		if n := len(params[k]); n > 1 {
			return q, fmt.Errorf("parameter %q given %d times", ratelog.Clip(k), n)
		}
	}
	get := func(k string) (string, bool) {
		v, ok := params[k]
		if !ok {
			return "", false
		}
		return v[0], true
	}
	app, _ := get("app")
	if app == "" {
		return q, errors.New("missing parameter app")
	}
	q.App = app
	now := s.deps.Now()
	q.ToMs = now.UnixMilli()
	if v, ok := get("to"); ok {
		t, err := ParseTime(v)
		if err != nil {
			return q, fmt.Errorf("bad to: %w", err)
		}
		q.ToMs = t.UnixMilli()
	}
	q.FromMs = q.ToMs - time.Hour.Milliseconds()
	if v, ok := get("from"); ok {
		t, err := ParseTime(v)
		if err != nil {
			return q, fmt.Errorf("bad from: %w", err)
		}
		q.FromMs = t.UnixMilli()
	}
	if q.FromMs >= q.ToMs {
		return q, errors.New("from must be before to")
	}
	if v, ok := get("group_by"); ok {
		q.GroupBy = []string{}
		if v != "" {
			q.GroupBy = strings.Split(v, ",")
			for _, g := range q.GroupBy {
				if g == "" {
					return q, fmt.Errorf("bad group_by %q: empty field name", ratelog.Clip(v))
				}
			}
		}
	}
	if v, ok := get("window"); ok {
		if v != "all" {
			return q, fmt.Errorf("bad window %q: the only value is all", ratelog.Clip(v))
		}
		q.AllWindows = true
	}
	q.Limit = s.cfg.MaxRows
	if v, ok := get("limit"); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return q, fmt.Errorf("bad limit %q: want a positive integer", ratelog.Clip(v))
		}
		q.Limit = min(n, s.cfg.MaxRows)
	}
	return q, nil
}

// maxUnixSeconds bounds the times a query may name (about 5000 years
// either side of 1970), so that milliseconds do not overflow.
const maxUnixSeconds = 1e11

// unixSeconds is a decimal number of seconds, possibly with an exponent.
var unixSeconds = regexp.MustCompile(`^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$`)

// ParseTime parses RFC 3339 or Unix seconds (possibly fractional).
func ParseTime(v string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	bad := fmt.Errorf("%q is neither RFC 3339 nor Unix seconds", ratelog.Clip(v))
	if !unixSeconds.MatchString(v) {
		return time.Time{}, bad
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < -maxUnixSeconds || f > maxUnixSeconds {
		return time.Time{}, bad
	}
	// Read a plain decimal exactly: as a float, 1.001 seconds is
	// 1000.9999999999999 ms.
	sec, frac, _ := strings.Cut(v, ".")
	if n, err := strconv.ParseInt(sec, 10, 64); err == nil && !strings.ContainsAny(frac, "eE") {
		ns, _ := strconv.ParseInt((frac + "000000000")[:9], 10, 64)
		if strings.HasPrefix(sec, "-") {
			ns = -ns
		}
		return time.Unix(n, ns).UTC(), nil
	}
	return time.UnixMilli(int64(math.Round(f * 1000))).UTC(), nil
}
