// Package httpsrv is the HTTP server every Freeway HTTP port uses
// (serving's query API and the admin port of the other targets), hardened
// against clients that hold connections or trickle bytes: a read header
// timeout, a read timeout (a request's body too), a write timeout, an idle
// timeout for keep-alive connections, a header size bound, and a
// connection cap at which the longest-idle connection (keep-alive between
// requests, or silent since it connected) is closed to make room for a
// new client (internal/connlimit, which also rides out running short of
// file descriptors). net/http's own error lines (bad requests, TLS
// handshakes) are rate-limited and counted (freeway_http_errors_total).
// Every answer carries X-Content-Type-Options: nosniff, a
// Content-Security-Policy that allows the port's own scripts and styles
// only (no inline script) and no framing, X-Frame-Options: DENY and
// Cross-Origin-Resource-Policy: same-origin. Its requests' context says
// whether the port is bound to a loopback address (auth.ListenerContext),
// on which auth.Guard's Host rule depends.
//
// With Options.TLS it serves HTTPS (HTTP/1.1): the handshake runs under
// the read header timeout, and a plaintext request to it is answered
// 400 by net/http ("client sent an HTTP request to an HTTPS server").
//
// It holds no state across restarts.
package httpsrv

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/connlimit"
	"github.com/freeway-dev/freeway/internal/ratelog"
)

// Limits bound what one client may hold.
type Limits struct {
	// MaxConnections caps open connections.
	MaxConnections int
	// ReadHeaderTimeout bounds reading a request's headers.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included.
	ReadTimeout time.Duration
	// WriteTimeout bounds a request from the end of its headers to the
	// end of its answer: keep it above the longest handler (a query's
	// timeout).
	WriteTimeout time.Duration
	// IdleTimeout closes a keep-alive connection with no request.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's headers.
	MaxHeaderBytes int
}

// DefaultLimits returns the limits used where none is set.
func DefaultLimits() Limits {
	return Limits{
		MaxConnections:    1024,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxConnections <= 0 {
		l.MaxConnections = d.MaxConnections
	}
	if l.ReadHeaderTimeout <= 0 {
		l.ReadHeaderTimeout = d.ReadHeaderTimeout
	}
	if l.ReadTimeout <= 0 {
		l.ReadTimeout = d.ReadTimeout
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = d.WriteTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = d.IdleTimeout
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = d.MaxHeaderBytes
	}
	return l
}

// Options configure a Server.
type Options struct {
	// Name labels the listener in metrics and logs ("serving", "admin").
	Name   string
	Limits Limits
	Log    *slog.Logger
	// Metrics receives the listener metrics (nil: not exported).
	Metrics prometheus.Registerer
	// TLS, when set, makes the port serve HTTPS.
	TLS *tls.Config
}

// Server is an HTTP server on its own listener.
type Server struct {
	ln  net.Listener // a connlimit.Listener, or TLS over one
	srv *http.Server
	tls bool
}

// Listen binds addr and returns a server for h; Serve runs it.
func Listen(addr string, h http.Handler, opts Options) (*Server, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	lim := opts.Limits.withDefaults()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	cl := connlimit.New(ln, connlimit.Options{Name: opts.Name, MaxConns: lim.MaxConnections, Log: opts.Log, Metrics: connlimit.NewMetrics(opts.Metrics)})
	srv := &http.Server{
		Handler:           secure(h),
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		ReadTimeout:       lim.ReadTimeout,
		WriteTimeout:      lim.WriteTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    lim.MaxHeaderBytes,
		ConnState:         connState,
		// auth.Guard's rules depend on where the port is bound.
		BaseContext: func(net.Listener) context.Context { return auth.ListenerContext(context.Background(), ln.Addr()) },
		ErrorLog: log.New(&errorLog{name: opts.Name, warn: ratelog.New(opts.Log, time.Minute, 5),
			count: newErrorMetric(opts.Metrics)}, "", 0),
	}
	s := &Server{ln: cl, srv: srv}
	if opts.TLS != nil {
		s.ln, s.tls = tls.NewListener(cl, opts.TLS), true
	}
	return s, nil
}

// contentSecurityPolicy lets a page of the port load scripts, styles and
// data from its own origin only, never inline or evaluated script (so
// text from logs that some day reached the page as markup would not run),
// and no site frame it (its controls clickjacked).
const contentSecurityPolicy = "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// secure sets on every answer the headers that keep a browser from
// reading it as anything but its declared type (an error quoting a query
// parameter as HTML, say), from framing it, and from handing it to
// another site's page as a script or an image.
func secure(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Content-Security-Policy", contentSecurityPolicy)
		hd.Set("Cross-Origin-Resource-Policy", "same-origin")
		h.ServeHTTP(w, r)
	})
}

// connState tells the listener which connections are idle: between
// requests (and, from Accept, before the first).
func connState(c net.Conn, st http.ConnState) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	lc, ok := c.(*connlimit.Conn)
	if !ok {
		return
	}
	switch st {
	case http.StateActive:
		lc.SetIdle(false)
	case http.StateIdle:
		lc.SetIdle(true)
	}
}

// errorLog passes net/http's error lines (most of them about what a
// client sent) through a rate limiter.
type errorLog struct {
	name  string
	warn  *ratelog.Limiter
	count *prometheus.CounterVec
}

// newErrorMetric counts net/http's error lines, shared by the process's
// HTTP ports.
func newErrorMetric(reg prometheus.Registerer) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_http_errors_total",
		Help: "Errors net/http reported about connections, by listener and kind (tls_handshake: a failed TLS handshake, a missing or untrusted client certificate or a plaintext client, say; other)."},
		[]string{"listener", "kind"})
	if reg != nil {
		c = connlimit.Register(reg, c)
	}
	return c
}

func (e *errorLog) Write(p []byte) (int, error) {
	kind := "other"
	if bytes.Contains(p, []byte("TLS handshake error")) {
		kind = "tls_handshake"
	}
	e.count.WithLabelValues(e.name, kind).Inc()
	e.warn.Warn("http", "http server error", "listener", e.name, "err", ratelog.Clip(strings.TrimSpace(string(p))))
	return len(p), nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is the server's base URL: http://addr or https://addr.
func (s *Server) URL() string {
	if s.tls {
		return "https://" + s.Addr()
	}
	return "http://" + s.Addr()
}

// Listener is the server's listener (closing it makes Serve fail).
func (s *Server) Listener() net.Listener { return s.ln }

// Serve serves until ctx ends, then shuts down gracefully (requests in
// progress get 5s to finish), or until the listener fails, whose error
// it returns.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		_ = s.srv.Close() // the Serve error is the one to report
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		_ = s.srv.Close() // graceful shutdown ran out of time: cut what is left
	}
	<-errc //nolint:errcheck // http.ErrServerClosed, after Shutdown
	return nil
}
