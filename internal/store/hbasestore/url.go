package hbasestore

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// config is what an hbase:// URL says.
type config struct {
	addr           string // host:port of the Thrift2 gateway
	namespace      string // "" is HBase's default namespace
	prefix         string // before every table qualifier
	poolSize       int
	connectTimeout time.Duration
	socketTimeout  time.Duration
}

// parseURL reads hbase://host[:port][/[namespace:]prefix][?pool=N&timeout=D&connect_timeout=D].
func parseURL(rawURL string) (config, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return config{}, err
	}
	if u.Scheme != "hbase" {
		return config{}, fmt.Errorf("scheme %q, want hbase", u.Scheme)
	}
	if u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return config{}, fmt.Errorf("want hbase://host:port[/prefix]")
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return config{}, fmt.Errorf("no host")
	}
	if port == "" {
		port = DefaultPort
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return config{}, fmt.Errorf("bad port %q", port)
	}
	c := config{
		addr:           net.JoinHostPort(host, port),
		prefix:         DefaultPrefix,
		poolSize:       defaultPoolSize,
		connectTimeout: defaultConnectTimeout,
		socketTimeout:  defaultSocketTimeout,
	}
	if p := strings.TrimPrefix(u.Path, "/"); p != "" {
		ns, prefix, hasNS := strings.Cut(p, ":")
		if !hasNS {
			ns, prefix = "", p
		}
		if hasNS && !validNamespace(ns) {
			return config{}, fmt.Errorf("bad namespace %q: letters, digits and '_' only", ns)
		}
		if !validQualifierChars(prefix) || (prefix != "" && !wordChar(prefix[0])) {
			return config{}, fmt.Errorf("bad table prefix %q: letters, digits, '_', '-' and '.', not starting with '-' or '.'", prefix)
		}
		c.namespace, c.prefix = ns, prefix
	}
	for k, vs := range u.Query() {
		v := vs[len(vs)-1]
		switch k {
		case "pool":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 256 {
				return config{}, fmt.Errorf("pool=%q: want 1 to 256 connections", v)
			}
			c.poolSize = n
		case "timeout", "connect_timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return config{}, fmt.Errorf("%s=%q: want a positive duration such as 30s", k, v)
			}
			if k == "timeout" {
				c.socketTimeout = d
			} else {
				c.connectTimeout = d
			}
		default:
			return config{}, fmt.Errorf("unknown parameter %q (known: pool, timeout, connect_timeout)", k)
		}
	}
	return c, nil
}

func wordChar(b byte) bool {
	return b == '_' || '0' <= b && b <= '9' || 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z'
}

func validNamespace(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !wordChar(s[i]) {
			return false
		}
	}
	return true
}

// validQualifierChars: HBase table qualifiers are [a-zA-Z0-9_.-].
func validQualifierChars(s string) bool {
	for i := 0; i < len(s); i++ {
		if !wordChar(s[i]) && s[i] != '-' && s[i] != '.' {
			return false
		}
	}
	return true
}

// CheckURL reports why Open would refuse rawURL (nil if it would not),
// for a configuration check.
func CheckURL(rawURL string) error {
	if _, err := parseURL(rawURL); err != nil {
		return fmt.Errorf("store %s: %w", rawURL, err)
	}
	return nil
}
