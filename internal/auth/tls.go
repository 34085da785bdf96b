package auth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
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
	// connection to every listener (mutual TLS).
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
	}
	if reg != nil {
		t.reloads = connlimit.Register(reg, t.reloads)
		t.expiry = connlimit.Register(reg, t.expiry)
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

// ServerConfig is the configuration of a TLS listener: the certificate
// in use at each handshake, client certificates verified against the CA
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
