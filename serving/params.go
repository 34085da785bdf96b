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

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/puma"
)

// param is a query-string parameter an endpoint takes. The parser takes
// the names it accepts from these tables, and TestOpenAPI holds the
// OpenAPI document (openapi.json) to them: a parameter added here and not
// documented there, or the other way round, fails the test.
type param struct {
	name string
	// required: the request is refused without it.
	required bool
	// repeat: it may be given several times (else once at most).
	repeat bool
}

// queryParams are GET /api/v1/query's.
var queryParams = []param{
	{name: "app", required: true},
	{name: "from"},
	{name: "to"},
	{name: "group_by"},
	{name: "window"},
	{name: "limit"},
	{name: "where", repeat: true},
	{name: "order_by"},
	{name: "mode"},
}

// checkParams refuses a parameter not in table, or one given more times
// than it may be; errors quote the name clipped.
func checkParams(params map[string][]string, table []param) error {
	for _, k := range slices.Sorted(maps.Keys(params)) {
		i := slices.IndexFunc(table, func(p param) bool { return p.name == k })
		if i < 0 {
			names := make([]string, len(table))
			for j, p := range table {
				names[j] = p.name
			}
			return fmt.Errorf("unknown parameter %q (want %s)", ratelog.Clip(k), strings.Join(names, ", "))
		}
		if n := len(params[k]); n > 1 && !table[i].repeat {
			return fmt.Errorf("parameter %q given %d times", ratelog.Clip(k), n)
		}
	}
	for _, p := range table {
		if v := params[p.name]; p.required && (len(v) == 0 || v[0] == "") {
			return fmt.Errorf("missing parameter %s", p.name)
		}
	}
	return nil
}

// Modes of a query: from a Puma node's memory, or from the store.
const (
	modeFresh     = "fresh"
	modeCommitted = "committed"
)

// queryRequest is a parsed query and the mode it asks for ("": the
// server's default).
type queryRequest struct {
	q    puma.Query
	mode string
}

// parseQuery turns URL parameters into a query; errors are the caller's,
// and quote what the caller sent clipped (ratelog.Clip).
func (s *Server) parseQuery(params map[string][]string) (queryRequest, error) {
	var req queryRequest
	q := &req.q
	if err := checkParams(params, queryParams); err != nil {
		return req, err
	}
	get := func(k string) (string, bool) {
		v, ok := params[k]
		if !ok {
			return "", false
		}
		return v[0], true
	}
	q.App, _ = get("app")
	now := s.deps.Now()
	q.ToMs = now.UnixMilli()
	if v, ok := get("to"); ok {
		t, err := ParseTime(v)
		if err != nil {
			return req, fmt.Errorf("bad to: %w", err)
		}
		q.ToMs = t.UnixMilli()
	}
	q.FromMs = q.ToMs - time.Hour.Milliseconds()
	if v, ok := get("from"); ok {
		t, err := ParseTime(v)
		if err != nil {
			return req, fmt.Errorf("bad from: %w", err)
		}
		q.FromMs = t.UnixMilli()
	}
	if q.FromMs >= q.ToMs {
		return req, errors.New("from must be before to")
	}
	if v, ok := get("group_by"); ok {
		q.GroupBy = []string{}
		if v != "" {
			q.GroupBy = strings.Split(v, ",")
			for _, g := range q.GroupBy {
				if g == "" {
					return req, fmt.Errorf("bad group_by %q: empty field name", ratelog.Clip(v))
				}
			}
		}
	}
	if v, ok := get("window"); ok {
		if err := parseWindow(v, q); err != nil {
			return req, err
		}
	}
	q.Limit = s.cfg.MaxRows
	if v, ok := get("limit"); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return req, fmt.Errorf("bad limit %q: want a positive integer", ratelog.Clip(v))
		}
		q.Limit = min(n, s.cfg.MaxRows)
	}
	for _, v := range params["where"] {
		k, val, ok := strings.Cut(v, ":")
		if !ok || k == "" {
			return req, fmt.Errorf("bad where %q: want key:value (a group key, a colon, its value)", ratelog.Clip(v))
		}
		if q.Where == nil {
			q.Where = map[string][]string{}
		}
		q.Where[k] = append(q.Where[k], val)
	}
	if v, ok := get("order_by"); ok {
		var err error
		if q.OrderBy, q.Desc, err = parseOrderBy(v); err != nil {
			return req, err
		}
	}
	if v, ok := get("mode"); ok {
		if v != modeFresh && v != modeCommitted {
			return req, fmt.Errorf("bad mode %q: want fresh or committed", ratelog.Clip(v))
		}
		req.mode = v
	}
	return req, nil
}

// parseOrderBy reads AGG[:asc|desc]; without a direction it is desc, the
// largest first (a top-N with limit).
func parseOrderBy(v string) (agg string, desc bool, err error) {
	agg, desc = v, true
	if i := strings.LastIndexByte(v, ':'); i >= 0 {
		switch v[i+1:] {
		case "asc":
			agg, desc = v[:i], false
		case "desc":
			agg = v[:i]
		default:
			return "", false, fmt.Errorf("bad order_by %q: want an aggregate, then optionally :asc or :desc", ratelog.Clip(v))
		}
	}
	if agg == "" {
		return "", false, fmt.Errorf("bad order_by %q: no aggregate named", ratelog.Clip(v))
	}
	return agg, desc, nil
}

// parseWindow reads window=: all (merge the windows), or a length (1h,
// 7d) of whole seconds, as app windows are, that the app checks: one of
// its windows, or a multiple of one.
func parseWindow(v string, q *puma.Query) error {
	if v == "all" {
		q.AllWindows = true
		return nil
	}
	d, err := config.ParseDuration(v)
	if err != nil || d < time.Second || d%time.Second != 0 || d > maxWindow {
		return fmt.Errorf("bad window %q: want all, or a window length such as 1m, 1h, 1d", ratelog.Clip(v))
	}
	q.WindowMs = d.Milliseconds()
	return nil
}

// maxWindow bounds the window length a query may ask for.
const maxWindow = 100 * 366 * 24 * time.Hour

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
	if err != nil {
		return time.Time{}, bad
	}
	if f < -maxUnixSeconds || f > maxUnixSeconds {
		// Unix seconds all the same: "neither" misled the usual sender,
		// one of milliseconds (the time of a JSON line, a JavaScript
		// Date.now()).
		return time.Time{}, fmt.Errorf("%q is out of range for Unix seconds (at most %g either side of 0; milliseconds? divide by 1000)", ratelog.Clip(v), float64(maxUnixSeconds))
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
