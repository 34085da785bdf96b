// Package admin is the one implementation of the operator endpoints of
// Freeway's HTTP ports: GET /healthz ("ok"), GET /readyz ("ready", or 503
// with the reason), GET /metrics (Prometheus), POST /admin/reload and
// /admin/shutdown, and /debug/pprof/ when asked for. The serving port
// mounts them beside the query API; a process without serving answers
// them on its admin listener (internal/freeway). Both answer a wrong
// method or an unknown path with a JSON error (Fallback).
//
// Security: /metrics, /debug/pprof/ and the control endpoints take the
// admin token when one is configured (auth.Guard); without one the
// control endpoints answer the local host only, and on a port bound to a
// loopback address /metrics and /debug/pprof/ only requests for an IP
// address, localhost or a name of auth.allowed_hosts. /healthz and /readyz are
// always open, for probes; with tls.client_auth they are the only paths
// a client without a certificate gets (auth.TLS.HTTPServer).
//
// It keeps no state: what it answers comes from its Routes.
package admin

import (
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/httpsrv"
)

// Routes are the operator endpoints of one HTTP port.
type Routes struct {
	// Gatherer is what /metrics serves (nil: no /metrics).
	Gatherer prometheus.Gatherer
	// Ready reports readiness and its text for /readyz (a Puma node's
	// Readiness); nil means always ready.
	Ready func() (ready bool, text string)
	// Auth applies the process's tokens (nil: none configured).
	Auth *auth.Guard
	// Control's Reinitialize and Shutdown are what POST /admin/reload and
	// /admin/shutdown do (nil: answered 501); a reload CheckReload
	// refuses is answered 422 with its error.
	Control component.Control
	// Pprof mounts /debug/pprof/.
	Pprof bool
	// Wrap, when set, wraps the handlers of /healthz, /readyz and
	// /admin/* by name ("healthz", "readyz", "admin"): the serving port
	// counts its requests with it.
	Wrap func(name string, h http.HandlerFunc) http.Handler
}

// Mux is where Mount registers the routes: an *http.ServeMux, or a
// wrapper of one that records the patterns (serving checks its OpenAPI
// document against them).
type Mux interface {
	Handle(pattern string, h http.Handler)
}

// Mount registers the routes on mux.
func (rt Routes) Mount(mux Mux) {
	g := rt.Auth
	wrap := rt.Wrap
	if wrap == nil {
		wrap = func(_ string, h http.HandlerFunc) http.Handler { return h }
	}
	mux.Handle("GET /healthz", wrap("healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok\n") // a client gone mid-answer: nothing to do
	}))
	mux.Handle("GET /readyz", wrap("readyz", rt.readyz))
	if rt.Gatherer != nil {
		mux.Handle("GET /metrics", g.Admin(promhttp.HandlerFor(rt.Gatherer, promhttp.HandlerOpts{})))
	}
	if rt.Pprof {
		mux.Handle("/debug/pprof/", g.Admin(http.HandlerFunc(pprof.Index)))
		mux.Handle("/debug/pprof/cmdline", g.Admin(http.HandlerFunc(pprof.Cmdline)))
		mux.Handle("/debug/pprof/profile", g.Admin(http.HandlerFunc(pprof.Profile)))
		mux.Handle("/debug/pprof/symbol", g.Admin(http.HandlerFunc(pprof.Symbol)))
		mux.Handle("/debug/pprof/trace", g.Admin(http.HandlerFunc(pprof.Trace)))
	}
	mux.Handle("POST /admin/reload", wrap("admin", g.Control(g.ControlHandler("reload", rt.Control.Reinitialize, rt.Control.CheckReload)).ServeHTTP))
	mux.Handle("POST /admin/shutdown", wrap("admin", g.Control(g.ControlHandler("shutdown", rt.Control.Shutdown, nil)).ServeHTTP))
}

// readyz answers 200 "ready", or 503 with the reason and one line per
// shard in the way (recovering, failed with its error, held by nobody).
func (rt Routes) readyz(w http.ResponseWriter, r *http.Request) {
	ready, text := true, "ready\n"
	if rt.Ready != nil {
		ready, text = rt.Ready()
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = io.WriteString(w, text) // a client gone mid-answer: nothing to do
}

// getPaths are the admin paths answered to GET and HEAD only.
var getPaths = []string{"/healthz", "/readyz", "/metrics"}

// Fallback answers what no route took, for a mux's "/" pattern: 405 with
// an Allow header for a wrong method on an admin path or on one of
// getOnly (the port's own GET paths), else 404 naming the request and
// hint (what to try instead, or "").
func Fallback(getOnly []string, hint string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.Path; {
		case p == "/admin/reload" || p == "/admin/shutdown":
			w.Header().Set("Allow", "POST")
			httpsrv.WriteError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s (use POST)", r.Method, p))
			return
		case slices.Contains(getPaths, p) || slices.Contains(getOnly, p):
			if r.Method == http.MethodGet || r.Method == http.MethodHead {
				break // not served here (/metrics without a gatherer)
			}
			w.Header().Set("Allow", "GET, HEAD")
			httpsrv.WriteError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s (use GET)", r.Method, p))
			return
		}
		msg := fmt.Sprintf("no such endpoint %s %s", r.Method, r.URL.Path)
		if hint != "" {
			msg += " (" + hint + ")"
		}
		httpsrv.WriteError(w, http.StatusNotFound, msg)
	}
}
