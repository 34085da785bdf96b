package auth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/connlimit"
	"github.com/freeway-dev/freeway/internal/ratelog"
)

// TLSConfig is the tls: section of the configuration, shared by every
// listener of the process and by its clients.
type TLSConfig struct {
	// CertFile and KeyFile are the PEM certificate (chain) and private key
	// of the process: setting them turns TLS on.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// CAFile holds the PEM certificates of the CAs that servers (for the
	// process's clients) and client certificates (for its listeners) must
	// chain to; unset, clients trust the system roots and listeners ask
	// for no client certificate.
	CAFile string `yaml:"ca_file"`
	// ClientAuth requires a verified client certificate on every
	// connection to every listener (mutual TLS), but on the HTTP ports,
	// which answer GET /healthz and /readyz without one (HTTPServer).
	ClientAuth bool `yaml:"client_auth"`
}

// Enabled reports whether the process speaks TLS.
func (c *TLSConfig) Enabled() bool { return c.CertFile != "" }

// Validate checks the keys go together and that the files load.
func (c *TLSConfig) Validate() error {
	switch {
	case c.CertFile == "" && c.KeyFile != "":
		return config.Errorf("$.tls.cert_file", "must be set with tls.key_file")
	case c.CertFile != "" && c.KeyFile == "":
		return config.Errorf("$.tls.key_file", "must be set with tls.cert_file")
	case c.CAFile != "" && c.CertFile == "":
		return config.Errorf("$.tls.ca_file", "needs tls.cert_file and tls.key_file: TLS is on when the process has a certificate")
	case c.ClientAuth && c.CAFile == "":
		return config.Errorf("$.tls.client_auth", "needs tls.ca_file, the CA client certificates must chain to")
	}
	if !c.Enabled() {
		return nil
	}
	_, _, err := loadMaterial(*c)
	return err
}

// material is one loaded version of the files.
type material struct {
	cert tls.Certificate // Leaf set
	pool *x509.CertPool  // nil without a CA file
	// clientOK: the certificate may authenticate a client.
	clientOK bool
	server   *tls.Config
	// httpServer is server for the HTTP ports: with client_auth it asks
	// for a client certificate without requiring one (one offered must
	// still verify), HTTPServer's handler then refusing every request
	// without one but the probes'.
	httpServer *tls.Config
}

// loadMaterial reads the files and checks them.
func loadMaterial(c TLSConfig) (*material, *watch, error) {
	w := newWatch(c.CertFile, c.KeyFile, c.CAFile)
	data, sig, err := w.read()
	if err != nil {
		var re *readError
		errors.As(err, &re)
		key := [...]string{"cert_file", "key_file", "ca_file"}[re.i]
		return nil, nil, config.Errorf("$.tls."+key, "%v", re.err)
	}
	m, err := parseMaterial(c, data)
	if err != nil {
		return nil, nil, err
	}
	w.loaded(data, sig)
	clear(data[1])
	return m, w, nil
}

// parseMaterial checks the files' content (certificate, key, CA). Its
// errors name the files, never their contents.
func parseMaterial(c TLSConfig, data [][]byte) (*material, error) {
	cert, err := tls.X509KeyPair(data[0], data[1])
	if err != nil {
		return nil, config.Errorf("$.tls.cert_file", "certificate %s with key %s: %v", c.CertFile, c.KeyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, config.Errorf("$.tls.cert_file", "parse certificate %s: %v", c.CertFile, err)
		}
	}
	m := &material{cert: cert}
	eku := cert.Leaf.ExtKeyUsage
	m.clientOK = len(eku) == 0 || slices.Contains(eku, x509.ExtKeyUsageClientAuth) || slices.Contains(eku, x509.ExtKeyUsageAny)
	mode := tls.NoClientCert
	if c.CAFile != "" {
		m.pool = x509.NewCertPool()
		if !m.pool.AppendCertsFromPEM(data[2]) {
			return nil, config.Errorf("$.tls.ca_file", "%s holds no PEM certificate", c.CAFile)
		}
		mode = tls.VerifyClientCertIfGiven
		if c.ClientAuth {
			mode = tls.RequireAndVerifyClientCert
		}
	}
	m.server = &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    m.pool,
		ClientAuth:   mode,
	}
	m.httpServer = m.server
	if mode == tls.RequireAndVerifyClientCert {
		m.httpServer = m.server.Clone()
		m.httpServer.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return m, nil
}

// TLS hands out the process's server and client TLS configurations,
// reloading the files when they change. A nil *TLS is a process without
// TLS: its methods return nil configurations and false.
type TLS struct {
	cfg     TLSConfig
	log     *slog.Logger
	warn    *ratelog.Limiter
	reloads *prometheus.CounterVec
	expiry  prometheus.Gauge
	refused prometheus.Counter // HTTP requests refused for want of a client certificate

	mu    sync.Mutex
	cur   *material
	files *watch
}

// NewTLS loads the files of cfg (validated); it returns nil when TLS is
// off. Metrics are registered with reg (nil: not exported).
func NewTLS(cfg TLSConfig, log *slog.Logger, reg prometheus.Registerer) (*TLS, error) {
	if !cfg.Enabled() {
		return nil, nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "tls")
	t := &TLS{
		cfg:  cfg,
		log:  log,
		warn: ratelog.New(log, time.Minute, 3),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_tls_reloads_total",
			Help: "Loads of changed TLS files (tls.cert_file, key_file, ca_file), by result (ok; error: the previous certificate stays in use)."}, []string{"result"}),
		expiry: prometheus.NewGauge(prometheus.GaugeOpts{Name: "freeway_tls_certificate_expiry_timestamp_seconds",
			Help: "When the certificate in use (tls.cert_file) expires, Unix seconds."}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_tls_requests_without_client_cert_total",
			Help: "HTTP requests answered 403 because the client offered no certificate (tls.client_auth; only GET and HEAD of /healthz and /readyz answer without one)."}),
	}
	if reg != nil {
		t.reloads = connlimit.Register(reg, t.reloads)
		t.expiry = connlimit.Register(reg, t.expiry)
		t.refused = connlimit.Register(reg, t.refused)
	}
	m, w, err := loadMaterial(cfg)
	if err != nil {
		return nil, err
	}
	t.cur, t.files = m, w
	t.expiry.Set(float64(m.cert.Leaf.NotAfter.Unix()))
	t.describe("tls on", m)
	if !m.clientOK && cfg.CAFile != "" {
		log.Warn("the certificate may not authenticate clients (its extended key usage lacks clientAuth): this process's clients offer none",
			"cert_file", cfg.CertFile)
	}
	return t, nil
}

func (t *TLS) describe(msg string, m *material) {
	leaf := m.cert.Leaf
	level := slog.LevelInfo
	if time.Now().After(leaf.NotAfter) {
		level = slog.LevelWarn
		msg += "; the certificate has expired"
	}
	mode := "none"
	switch {
	case t.cfg.ClientAuth:
		mode = "required"
	case t.cfg.CAFile != "":
		mode = "verified if offered"
	}
	//nolint:sloglint // msg is one of two constants ("tls on", "tls files reloaded"), with a fixed suffix once expired
	t.log.Log(context.Background(), level, msg, "cert_file", t.cfg.CertFile, "ca_file", t.cfg.CAFile, "subject", leaf.Subject.String(),
		"dns_names", leaf.DNSNames, "ips", leaf.IPAddresses, "not_after", leaf.NotAfter.UTC(), "client_certificates", mode)
}

// current returns the material in use, loading the files first if they
// changed since they were last tried.
func (t *TLS) current() *material {
	t.mu.Lock()
	defer t.mu.Unlock()
	data, changed, err := t.files.changed()
	if err != nil {
		t.reloads.WithLabelValues("error").Inc()
		t.warn.Error("read", "tls files cannot be read; the previous certificate stays in use", "err", err)
		return t.cur
	}
	if !changed {
		return t.cur
	}
	defer clear(data[1])
	m, err := parseMaterial(t.cfg, data)
	if err != nil {
		t.files.refused(data)
		t.reloads.WithLabelValues("error").Inc()
		t.warn.Error("reload", "tls files changed but do not load; the previous certificate stays in use", "err", err)
		return t.cur
	}
	t.files.took(data)
	t.cur = m
	t.reloads.WithLabelValues("ok").Inc()
	t.expiry.Set(float64(m.cert.Leaf.NotAfter.Unix()))
	t.describe("tls files reloaded", m)
	return m
}

// ServerConfig is the configuration of a TLS listener (the Scribe and
// Thrift ports, and a Puma node's partial-state port, which has no
// probes; the operator HTTP ports use HTTPServer): the certificate in
// use at each handshake, client certificates verified against the CA
// (if offered, or required with client_auth). Nil without TLS.
func (t *TLS) ServerConfig() *tls.Config {
	if t == nil {
		return nil
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return t.current().server, nil
		},
	}
}

// ProbePaths are the paths an HTTP port with tls.client_auth answers
// (to GET and HEAD) without a client certificate, for health checkers
// that have none (a kubelet's httpGet probe, a load balancer).
var ProbePaths = []string{"/healthz", "/readyz"}

// HTTPServer is what an HTTP port serves h with: the handler and the
// listener's configuration (nil, h unchanged, without TLS). Without
// client_auth the configuration is ServerConfig's and h is unchanged.
// With client_auth the handshake verifies a client certificate if one is
// offered (one that does not verify is refused, as ServerConfig does)
// but lets a client without one in, and the handler answers such a
// client's GET or HEAD of a ProbePaths path only: every other request
// gets 403 and a JSON error (logged, rate-limited, and counted in
// freeway_tls_requests_without_client_cert_total).
func (t *TLS) HTTPServer(h http.Handler) (http.Handler, *tls.Config) {
	if t == nil {
		return h, nil
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return t.current().httpServer, nil
		},
	}
	if !t.cfg.ClientAuth {
		return h, cfg
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if Verified(r.TLS) || (r.Method == http.MethodGet || r.Method == http.MethodHead) && slices.Contains(ProbePaths, r.URL.Path) {
			h.ServeHTTP(w, r)
			return
		}
		t.refused.Inc()
		t.warn.Warn("no_client_cert", "request without a client certificate refused (tls.client_auth)",
			"request", ratelog.Clip(r.Method+" "+r.URL.Path), "remote", r.RemoteAddr)
		// 403, not 401: a 401 asks for HTTP credentials (the bearer
		// tokens' WWW-Authenticate), while a certificate can only be
		// offered in a new TLS handshake.
		writeJSON(w, http.StatusForbidden, "this port requires a TLS client certificate signed by a CA of tls.ca_file (tls.client_auth: true); only GET /healthz and /readyz answer without one")
	}), cfg
}

// ClientConfig is the configuration to dial addr (host:port) with: the
// server is verified against the CA file (else the system roots) and the
// host, and the process's certificate is offered when the server asks
// for one. Nil without TLS.
func (t *TLS) ClientConfig(addr string) *tls.Config {
	if t == nil {
		return nil
	}
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: host,
		RootCAs:    t.current().pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			m := t.current()
			if !m.clientOK {
				// An empty certificate: the server then decides (a
				// server requiring one refuses the connection).
				return &tls.Certificate{}, nil
			}
			return &m.cert, nil
		},
	}
}

// VerifiesClients reports whether listeners verify client certificates
// (tls.ca_file is set): a connection then is either verified or offered
// none (required with client_auth).
func (t *TLS) VerifiesClients() bool { return t != nil && t.cfg.CAFile != "" }

// Verified reports whether a connection's TLS state carries a client
// certificate verified against the CA.
func Verified(st *tls.ConnectionState) bool { return st != nil && len(st.VerifiedChains) > 0 }
