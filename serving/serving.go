package serving

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/httpsrv"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/puma"
	"github.com/freeway-dev/freeway/thrift/gen/freeway"
)

// Source is what queries are answered from: a Puma node (memory) or
// puma.Committed (the store).
type Source interface {
	Apps() []*apps.App
	Query(ctx context.Context, q puma.Query) (*puma.Result, error)
}

// Config configures the query endpoints.
type Config struct {
	// Listen is the HTTP address (API, metrics, health, web page).
	Listen string `yaml:"listen"`
	// ThriftListen is the Thrift query service address; "" disables it.
	ThriftListen string `yaml:"thrift_listen"`
	// Pprof exposes /debug/pprof/ on the HTTP address.
	Pprof bool `yaml:"pprof"`
	// QueryTimeout bounds one query.
	QueryTimeout config.Duration `yaml:"query_timeout"`
	// MaxRows bounds the rows of one answer (a query's limit may lower it).
	MaxRows int `yaml:"max_rows"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Listen:       "127.0.0.1:8080",
		ThriftListen: "127.0.0.1:1465",
		QueryTimeout: config.Duration(30 * time.Second),
		MaxRows:      100000,
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	switch {
	case c.Listen == "":
		return config.Errorf("$.serving.listen", "must not be empty")
	case c.QueryTimeout.D() <= 0:
		return config.Errorf("$.serving.query_timeout", "must be positive")
	case c.MaxRows <= 0:
		return config.Errorf("$.serving.max_rows", "must be positive")
	}
	return nil
}

// Deps are what serving needs from the wiring.
type Deps struct {
	Source Source
	// Ready reports readiness for /readyz (a Puma node's Readiness); nil
	// means always ready.
	Ready    func() puma.Readiness
	Gatherer prometheus.Gatherer
	Metrics  prometheus.Registerer
	Log      *slog.Logger
	Now      func() time.Time
	// Budget is the process's in-flight byte budget for Thrift calls
	// (nil: one of the Thrift port's own).
	Budget *thriftsrv.Budget
	// HTTP bounds the HTTP port (zero fields: httpsrv's defaults, with a
	// write timeout above the query timeout).
	HTTP httpsrv.Limits
	// Auth guards the endpoints with the process's tokens (nil: none
	// configured): /api/v1/*, the web page and the Thrift query port
	// need a query token, /metrics, /debug/pprof/ and POST /admin/* the
	// admin token; /healthz and /readyz stay open for probes.
	Auth *auth.Guard
	// TLS, when set, makes the HTTP and Thrift ports speak TLS. It is
	// also what a fan-out to other Puma nodes (not there yet) is to dial
	// them with: TLS.ClientConfig(addr).
	TLS *auth.TLS
	// Reload and Shutdown are what POST /admin/reload and /admin/shutdown
	// do (nil: answered 501); they must return at once.
	Reload, Shutdown func()
}

// Server serves queries.
type Server struct {
	cfg    Config
	deps   Deps
	log    *slog.Logger
	ln     net.Listener
	thrift *thriftsrv.Server
	http   *httpsrv.Server
	reqs   *prometheus.CounterVec
	lat    *prometheus.HistogramVec
}

// New binds the listeners; Run serves.
func New(cfg Config, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:  cfg,
		deps: deps,
		log:  deps.Log.With("component", "serving"),
		reqs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_serving_requests_total", Help: "HTTP requests, by handler and status code."}, []string{"handler", "code"}),
		lat:  prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "freeway_serving_request_seconds", Help: "HTTP request latency, by handler.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18)}, []string{"handler"}),
	}
	if deps.Metrics != nil {
		deps.Metrics.MustRegister(s.reqs, s.lat)
	}
	hl := deps.HTTP
	if hl.WriteTimeout <= 0 {
		// A query may run for QueryTimeout; its answer must still go out.
		hl.WriteTimeout = cfg.QueryTimeout.D() + 30*time.Second
	}
	hs, err := httpsrv.Listen(cfg.Listen, s.Handler(), httpsrv.Options{Name: "serving", Limits: hl, Log: s.log, Metrics: deps.Metrics,
		TLS: deps.TLS.ServerConfig()})
	if err != nil {
		return nil, err
	}
	s.http, s.ln = hs, hs.Listener()
	if cfg.ThriftListen != "" {
		limits := thriftsrv.Limits{MaxCallBytes: 1 << 20, MaxConnections: 256}
		t, err := thriftsrv.Listen(cfg.ThriftListen, freeway.NewQueryProcessor(&thriftHandler{s}), limits, s.log,
			thriftsrv.WithName("serving"), thriftsrv.WithBudget(deps.Budget), thriftsrv.WithMetrics(deps.Metrics),
			thriftsrv.WithTLS(deps.TLS.ServerConfig()))
		if err != nil {
			s.ln.Close()
			return nil, err
		}
		s.thrift = t
	}
	return s, nil
}

// Addr is the bound HTTP address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is the base URL of the HTTP port (https:// with TLS).
func (s *Server) URL() string { return s.http.URL() }

// ThriftAddr is the bound Thrift address, or "".
func (s *Server) ThriftAddr() string {
	if s.thrift == nil {
		return ""
	}
	return s.thrift.Addr()
}

// Run serves until ctx ends or a listener fails.
func (s *Server) Run(ctx context.Context) error {
	s.log.Info("serving queries", "http", s.URL(), "thrift", s.ThriftAddr(), "tls", s.deps.TLS != nil,
		"query_tokens", s.deps.Auth.QueryTokens(), "admin_token", s.deps.Auth.AdminToken())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() { errc <- s.http.Serve(ctx) }()
	n := 1
	if s.thrift != nil {
		n++
		go func() { errc <- s.thrift.Serve(ctx) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		n--
	}
	cancel() // stops the other server too when one failed first
	for ; n > 0; n-- {
		if e := <-errc; err == nil {
			err = e
		}
	}
	return err
}

// Handler is the HTTP handler (also usable without Run, in tests).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	g := s.deps.Auth
	query := func(h http.HandlerFunc) http.HandlerFunc { return g.Query(h).ServeHTTP }
	mux.Handle("GET /api/v1/apps", s.instrument("apps", query(s.handleApps)))
	mux.Handle("GET /api/v1/query", s.instrument("query", query(s.handleQuery)))
	mux.Handle("GET /healthz", s.instrument("healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	}))
	mux.Handle("GET /readyz", s.instrument("readyz", ReadyzHandler(s.deps.Ready)))
	if s.deps.Gatherer != nil {
		mux.Handle("GET /metrics", g.Admin(promhttp.HandlerFor(s.deps.Gatherer, promhttp.HandlerOpts{})))
	}
	if s.cfg.Pprof {
		mux.Handle("/debug/pprof/", g.Admin(http.HandlerFunc(pprof.Index)))
		mux.Handle("/debug/pprof/cmdline", g.Admin(http.HandlerFunc(pprof.Cmdline)))
		mux.Handle("/debug/pprof/profile", g.Admin(http.HandlerFunc(pprof.Profile)))
		mux.Handle("/debug/pprof/symbol", g.Admin(http.HandlerFunc(pprof.Symbol)))
		mux.Handle("/debug/pprof/trace", g.Admin(http.HandlerFunc(pprof.Trace)))
	}
	mux.Handle("POST /admin/reload", s.instrument("admin", g.Control(g.ControlHandler("reload", s.deps.Reload)).ServeHTTP))
	mux.Handle("POST /admin/shutdown", s.instrument("admin", g.Control(g.ControlHandler("shutdown", s.deps.Shutdown)).ServeHTTP))
	mux.Handle("GET /{$}", s.instrument("index", query(s.handleIndex)))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/admin/reload", "/admin/shutdown":
			w.Header().Set("Allow", "POST")
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s (use POST)", r.Method, r.URL.Path))
			return
		case "/api/v1/apps", "/api/v1/query", "/healthz", "/readyz", "/metrics", "/":
			if r.Method == http.MethodGet || r.Method == http.MethodHead {
				break // not served here (/metrics without a gatherer)
			}
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s (use GET)", r.Method, r.URL.Path))
			return
		}
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint %s %s (see GET /api/v1/apps and GET /api/v1/query)", r.Method, r.URL.Path))
	})
	return mux
}

// ReadyzHandler answers /readyz from ready (nil: always ready): 200
// "ready", or 503 with the reason and one line per shard in the way
// (recovering, failed with its error, held by nobody). The serving
// process and the admin listener of the other targets both answer with
// it.
func ReadyzHandler(ready func() puma.Readiness) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rd := puma.Readiness{Ready: true}
		if ready != nil {
			rd = ready()
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if !rd.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		io.WriteString(w, rd.String())
	}
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

func (s *Server) instrument(name string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h(rec, r)
		s.reqs.WithLabelValues(name, strconv.Itoa(rec.code)).Inc()
		s.lat.WithLabelValues(name).Observe(time.Since(start).Seconds())
	})
}

// writeJSON encodes v before writing anything, so that a value JSON
// cannot carry is a 500 rather than a 200 with a cut body.
func writeJSON(w http.ResponseWriter, code int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		buf.Reset()
		code = http.StatusInternalServerError
		enc.Encode(map[string]string{"error": "encode answer: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// AppJSON describes an app in /api/v1/apps.
type AppJSON struct {
	Name          string          `json:"name"`
	Category      string          `json:"category"`
	Format        string          `json:"format"`
	Window        string          `json:"window"`
	WindowSeconds int64           `json:"window_seconds"`
	GroupBy       []string        `json:"group_by"`
	Where         string          `json:"where,omitempty"`
	Aggregates    []AggregateJSON `json:"aggregates"`
	// Dropped and Rejected are what the app did not aggregate on this
	// node since its shards started here: records by reason, and the last
	// few lines of each reason. Only a Puma node knows them (not the
	// store): absent when serving answers from the store.
	Dropped  map[string]uint64 `json:"dropped,omitempty"`
	Rejected []RejectedJSON    `json:"rejected,omitempty"`
}

// RejectedJSON is a line an app did not aggregate.
type RejectedJSON struct {
	Reason string `json:"reason"`
	Error  string `json:"error"`
	Line   string `json:"line"` // clipped
	Bucket int    `json:"bucket"`
	At     string `json:"at"` // when Puma read it, RFC 3339
}

// rejectionSource is a source that keeps what its apps did not aggregate:
// a Puma node.
type rejectionSource interface {
	Rejections(app string) (puma.Rejections, bool)
}

// AggregateJSON describes one aggregate.
type AggregateJSON struct {
	Name  string `json:"name"`
	Fn    string `json:"fn"`
	Field string `json:"field,omitempty"`
}

func describe(a *apps.App) AppJSON {
	j := AppJSON{
		Name: a.Name(), Category: a.Spec.Category, Format: a.Spec.Format,
		Window: a.Spec.Window.String(), WindowSeconds: a.WindowMs / 1000,
		GroupBy: append([]string{}, a.Spec.GroupBy...), Where: a.Spec.Where,
	}
	for _, ag := range a.Aggs {
		j.Aggregates = append(j.Aggregates, AggregateJSON{Name: ag.Name, Fn: ag.Fn.Name, Field: ag.Field})
	}
	return j
}

func (s *Server) handleApps(w http.ResponseWriter, r *http.Request) {
	var out []AppJSON
	rs, _ := s.deps.Source.(rejectionSource)
	for _, a := range s.deps.Source.Apps() {
		j := describe(a)
		if rs != nil {
			if rej, ok := rs.Rejections(a.Name()); ok {
				j.Dropped = rej.Dropped
				for _, x := range rej.Samples {
					j.Rejected = append(j.Rejected, RejectedJSON{Reason: x.Reason, Error: x.Error, Line: x.Line, Bucket: x.Bucket, At: x.At.UTC().Format(time.RFC3339Nano)})
				}
			}
		}
		out = append(out, j)
	}
	if out == nil {
		out = []AppJSON{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"apps": out})
}

// RowJSON is one row of /api/v1/query.
type RowJSON struct {
	WindowStart string            `json:"window_start"`
	WindowEnd   string            `json:"window_end"`
	Key         map[string]string `json:"key"`
	Values      map[string]any    `json:"values"`
}

// ResultJSON is the answer of /api/v1/query. Partial and MissingShards
// are set only when shards of the app's category are missing from the
// answer, so that a complete answer keeps its shape.
type ResultJSON struct {
	App           string             `json:"app"`
	Rows          []RowJSON          `json:"rows"`
	Truncated     bool               `json:"truncated,omitempty"`
	Partial       bool               `json:"partial,omitempty"`
	MissingShards []MissingShardJSON `json:"missing_shards,omitempty"`
}

// MissingShardJSON is a shard whose data an answer lacks.
type MissingShardJSON struct {
	Category string `json:"category"`
	Bucket   int    `json:"bucket"`
	// State is "recovering", "failed" or "elsewhere".
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

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
			return q, fmt.Errorf("bad to: %v", err)
		}
		q.ToMs = t.UnixMilli()
	}
	q.FromMs = q.ToMs - time.Hour.Milliseconds()
	if v, ok := get("from"); ok {
		t, err := ParseTime(v)
		if err != nil {
			return q, fmt.Errorf("bad from: %v", err)
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

func (s *Server) query(ctx context.Context, q puma.Query) (*puma.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout.D())
	defer cancel()
	return s.deps.Source.Query(ctx, q)
}

func (s *Server) handleQuery(w http.ResponseWriter, r *http.Request) {
	// Not r.URL.Query(): it drops the pairs that do not parse (a bad
	// %-escape, a ';'), and the query would run without them.
	params, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad query string: "+ratelog.Clip(err.Error()))
		return
	}
	q, err := s.parseQuery(params)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	res, err := s.query(r.Context(), q)
	if err != nil {
		var bad *puma.BadQueryError
		if errors.As(err, &bad) {
			writeError(w, http.StatusBadRequest, bad.Msg)
			return
		}
		s.log.Error("query failed", "app", q.App, "err", err)
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := ResultJSON{App: res.App, Rows: make([]RowJSON, 0, len(res.Rows)), Truncated: res.Truncated, Partial: res.Partial()}
	for _, m := range res.Missing {
		out.MissingShards = append(out.MissingShards, MissingShardJSON{Category: m.Category, Bucket: m.Bucket, State: string(m.State), Error: m.Error})
	}
	for _, row := range res.Rows {
		out.Rows = append(out.Rows, RowJSON{
			WindowStart: time.UnixMilli(row.WindowStartMs).UTC().Format(time.RFC3339),
			WindowEnd:   time.UnixMilli(row.WindowEndMs).UTC().Format(time.RFC3339),
			Key:         row.Key,
			Values:      row.Values,
		})
	}
	writeJSON(w, http.StatusOK, out)
}

// thriftHandler serves the Query service of freeway.thrift.
type thriftHandler struct{ s *Server }

// Codes of QueryError, as the HTTP API's statuses.
var (
	codeBadQuery     = thrift.Int32Ptr(http.StatusBadRequest)
	codeUnauthorized = thrift.Int32Ptr(http.StatusUnauthorized)
	codeInternal     = thrift.Int32Ptr(http.StatusInternalServerError)
)

// tokenKey keeps the token a connection authenticated with.
type tokenKey struct{}

// Authenticate gives the connection a query token, checked again at each
// later call (so a token removed from the file stops working). Without
// query tokens configured it is accepted and ignored.
func (h *thriftHandler) Authenticate(ctx context.Context, token string) error {
	if !h.s.deps.Auth.QueryTokens() {
		return nil
	}
	if err := h.s.deps.Auth.CheckQuery(auth.EndpointThriftQuery, token, peer(ctx)); err != nil {
		thriftsrv.SetConnValue(ctx, tokenKey{}, nil)
		return &freeway.QueryError{Message: err.Error(), Code: codeUnauthorized}
	}
	thriftsrv.SetConnValue(ctx, tokenKey{}, token)
	return nil
}

// authorize checks the connection's token, when tokens are configured.
func (h *thriftHandler) authorize(ctx context.Context) error {
	if !h.s.deps.Auth.QueryTokens() {
		return nil
	}
	token, _ := thriftsrv.ConnValue(ctx, tokenKey{}).(string)
	if err := h.s.deps.Auth.CheckQuery(auth.EndpointThriftQuery, token, peer(ctx)); err != nil {
		return &freeway.QueryError{Message: err.Error(), Code: codeUnauthorized}
	}
	return nil
}

func peer(ctx context.Context) string {
	if a, ok := thriftsrv.Peer(ctx); ok {
		return a.String()
	}
	return "unknown"
}

func (h *thriftHandler) Apps(ctx context.Context) ([]*freeway.AppInfo, error) {
	if err := h.authorize(ctx); err != nil {
		return nil, err
	}
	var out []*freeway.AppInfo
	for _, a := range h.s.deps.Source.Apps() {
		info := &freeway.AppInfo{Name: a.Name(), Category: a.Spec.Category, WindowSeconds: a.WindowMs / 1000, GroupBy: append([]string{}, a.Spec.GroupBy...)}
		for _, ag := range a.Aggs {
			agg := &freeway.Aggregate{Name: ag.Name, Fn: ag.Fn.Name}
			if ag.Field != "" {
				f := ag.Field
				agg.Field = &f
			}
			info.Aggregates = append(info.Aggregates, agg)
		}
		out = append(out, info)
	}
	return out, nil
}

func (h *thriftHandler) Query(ctx context.Context, req *freeway.QueryRequest) (*freeway.QueryResult_, error) {
	if err := h.authorize(ctx); err != nil {
		return nil, err
	}
	if req == nil {
		return nil, &freeway.QueryError{Message: "missing request", Code: codeBadQuery}
	}
	for _, t := range []int64{req.FromUnix, req.ToUnix} {
		if t < -maxUnixSeconds || t > maxUnixSeconds {
			return nil, &freeway.QueryError{Message: fmt.Sprintf("time %d is out of range (Unix seconds within ±%d)", t, int64(maxUnixSeconds)), Code: codeBadQuery}
		}
	}
	if req.FromUnix >= req.ToUnix {
		return nil, &freeway.QueryError{Message: "from must be before to", Code: codeBadQuery}
	}
	q := puma.Query{App: req.App, FromMs: req.FromUnix * 1000, ToMs: req.ToUnix * 1000, GroupBy: req.GroupBy, AllWindows: req.AllWindows, Limit: int(req.Limit)}
	if q.Limit <= 0 || q.Limit > h.s.cfg.MaxRows {
		q.Limit = h.s.cfg.MaxRows
	}
	res, err := h.s.query(ctx, q)
	if err != nil {
		var bad *puma.BadQueryError
		if errors.As(err, &bad) {
			return nil, &freeway.QueryError{Message: bad.Msg, Code: codeBadQuery}
		}
		return nil, &freeway.QueryError{Message: "internal error: " + err.Error(), Code: codeInternal}
	}
	out := &freeway.QueryResult_{App: res.App, Rows: make([]*freeway.Row, 0, len(res.Rows))}
	// Set only when true, as the HTTP answer omits them when false.
	if res.Truncated {
		out.Truncated = thrift.BoolPtr(true)
	}
	if res.Partial() {
		out.Partial = thrift.BoolPtr(true)
		for _, m := range res.Missing {
			ms := &freeway.MissingShard{Category: m.Category, Bucket: int32(m.Bucket), State: string(m.State)}
			if m.Error != "" {
				ms.Error = thrift.StringPtr(m.Error)
			}
			out.MissingShards = append(out.MissingShards, ms)
		}
	}
	for _, row := range res.Rows {
		vals := map[string]float64{}
		for k, v := range row.Values {
			if f, ok := v.(float64); ok {
				vals[k] = f
			}
		}
		out.Rows = append(out.Rows, &freeway.Row{WindowStartUnix: row.WindowStartMs / 1000, WindowEndUnix: row.WindowEndMs / 1000, Key: row.Key, Values: vals})
	}
	return out, nil
}
