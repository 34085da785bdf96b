package serving

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/store/boltstore"
	"github.com/freeway-dev/freeway/puma"
	"github.com/freeway-dev/freeway/thrift/gen/freeway"
)

// maxErrorBytes bounds an error answer to bad parameters: its own words
// and the app's, and a clipped part (ratelog.MaxClip bytes and a note of
// the length) of at most two of the parameters, JSON-escaped.
const maxErrorBytes = 600 + 2*6*ratelog.MaxClip

// fuzzServer is a serving process answering from the store (puma's
// committed state, empty), so that queries go through puma's own
// checks of the app, the range and the grouping.
func fuzzServer(f *testing.F) *Server {
	st, err := boltstore.Open(filepath.Join(f.TempDir(), "store.db"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	list := testApps(f)
	src := puma.NewCommitted(st, "puma", list, func(string) int { return 2 })
	cfg := DefaultConfig()
	cfg.Listen, cfg.ThriftListen, cfg.MaxRows = "127.0.0.1:0", "", 1000
	reg := prometheus.NewRegistry()
	s, err := New(cfg, Deps{Source: src, Gatherer: reg, Common: component.Common{Log: testLog(), Now: func() time.Time { return now }, Metrics: reg}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.ln.Close() })
	return s
}

// FuzzQueryHTTP sends GET /api/v1/query with an arbitrary query string.
// The answer is JSON, 200 or 400, never a 500 or a panic; a 400 says why
// without echoing more than a clipped part of the input; a query string
// that does not parse as one (a bad %-escape, a ';') is a 400, not
// answered without the parameters that did not parse.
func FuzzQueryHTTP(f *testing.F) {
	for _, q := range []string{
		"app=orders", "app=orders&from=1700000000&to=1700000060.25&group_by=kind&window=all&limit=7",
		"app=orders&from=2024-05-06T06:00:00Z", "app=orders&group_by=", "app=web_hits&group_by=kind",
		"app=orders&group_by=kind,kind", "app=orders&limit=%zz", "app=orders;limit=1", "app=nope", "app=%00",
		"app=orders&from=1e300", "app=orders&from=NaN", "app=orders&to=-99999999999", "app=orders&color=red",
		"app=" + strings.Repeat("x", 5000), "app=orders&group_by=" + strings.Repeat("k,", 3000),
		"app=orders&from=" + strings.Repeat("9", 400), strings.Repeat("&", 100) + "app=orders",
		"app=orders&window=" + strings.Repeat("all", 200), "%zz", "app=orders&app=orders", "=&=",
		"app=orders&where=region:eu&where=kind:book&where=region:us", "app=orders&where=city:x", "app=orders&where=:",
		"app=orders&where=region", "app=orders&group_by=kind&window=all&order_by=total:asc&limit=2",
		"app=orders&order_by=nope:desc", "app=orders&order_by=:", "app=orders&mode=fresh", "app=orders&mode=committed",
		"app=orders&mode=" + strings.Repeat("z", 300), "app=orders&where=" + strings.Repeat("k:", 2000),
	} {
		f.Add(q)
	}
	s := fuzzServer(f)
	h := s.Handler()
	f.Fuzz(func(t *testing.T, raw string) {
		r := httptest.NewRequest(http.MethodGet, "/api/v1/query", nil)
		r.URL.RawQuery = raw
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		msg := checkAnswer(t, ratelog.Clip(raw), w)
		if _, err := url.ParseQuery(raw); err != nil && w.Code != http.StatusBadRequest {
			t.Fatalf("%q does not parse (%v) but was answered %d: %.300s", ratelog.Clip(raw), err, w.Code, w.Body)
		}
		if w.Code == http.StatusBadRequest && len(msg) > maxErrorBytes {
			t.Fatalf("%q: error of %d bytes echoes the input: %.300s...", ratelog.Clip(raw), len(msg), msg)
		}
	})
}

// checkAnswer checks an answer is JSON, 200 or 400 with an error, and
// returns the error.
func checkAnswer(t *testing.T, what string, w *httptest.ResponseRecorder) string {
	t.Helper()
	if w.Code != http.StatusOK && w.Code != http.StatusBadRequest {
		t.Fatalf("%q: status %d: %.500s", what, w.Code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%q: content type %q", what, ct)
	}
	var m map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
		t.Fatalf("%q: body is not JSON (%v): %.500s", what, err, w.Body)
	}
	if w.Code == http.StatusOK {
		if _, ok := m["rows"].([]any); !ok {
			t.Fatalf("%q: 200 without rows: %.500s", what, w.Body)
		}
		return ""
	}
	msg, _ := m["error"].(string)
	if msg == "" {
		t.Fatalf("%q: 400 without an error: %.500s", what, w.Body)
	}
	return msg
}

// FuzzQueryThrift asks the Thrift Query service with an arbitrary
// request. It answers or refuses with a QueryError of code 400 (never
// another error, never an internal one for a request it could check), of bounded
// length, and it agrees with the same query over HTTP: answered there
// (200) exactly when answered here.
func FuzzQueryThrift(f *testing.F) {
	f.Add("orders", int64(1700000000), int64(1700000060), "kind", true, false, int32(7))
	f.Add("orders", int64(1700000000), int64(1700000060), "", true, true, int32(0))
	f.Add("orders", int64(1700000000), int64(1700000060), "", false, false, int32(-1))
	f.Add("orders", int64(1700000000), int64(1700000060), "kind,kind", true, false, int32(1))
	f.Add("orders", int64(1700000000), int64(1700000060), "city", true, false, int32(1))
	f.Add("web_hits", int64(-100000000000), int64(100000000000), "", false, true, int32(2147483647))
	f.Add("orders", int64(-100000000001), int64(0), "", false, false, int32(0))
	f.Add("orders", int64(9223372036854775807), int64(-9223372036854775808), "", false, false, int32(0))
	f.Add("orders", int64(5), int64(5), "", false, false, int32(0))
	f.Add("", int64(1), int64(2), "", false, false, int32(0))
	f.Add(strings.Repeat("x", 5000), int64(1), int64(2), strings.Repeat("k,", 2000), true, false, int32(0))
	f.Add("orders\x00", int64(1), int64(2), ",", true, false, int32(0))
	s := fuzzServer(f)
	h := &thriftHandler{s}
	hh := s.Handler()
	f.Fuzz(func(t *testing.T, app string, from, to int64, groupBy string, hasGroupBy, all bool, limit int32) {
		req := &freeway.QueryRequest{App: app, FromUnix: from, ToUnix: to, AllWindows: all, Limit: limit}
		if hasGroupBy {
			req.GroupBy = []string{}
			if groupBy != "" {
				req.GroupBy = strings.Split(groupBy, ",")
			}
		}
		what := ratelog.Clip(fmt.Sprintf("%+v", req))
		res, err := h.Query(context.Background(), req)
		if err != nil {
			var qe *freeway.QueryError
			if !errors.As(err, &qe) {
				t.Fatalf("%s: error %T: %v", what, err, err)
			}
			if strings.HasPrefix(qe.Message, "internal error") || qe.GetCode() != http.StatusBadRequest {
				t.Fatalf("%s: code %d: %v", what, qe.GetCode(), qe.Message)
			}
			if len(qe.Message) > maxErrorBytes {
				t.Fatalf("%s: error of %d bytes echoes the request: %.300s...", what, len(qe.Message), qe.Message)
			}
		} else if res.App != app {
			t.Fatalf("%s: answer for app %q", what, res.App)
		}

		// The same over HTTP. A limit of 0 or less is the default there
		// by leaving it out.
		v := url.Values{"app": {app}, "from": {strconv.FormatInt(from, 10)}, "to": {strconv.FormatInt(to, 10)}}
		if hasGroupBy {
			v.Set("group_by", groupBy)
		}
		if all {
			v.Set("window", "all")
		}
		if limit > 0 {
			v.Set("limit", strconv.Itoa(int(limit)))
		}
		r := httptest.NewRequest(http.MethodGet, "/api/v1/query", nil)
		r.URL.RawQuery = v.Encode()
		w := httptest.NewRecorder()
		hh.ServeHTTP(w, r)
		checkAnswer(t, ratelog.Clip(r.URL.RawQuery), w)
		if (err == nil) != (w.Code == http.StatusOK) {
			t.Fatalf("%s: thrift says %v, HTTP %d %.300s", what, err, w.Code, w.Body)
		}
	})
}
