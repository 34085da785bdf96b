package zkcoord

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// defaultSessionTimeout is what a URL without session_timeout gets. It is
// also about how long a dead process keeps its buckets: ten seconds is the
// failover time the architecture promises ("within a few seconds").
const defaultSessionTimeout = 10 * time.Second

// defaultPort is ZooKeeper's client port, used when a server has no port.
const defaultPort = "2181"

// config is what a zk:// URL says.
type config struct {
	servers        []string // host:port, in the URL's order
	root           string   // absolute znode path, no trailing slash, never "/"
	sessionTimeout time.Duration
}

// parseURL reads zk://host:port[,host:port...]/root[?session_timeout=10s].
//
// The root is required: Freeway's znodes never go at the top of a shared
// ensemble by accident. Unknown query parameters are errors, not silently
// ignored, so a typo such as session_timout=2s cannot leave the default.
func parseURL(raw string) (config, error) {
	bad := func(format string, args ...any) (config, error) {
		return config{}, fmt.Errorf("parse zk URL %q: %s", raw, fmt.Sprintf(format, args...))
	}
	rest, ok := strings.CutPrefix(raw, "zk://")
	if !ok {
		return bad("want zk://host:port/root")
	}
	if strings.Contains(rest, "#") {
		return bad("a fragment is not allowed")
	}
	rest, query, _ := strings.Cut(rest, "?")
	hosts, path, hasPath := strings.Cut(rest, "/")
	if hosts == "" {
		return bad("no server")
	}
	if strings.Contains(hosts, "@") {
		return bad("user information is not supported")
	}
	var cfg config
	for _, h := range strings.Split(hosts, ",") {
		server, err := parseServer(h)
		if err != nil {
			return bad("%v", err)
		}
		cfg.servers = append(cfg.servers, server)
	}

	root, err := url.PathUnescape(path)
	if err != nil {
		return bad("root path: %v", err)
	}
	root = strings.TrimSuffix(root, "/")
	if !hasPath || root == "" {
		return bad("no root znode (want zk://host:port/root, for example zk://127.0.0.1:2181/freeway)")
	}
	if err := checkRoot(root); err != nil {
		return bad("%v", err)
	}
	cfg.root = "/" + root

	cfg.sessionTimeout = defaultSessionTimeout
	params, err := url.ParseQuery(query)
	if err != nil {
		return bad("query: %v", err)
	}
	for key, values := range params {
		switch key {
		case "session_timeout":
			if len(values) != 1 {
				return bad("session_timeout given %d times", len(values))
			}
			d, err := time.ParseDuration(values[0])
			if err != nil {
				return bad("session_timeout: %v", err)
			}
			// The wire carries milliseconds in an int32.
			if d < time.Millisecond || d.Milliseconds() > math.MaxInt32 {
				return bad("session_timeout %v out of range", d)
			}
			cfg.sessionTimeout = d
		default:
			return bad("unknown parameter %q (known: session_timeout)", key)
		}
	}
	return cfg, nil
}

// parseServer checks one host[:port] and returns it as host:port.
func parseServer(h string) (string, error) {
	if h == "" {
		return "", fmt.Errorf("empty server in the server list")
	}
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		// A bare host name, or a bracketed IPv6 address, gets the default
		// port; anything else (say "::1" without brackets) is ambiguous.
		switch {
		case !strings.Contains(h, ":"):
			host, port = h, defaultPort
		case strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]"):
			host, port = h[1:len(h)-1], defaultPort
		default:
			return "", fmt.Errorf("server %q: %w", h, err)
		}
	}
	if host == "" {
		return "", fmt.Errorf("server %q: no host", h)
	}
	if strings.ContainsAny(host, "/?#[]") {
		return "", fmt.Errorf("server %q: invalid host", h)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("server %q: invalid port %q", h, port)
	}
	return net.JoinHostPort(host, port), nil
}

// checkRoot refuses root paths ZooKeeper would refuse, with a clearer
// message than the server's. root has no leading or trailing slash.
func checkRoot(root string) error {
	for _, part := range strings.Split(root, "/") {
		switch part {
		case "":
			return fmt.Errorf("root %q: empty path component", "/"+root)
		case ".", "..":
			return fmt.Errorf("root %q: relative path component %q", "/"+root, part)
		}
		for _, r := range part {
			if r < 0x20 || (r >= 0x7f && r <= 0x9f) || (r >= 0xf000 && r <= 0xf8ff) || (r >= 0xfff0 && r <= 0xffff) {
				return fmt.Errorf("root %q: character %U not allowed in a znode path", "/"+root, r)
			}
		}
	}
	if root == "zookeeper" || strings.HasPrefix(root, "zookeeper/") {
		return fmt.Errorf("root %q: /zookeeper is reserved for the server", "/"+root)
	}
	return nil
}

// String is the canonical form of the URL, for logs.
func (cfg config) String() string {
	s := "zk://" + strings.Join(cfg.servers, ",") + cfg.root
	if cfg.sessionTimeout != defaultSessionTimeout {
		s += "?session_timeout=" + cfg.sessionTimeout.String()
	}
	return s
}

// CheckURL reports why Open would refuse raw before connecting (nil if
// it would not), for a configuration check.
func CheckURL(raw string) error {
	_, err := parseURL(raw)
	return err
}
