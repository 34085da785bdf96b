package auth

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/connlimit"
	"github.com/freeway-dev/freeway/internal/ratelog"
)

// Config is the auth: section of the configuration.
type Config struct {
	// QueryTokensFile holds the tokens of the query API (/api/v1/*, the
	// Thrift query port; the web page asks for one to send with its
	// calls), one a line; unset, queries need no token.
	QueryTokensFile string `yaml:"query_tokens_file"`
	// AdminTokenFile holds the admin token(s) (/metrics, /debug/pprof/,
	// POST /admin/*); set, fb303's control calls, which cannot carry a
	// token, are refused.
	AdminTokenFile string `yaml:"admin_token_file"`
	// AllowedHosts are the host names (beside IP addresses and
	// localhost) a request may name in its Host header on a port bound
	// to a loopback address that serves it without a token: a reverse
	// proxy on the local host that keeps the client's Host needs its
	// name here (Guard.Query).
	AllowedHosts []string `yaml:"allowed_hosts"`
}

// Validate checks the files exist and hold tokens, and the allowed hosts
// are host names.
func (c *Config) Validate() error {
	for i, h := range c.AllowedHosts {
		// A port or a scheme would never match a Host header's name: the
		// operator would see requests refused with no reason why.
		if h == "" || strings.ContainsAny(h, ":/ \t[]") {
			return config.Errorf(fmt.Sprintf("$.auth.allowed_hosts[%d]", i), "%q is not a host name (give the name alone, without a scheme or a port)", h)
		}
	}
	for _, f := range []struct{ key, path string }{
		{"query_tokens_file", c.QueryTokensFile}, {"admin_token_file", c.AdminTokenFile},
	} {
		if f.path == "" {
			continue
		}
		if _, err := readTokens(f.path); err != nil {
			return config.Errorf("$.auth."+f.key, "%v", err)
		}
	}
	return nil
}

// readTokens reads a tokens file (see parseTokens).
func readTokens(path string) ([][sha256.Size]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	defer clear(data)
	return parseTokens(path, data)
}

// parseTokens parses a tokens file: one token a line, surrounding spaces
// trimmed, blank lines and lines starting with # ignored. It returns the
// tokens' digests. Its errors name the line, never a token.
func parseTokens(path string, data []byte) ([][sha256.Size]byte, error) {
	var out [][sha256.Size]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		for _, b := range line {
			// A token travels in an HTTP header: printable ASCII, no
			// spaces (which would also hide a second token on the line).
			if b <= ' ' || b >= 0x7f {
				return nil, fmt.Errorf("%s:%d: a token must be printable ASCII without spaces", path, n)
			}
		}
		out = append(out, sha256.Sum256(line))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no token (one a line; # starts a comment)", path)
	}
	return out, nil
}

// Tokens checks bearer tokens against a file, read again when it
// changes. A nil *Tokens accepts nothing; callers check for nil to mean
// "no tokens configured".
type Tokens struct {
	name    string // "query" or "admin", in logs and metrics
	path    string
	warn    *ratelog.Limiter
	log     *slog.Logger
	reloads *prometheus.CounterVec

	mu     sync.Mutex
	digest [][sha256.Size]byte
	file   *watch
}

// LoadTokens reads the tokens file at path ("" returns nil: none
// configured). name labels it in logs and metrics.
func LoadTokens(name, path string, log *slog.Logger, reg prometheus.Registerer) (*Tokens, error) {
	if path == "" {
		return nil, nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Tokens{name: name, path: path, log: log, warn: ratelog.New(log, time.Minute, 3),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_auth_token_reloads_total",
			Help: "Loads of a changed tokens file, by file (query, admin) and result (ok; error: the previous tokens stay in use)."}, []string{"file", "result"})}
	if reg != nil {
		t.reloads = connlimit.Register(reg, t.reloads)
	}
	t.file = newWatch(path)
	data, sig, err := t.file.read()
	if err != nil {
		return nil, err
	}
	defer clear(data[0])
	d, err := parseTokens(path, data[0])
	if err != nil {
		return nil, err
	}
	t.file.loaded(data, sig)
	t.digest = d
	log.Info("bearer tokens required", "tokens", name, "file", path, "count", len(d))
	return t, nil
}

// current returns the digests in use, reading the file again first if
// it changed since it was last tried.
func (t *Tokens) current() [][sha256.Size]byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	data, changed, err := t.file.changed()
	if err != nil {
		t.reloads.WithLabelValues(t.name, "error").Inc()
		t.warn.Error("read", "tokens file cannot be read; the previous tokens stay in use", "tokens", t.name, "err", err)
		return t.digest
	}
	if !changed {
		return t.digest
	}
	defer clear(data[0])
	d, err := parseTokens(t.path, data[0])
	if err != nil {
		t.file.refused(data)
		t.reloads.WithLabelValues(t.name, "error").Inc()
		t.warn.Error("reload", "tokens file changed but does not load; the previous tokens stay in use", "tokens", t.name, "err", err)
		return t.digest
	}
	t.file.took(data)
	t.digest = d
	t.reloads.WithLabelValues(t.name, "ok").Inc()
	t.log.Info("tokens file reloaded", "tokens", t.name, "file", t.path, "count", len(d))
	return d
}

// Valid reports whether token is one of the file's, in time independent
// of which (and of the token's length).
func (t *Tokens) Valid(token string) bool {
	if t == nil || token == "" {
		return false
	}
	h := sha256.Sum256([]byte(token))
	match := 0
	for _, d := range t.current() {
		match |= subtle.ConstantTimeCompare(h[:], d[:])
	}
	return match == 1
}

// bearer returns the token of an Authorization header value
// ("Bearer <token>", the scheme in any case), or "".
func bearer(header string) string {
	scheme, token, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// Presented is the token a process presents to another's port guarded by
// the same tokens file (serving's fan-out to the Puma nodes): the file's
// first token, read again when the file changes, as Tokens reads it. So a
// rotation (a new token first, then the old one removed) reaches the
// client as it reaches the guards, without a restart: a client that kept
// the token read at start would be refused by every guard once it was
// removed. A nil *Presented presents no token.
type Presented struct {
	path string
	warn *ratelog.Limiter

	mu    sync.Mutex
	token string
	file  *watch
}

// LoadPresented reads the first token of the tokens file at path (""
// returns nil: none configured).
func LoadPresented(path string, log *slog.Logger) (*Presented, error) {
	if path == "" {
		return nil, nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Presented{path: path, warn: ratelog.New(log, time.Minute, 3), file: newWatch(path)}
	data, sig, err := p.file.read()
	if err != nil {
		return nil, err
	}
	if p.token, err = firstToken(path, data[0]); err != nil {
		return nil, err
	}
	p.file.loaded(data, sig)
	return p, nil
}

// Token is the token to present: the file's first, read again if the
// file changed since it was last tried. A file that cannot be read or
// holds no valid token (half written) leaves the previous token in use.
func (p *Presented) Token() string {
	if p == nil {
		return ""
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	data, changed, err := p.file.changed()
	if err != nil {
		p.warn.Error("read", "tokens file cannot be read; the previous token is presented", "file", p.path, "err", err)
		return p.token
	}
	if !changed {
		return p.token
	}
	token, err := firstToken(p.path, data[0])
	if err != nil {
		p.file.refused(data)
		p.warn.Error("reload", "tokens file changed but does not load; the previous token is presented", "file", p.path, "err", err)
		return p.token
	}
	p.file.took(data)
	p.token = token
	return token
}

// firstToken is the first token of a tokens file, which must parse
// whole (parseTokens): a file a guard would refuse to load is not one to
// take a token from.
func firstToken(path string, data []byte) (string, error) {
	if _, err := parseTokens(path, data); err != nil {
		return "", err
	}
	for line := range bytes.Lines(data) {
		if line = bytes.TrimSpace(line); len(line) > 0 && line[0] != '#' {
			return string(line), nil
		}
	}
	return "", fmt.Errorf("%s holds no token", path) // parseTokens said it does
}
