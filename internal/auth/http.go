package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/connlimit"
	"github.com/freeway-dev/freeway/internal/ratelog"
)

// Endpoints, as freeway_auth_refused_total labels them.
const (
	EndpointQuery       = "query"        // HTTP /api/v1/* (and the web page without tokens: Page)
	EndpointThriftQuery = "thrift_query" // the Thrift query port
	EndpointAdmin       = "admin"        // /metrics, /debug/pprof/
	EndpointControl     = "control"      // POST /admin/reload, /admin/shutdown
)

// Guard applies the process's tokens. A nil *Guard, or one without
// tokens, lets every request through but for Control's local-host rule
// and, on a port bound to a loopback address, the Host rule of Query and
// Admin.
type Guard struct {
	query, admin *Tokens
	allowedHosts map[string]bool // auth.allowed_hosts, lower case
	log          *slog.Logger
	warn         *ratelog.Limiter
	refused      *prometheus.CounterVec
}

// NewGuard loads the tokens files of cfg (validated). Metrics are
// registered with reg (nil: not exported).
func NewGuard(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Guard, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "auth")
	g := &Guard{log: log, warn: ratelog.New(log, time.Minute, 5),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_auth_refused_total",
			Help: "Requests refused for want of a valid bearer token (or, for control requests without an admin token configured, for not coming from the local host), by endpoint (query, thrift_query, admin, control) and reason (missing, invalid, not_local, cross_origin: a control request a browser sent for a page of another origin, unknown_host: a request served without a token on a port bound to a loopback address that named a host other than an IP address, localhost or one of auth.allowed_hosts)."},
			[]string{"endpoint", "reason"})}
	if reg != nil {
		g.refused = connlimit.Register(reg, g.refused)
	}
	if len(cfg.AllowedHosts) > 0 {
		g.allowedHosts = map[string]bool{}
		for _, h := range cfg.AllowedHosts {
			g.allowedHosts[normalHost(h)] = true
		}
	}
	var err error
	if g.query, err = LoadTokens("query", cfg.QueryTokensFile, log, reg); err != nil {
		return nil, fmt.Errorf("load auth.query_tokens_file: %w", err)
	}
	if g.admin, err = LoadTokens("admin", cfg.AdminTokenFile, log, reg); err != nil {
		return nil, fmt.Errorf("load auth.admin_token_file: %w", err)
	}
	return g, nil
}

// QueryTokens reports whether queries need a token.
func (g *Guard) QueryTokens() bool { return g != nil && g.query != nil }

// AdminToken reports whether admin endpoints need a token (and so
// whether fb303's control calls, which cannot carry one, are refused).
func (g *Guard) AdminToken() bool { return g != nil && g.admin != nil }

// Query requires a query token on h, when tokens are configured, else
// a known Host on a port bound to a loopback address (knownHost).
func (g *Guard) Query(h http.Handler) http.Handler {
	if !g.QueryTokens() {
		return g.knownHost(EndpointQuery, h)
	}
	return g.require(EndpointQuery, g.query, "auth.query_tokens_file", h)
}

// Page guards h, the dashboard's page and files, which hold no data:
// with query tokens it is served without one (a browser cannot send a
// header when it loads a page; the page asks for the token and sends it
// with its API calls, which Query guards), else as Query (knownHost).
func (g *Guard) Page(h http.Handler) http.Handler {
	if g.QueryTokens() {
		return h
	}
	return g.knownHost(EndpointQuery, h)
}

// Admin requires the admin token on h, when one is configured, else a
// known Host on a port bound to a loopback address (knownHost).
func (g *Guard) Admin(h http.Handler) http.Handler {
	if !g.AdminToken() {
		return g.knownHost(EndpointAdmin, h)
	}
	return g.require(EndpointAdmin, g.admin, "auth.admin_token_file", h)
}

// knownHost guards h, served without a token: on a port bound to a
// loopback address (ListenerContext), only the local host
// reaches it, and so its browser, for any page: a page whose DNS name
// was rebound to 127.0.0.1 would read the answers as its own origin's.
// Such a request names the page's host, so the Host must be an IP
// address, localhost or one of auth.allowed_hosts (a reverse proxy's
// name, which passes the client's Host on); others are refused 403. A
// port bound beyond the local host is open to whoever reaches it anyway:
// tokens are what secure it. A request over TLS is served whatever its
// Host: the browser checked the port's certificate against that name,
// which a page's rebound name does not pass.
func (g *Guard) knownHost(endpoint string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil || !boundToLoopback(r.Context()) || localName(r.Host) || g.allowedHost(r.Host) {
			h.ServeHTTP(w, r)
			return
		}
		g.count(endpoint, "unknown_host")
		g.logRefusal(endpoint, "unknown_host", r.Method+" "+r.URL.Path+" for host "+r.Host, r.RemoteAddr)
		writeJSON(w, http.StatusForbidden, fmt.Sprintf("host %q is not served on this port: it is bound to a loopback address and serves without a token, so it answers requests for an IP address, localhost or a name of auth.allowed_hosts only (a proxy that passes this Host on needs it listed there)", r.Host))
	})
}

type loopbackKey struct{}

// ListenerContext returns ctx marked with whether addr, where an HTTP
// listener is bound, is a loopback address (127.0.0.1, ::1; not 0.0.0.0):
// the base context of its requests (internal/httpsrv), which knownHost
// reads. A request without the mark (a handler run by a test server,
// say) is taken as on a port bound beyond the local host.
func ListenerContext(ctx context.Context, addr net.Addr) context.Context {
	ta, ok := addr.(*net.TCPAddr)
	return context.WithValue(ctx, loopbackKey{}, ok && ta.IP.IsLoopback())
}

func boundToLoopback(ctx context.Context) bool {
	b, _ := ctx.Value(loopbackKey{}).(bool)
	return b
}

// allowedHost reports whether a request's Host is one of
// auth.allowed_hosts.
func (g *Guard) allowedHost(hostport string) bool {
	return g != nil && g.allowedHosts[normalHost(hostport)]
}

// normalHost is the name of a Host header or a configured host: without
// the port, brackets and a trailing dot, in lower case.
func normalHost(hostport string) string {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	return strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
}

// Control guards a control endpoint: the admin token when one is
// configured, else the request must come from the local host (as fb303's
// control calls must). Either way a request a browser sends for a page of
// another origin is refused: without a token, the local host's browser is
// "the local host" to the rule, and a page it shows could otherwise stop
// the process with a plain form post. A browser says so in Sec-Fetch-Site
// or Origin; curl and other clients send neither and are unaffected.
func (g *Guard) Control(h http.Handler) http.Handler {
	return g.sameOrigin(g.control(h))
}

func (g *Guard) control(h http.Handler) http.Handler {
	if g.AdminToken() {
		return g.require(EndpointControl, g.admin, "auth.admin_token_file", h)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			g.count(EndpointControl, "not_local")
			g.logRefusal(EndpointControl, "not_local", r.Method+" "+r.URL.Path, r.RemoteAddr)
			writeJSON(w, http.StatusForbidden, "control requests are honoured only from the local host unless auth.admin_token_file is set")
			return
		}
		if !localName(r.Host) {
			g.count(EndpointControl, "not_local")
			g.logRefusal(EndpointControl, "not_local", r.Method+" "+r.URL.Path+" for host "+r.Host, r.RemoteAddr)
			writeJSON(w, http.StatusForbidden, "control requests without auth.admin_token_file must address the local host as localhost or by its IP address")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// localName reports whether a request's Host names the local host in a
// way no one else controls: an IP address (the connection already came
// from the local host) or localhost. Any other
// name may be a web page's own whose DNS record was turned to 127.0.0.1
// (DNS rebinding): the operator's browser then sends the page's requests
// from the local host, as same-origin ones.
func localName(hostport string) bool {
	host := normalHost(hostport)
	if host == "" || net.ParseIP(host) != nil {
		return true // no Host (HTTP/1.0: not a browser), or an address
	}
	return host == "localhost"
}

// sameOrigin refuses a control request sent by a browser for a page of
// another origin (cross-site request forgery), with 403.
func (g *Guard) sameOrigin(h http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.count(EndpointControl, "cross_origin")
		g.logRefusal(EndpointControl, "cross_origin", r.Method+" "+r.URL.Path+" from "+r.Header.Get("Origin"), r.RemoteAddr)
		writeJSON(w, http.StatusForbidden, "control requests from a web page of another origin are refused (cross-site request forgery)")
	}))
	return cop.Handler(h)
}

func (g *Guard) require(endpoint string, tokens *Tokens, key string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token := bearer(r.Header.Get("Authorization"))
		reason := ""
		switch {
		case token == "":
			reason = "missing"
		case !tokens.Valid(token):
			reason = "invalid"
		}
		if reason == "" {
			h.ServeHTTP(w, r)
			return
		}
		g.count(endpoint, reason)
		g.logRefusal(endpoint, reason, r.Method+" "+r.URL.Path, r.RemoteAddr)
		challenge := `Bearer realm="freeway"`
		msg := fmt.Sprintf("this endpoint needs a bearer token (Authorization: Bearer <token>, a token of %s)", key)
		if reason == "invalid" {
			challenge += `, error="invalid_token"`
			msg = fmt.Sprintf("the bearer token is not valid here (not in %s)", key)
		}
		w.Header().Set("WWW-Authenticate", challenge)
		writeJSON(w, http.StatusUnauthorized, msg)
	})
}

// CheckQuery checks a token presented on another port (the Thrift query
// port) against the query tokens: nil when none are configured or the
// token is valid, else an error to answer with (counted and logged).
func (g *Guard) CheckQuery(endpoint, token, remote string) error {
	if !g.QueryTokens() {
		return nil
	}
	reason := ""
	switch {
	case token == "":
		reason = "missing"
	case !g.query.Valid(token):
		reason = "invalid"
	}
	if reason == "" {
		return nil
	}
	g.count(endpoint, reason)
	g.logRefusal(endpoint, reason, "", remote)
	if reason == "missing" {
		return fmt.Errorf("unauthorized: this port needs a token (call authenticate with a token of auth.query_tokens_file first)")
	}
	return fmt.Errorf("unauthorized: the token is not valid here (not in auth.query_tokens_file)")
}

func (g *Guard) count(endpoint, reason string) {
	if g != nil {
		g.refused.WithLabelValues(endpoint, reason).Inc()
	}
}

// logRefusal logs a refusal, rate-limited, without the token.
func (g *Guard) logRefusal(endpoint, reason, request, remote string) {
	if g == nil {
		return
	}
	args := []any{"endpoint", endpoint, "reason", reason, "remote", remote}
	if request != "" {
		args = append(args, "request", ratelog.Clip(request))
	}
	// A control request refused for where it came from carried no
	// credentials that could be wrong: its line must not send the
	// operator looking for a bad token.
	msg := "request refused: no valid credentials"
	switch reason {
	case "not_local":
		msg = "control request refused: not from the local host, or not addressed as localhost or by IP"
	case "cross_origin":
		msg = "control request refused: sent by a web page of another origin"
	case "unknown_host":
		msg = "request refused: a loopback port without tokens answers only an IP address, localhost or auth.allowed_hosts as the host"
	}
	g.warn.Warn("refused:"+endpoint+":"+reason, msg, args...)
}

// ControlHandler answers a control request (POST /admin/reload, say) by
// calling do, which must return at once (it asks the process to act),
// after answering 202 {"status": "accepted", "action": action}. A nil do
// is answered 501. check, when set, is called first: its error is
// answered 422 {"error": ...} and do is not called (the operator sees
// why, not an "accepted" that the process then refuses in its log).
func (g *Guard) ControlHandler(action string, do func(), check func() error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if do == nil {
			writeJSON(w, http.StatusNotImplemented, action+" is not supported by this process")
			return
		}
		if check != nil {
			if err := check(); err != nil {
				if g != nil {
					g.log.Warn("admin control request refused", "action", action, "remote", r.RemoteAddr, "err", err)
				}
				writeJSON(w, http.StatusUnprocessableEntity, action+" refused: "+err.Error())
				return
			}
		}
		if g != nil {
			g.log.Info("admin control request", "action", action, "remote", r.RemoteAddr)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(map[string]string{"status": "accepted", "action": action}) // a client gone mid-answer: nothing to do
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		do()
	})
}

// writeJSON answers code with {"error": msg}.
func writeJSON(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg}) // a client gone mid-answer: nothing to do
}
