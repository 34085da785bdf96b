package serving

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/httpsrv"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/puma"
	"github.com/freeway-dev/freeway/thrift/gen/freeway"
)

// Source is what queries are answered from: a Puma node (memory: mode
// fresh) or puma.Committed (the store: mode committed).
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
	// FanoutTimeout bounds a Puma node's answer to a standalone serving
	// process's fan-out; a shard whose node does not answer in time is
	// answered from its committed state (stale_shards). 0: 2s.
	FanoutTimeout config.Duration `yaml:"fanout_timeout"`
	// FanoutMaxBytes bounds a Puma node's answer to the fan-out (its
	// partial state as JSON); a query whose partial is larger is refused
	// (422, puma.TooLargeError). 0: DefaultFanoutMaxBytes.
	FanoutMaxBytes config.ByteSize `yaml:"fanout_max_bytes"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Listen:         "127.0.0.1:8080",
		ThriftListen:   "127.0.0.1:1465",
		QueryTimeout:   config.Duration(30 * time.Second),
		MaxRows:        100000,
		FanoutTimeout:  config.Duration(DefaultFanoutTimeout),
		FanoutMaxBytes: config.ByteSize(DefaultFanoutMaxBytes),
	}
}

// Validate checks the configuration; errors are config.FieldErrors at
// paths relative to serving's section (the wiring places them under
// "serving", config.Under).
func (c *Config) Validate() error {
	switch {
	case c.Listen == "":
		return config.Errorf("listen", "must not be empty")
	case c.QueryTimeout.D() <= 0:
		return config.Errorf("query_timeout", "must be positive")
	case c.MaxRows <= 0:
		return config.Errorf("max_rows", "must be positive")
	case c.FanoutTimeout.D() < 0:
		return config.Errorf("fanout_timeout", "must not be negative")
	case c.FanoutMaxBytes < 0:
		return config.Errorf("fanout_max_bytes", "must not be negative")
	}
	return nil
}

// Deps are what serving needs from the wiring: the common ones, and
// where answers come from. Of Shared: TLS makes the HTTP and Thrift ports
// speak TLS (a Fanout source dials the Puma nodes with it too); Auth guards the endpoints
// with the process's tokens (nil: none configured): /api/v1/*, the web
// page and the Thrift query port need a query token, /metrics,
// /debug/pprof/ and POST /admin/* the admin token, /healthz and /readyz
// stay open for probes; Budget bounds the Thrift port's calls with the
// process's others; Control.Reinitialize and Control.Shutdown are what
// POST /admin/reload and /admin/shutdown do (nil: answered 501).
type Deps struct {
	component.Common
	// Source answers queries by default: a Puma node (mode fresh, from
	// memory), a Fanout to the Puma nodes (mode fresh), or, in a serving
	// process without either, puma.Committed (mode committed, from the
	// store; mode=fresh is then refused).
	Source Source
	// Committed answers mode=committed beside a Puma node: puma.Committed
	// over the node's store. Nil when Source is the store already, or
	// when there is none (mode=committed is then refused).
	Committed Source
	// Components names the components of this process, for
	// /api/v1/status (nil: serving alone).
	Components []string
	// Status reports the other components' state in /api/v1/status, each
	// under its name (the agent's queue, the writer's buckets, the
	// copier's lag).
	Status []StatusProvider
	// Ready reports readiness for /readyz (a Puma node's Readiness); nil
	// means always ready.
	Ready func() puma.Readiness
	// Gatherer is what /metrics serves (nil: no /metrics).
	Gatherer prometheus.Gatherer
	// HTTP bounds the HTTP port (zero fields: httpsrv's defaults, with a
	// write timeout above the query timeout).
	HTTP httpsrv.Limits
}

// StatusProvider reports one component's state for /api/v1/status: what
// Report returns is encoded as JSON under Name. Report is called for
// every request of the status (keep it cheap) and must be safe to call
// concurrently.
type StatusProvider struct {
	Name   string
	Report func(ctx context.Context) any
}

// Server serves queries.
type Server struct {
	cfg  Config
	deps Deps
	// fresh and store answer the two modes (nil: not offered here);
	// defaultMode is the mode of a query that names none.
	fresh, store Source
	defaultMode  string
	log          *slog.Logger
	ln           net.Listener
	thrift       *thriftsrv.Server
	http         *httpsrv.Server
	reqs         *prometheus.CounterVec
	lat          *prometheus.HistogramVec
}

// New binds the listeners; Run serves.
func New(cfg Config, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	for _, p := range deps.Status {
		if p.Name == "" || p.Report == nil || slices.Contains(statusFields, p.Name) {
			return nil, fmt.Errorf("start serving: status provider %q: needs a name that is not one of %s, and a Report", p.Name, strings.Join(statusFields, ", "))
		}
	}
	deps.Common = deps.Defaults()
	s := &Server{
		cfg:  cfg,
		deps: deps,
		log:  deps.Logger("serving"),
		reqs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_serving_requests_total", Help: "HTTP requests, by handler and status code."}, []string{"handler", "code"}),
		lat:  prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "freeway_serving_request_seconds", Help: "HTTP request latency, by handler.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18)}, []string{"handler"}),
	}
	if deps.Metrics != nil {
		deps.Metrics.MustRegister(s.reqs, s.lat)
	}
	if _, isStore := deps.Source.(*puma.Committed); isStore {
		s.store = deps.Source
	} else {
		s.fresh = deps.Source
	}
	if deps.Committed != nil {
		s.store = deps.Committed
	}
	s.defaultMode = modeFresh
	if s.fresh == nil {
		s.defaultMode = modeCommitted
	}
	hl := deps.HTTP
	if hl.WriteTimeout <= 0 {
		// A query may run for QueryTimeout; its answer must still go out.
		hl.WriteTimeout = cfg.QueryTimeout.D() + 30*time.Second
	}
	h, tc := deps.TLS.HTTPServer(s.Handler())
	hs, err := httpsrv.Listen(cfg.Listen, h, httpsrv.Options{Name: "serving", Limits: hl, Log: s.log, Metrics: deps.Metrics, TLS: tc})
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
			_ = s.ln.Close() // the thrift error is the one to report
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

// query answers q in mode ("": the default), and returns the mode it
// answered in. A mode this process does not offer is a BadQueryError.
func (s *Server) query(ctx context.Context, q puma.Query, mode string) (*puma.Result, string, error) {
	if mode == "" {
		mode = s.defaultMode
	}
	src := s.fresh
	if mode == modeCommitted {
		src = s.store
	}
	if src == nil {
		if mode == modeFresh {
			return nil, mode, &puma.BadQueryError{Msg: "mode=fresh: this serving process has no Puma node; it answers from the store only (mode=committed)"}
		}
		return nil, mode, &puma.BadQueryError{Msg: "mode=committed: this serving process has no store reader; it answers from memory only (mode=fresh)"}
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout.D())
	defer cancel()
	res, err := src.Query(ctx, q)
	return res, mode, err
}
