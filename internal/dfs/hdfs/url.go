package hdfs

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os/user"
	"path"
	"strconv"
	"strings"
	"time"
)

// Defaults for what an hdfs:// URL leaves out. The timeouts follow the
// Java client's (dfs.client.socket-timeout is 60 s): long enough for a
// NameNode in a GC pause, short enough that a dead peer surfaces as an
// error instead of a writer that hangs while holding a bucket lease.
const (
	defaultPort        = "8020" // the NameNode RPC port of Hadoop's defaults
	defaultDialTimeout = 10 * time.Second
	defaultIOTimeout   = 60 * time.Second
	// checksumChunk is HDFS's dfs.bytes-per-checksum: a block size must be
	// a multiple of it.
	checksumChunk = 512
)

// config is what an hdfs:// URL says.
type config struct {
	addrs       []string      // NameNode RPC addresses, host:port
	root        string        // absolute, cleaned HDFS directory
	user        string        // empty: resolve from the environment
	dialTimeout time.Duration // bound on connecting to a NameNode or DataNode
	ioTimeout   time.Duration // bound on each read or write on a connection
	blockSize   int64         // 0: the NameNode's default
	// datanodeHostname reaches DataNodes by the host name they register
	// with rather than their IP, as dfs.client.use.datanode.hostname does.
	datanodeHostname bool
	// connections is the number of NameNode connections (clients).
	connections int
}

// defaultConnections: NameNode connections of an FS by default. One
// bucket writer's publish is five NameNode calls (create, addBlock,
// complete, rename, the fence listing) and a reader's pass over a bucket
// three or more; on one connection they all wait in one line.
const defaultConnections = 4

// maxConnections bounds namenode_connections.
const maxConnections = 64

// String is the URL without its query, for logs.
func (c config) String() string {
	return "hdfs://" + strings.Join(c.addrs, ",") + c.root
}

// parseURL parses hdfs://host:port[,host:port]/root[?user=NAME&...].
//
// Query parameters besides user: dial_timeout and io_timeout (Go
// durations), block_size (bytes, a multiple of 512; the NameNode must
// allow it through dfs.namenode.fs-limits.min-block-size),
// datanode_hostname (a Go bool) and namenode_connections (1 to 64,
// default 4). An unknown parameter is an error rather
// than a silent default, so a typo in a config file does not quietly
// change behaviour.
func parseURL(rawURL string) (config, error) {
	// net/url cannot parse a list of hosts ("[::1]:9000,[::2]:9000" is an
	// invalid IP literal to it), so the authority is cut out by hand and
	// the rest parsed by net/url.
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return config{}, errors.New("url: want hdfs://host:port/root")
	}
	if scheme != "hdfs" {
		return config{}, fmt.Errorf("url: scheme is %q, want hdfs", scheme)
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	if strings.Contains(authority, "@") {
		// Do not print the URL: it may carry a password.
		return config{}, errors.New("url: user information in the authority is not supported, use ?user=NAME")
	}
	u, err := url.Parse("hdfs://host" + tail)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // not the placeholder URL
		}
		return config{}, fmt.Errorf("parse url %s: %w", rawURL, err)
	}
	if u.Fragment != "" {
		return config{}, fmt.Errorf("url %s: unexpected fragment", rawURL)
	}
	cfg := config{dialTimeout: defaultDialTimeout, ioTimeout: defaultIOTimeout, connections: defaultConnections}

	if authority == "" {
		return config{}, fmt.Errorf("url %s: no NameNode address", rawURL)
	}
	for _, a := range strings.Split(authority, ",") {
		addr, err := parseAddr(a)
		if err != nil {
			return config{}, fmt.Errorf("url %s: %w", rawURL, err)
		}
		cfg.addrs = append(cfg.addrs, addr)
	}

	if u.Path == "" {
		return config{}, fmt.Errorf("url %s: no root directory (want hdfs://host:port/dir)", rawURL)
	}
	root := path.Clean(u.Path)
	if !path.IsAbs(root) || root != strings.TrimSuffix(u.Path, "/") && root != "/" {
		return config{}, fmt.Errorf("url %s: root %q is not a clean absolute path", rawURL, u.Path)
	}
	cfg.root = root

	query, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return config{}, fmt.Errorf("url %s: parameters: %w", rawURL, err)
	}
	for key, vals := range query {
		if len(vals) != 1 {
			return config{}, fmt.Errorf("url %s: parameter %s given %d times", rawURL, key, len(vals))
		}
		v := vals[0]
		switch key {
		case "user":
			if v == "" {
				return config{}, fmt.Errorf("url %s: empty user", rawURL)
			}
			cfg.user = v
		case "dial_timeout", "io_timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return config{}, fmt.Errorf("url %s: %s=%q is not a positive duration", rawURL, key, v)
			}
			if key == "dial_timeout" {
				cfg.dialTimeout = d
			} else {
				cfg.ioTimeout = d
			}
		case "block_size":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 || n%checksumChunk != 0 {
				return config{}, fmt.Errorf("url %s: block_size=%q is not a positive multiple of %d", rawURL, v, checksumChunk)
			}
			cfg.blockSize = n
		case "datanode_hostname":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return config{}, fmt.Errorf("url %s: datanode_hostname=%q is not a bool", rawURL, v)
			}
			cfg.datanodeHostname = b
		case "namenode_connections":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxConnections {
				return config{}, fmt.Errorf("url %s: namenode_connections=%q is not a number from 1 to %d", rawURL, v, maxConnections)
			}
			cfg.connections = n
		default:
			return config{}, fmt.Errorf("url %s: unknown parameter %q (known: user, dial_timeout, io_timeout, block_size, datanode_hostname, namenode_connections)", rawURL, key)
		}
	}
	return cfg, nil
}

// parseAddr checks one NameNode address and adds the default port.
func parseAddr(a string) (string, error) {
	if a == "" {
		return "", errors.New("empty NameNode address")
	}
	hostport := a
	if !strings.Contains(a, ":") || strings.HasPrefix(a, "[") && strings.HasSuffix(a, "]") {
		hostport = net.JoinHostPort(strings.Trim(a, "[]"), defaultPort)
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", fmt.Errorf("NameNode address %q: %w", a, err)
	}
	if host == "" {
		return "", fmt.Errorf("NameNode address %q: no host", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("NameNode address %q: bad port %q", a, port)
	}
	return net.JoinHostPort(host, port), nil
}

// resolveUser picks the HDFS user the way Hadoop's own tools do: the URL,
// then $HADOOP_USER_NAME, then the OS user. HDFS without Kerberos trusts
// whatever name the client sends, so this decides file ownership and
// permission checks, not identity.
func resolveUser(fromURL string, getenv func(string) string, current func() (*user.User, error)) (string, error) {
	if fromURL != "" {
		return fromURL, nil
	}
	if u := getenv("HADOOP_USER_NAME"); u != "" {
		return u, nil
	}
	u, err := current()
	if err != nil {
		return "", fmt.Errorf("find OS user (set HADOOP_USER_NAME or ?user=): %w", err)
	}
	if u.Username == "" {
		return "", errors.New("find OS user: empty name (set HADOOP_USER_NAME or ?user=)")
	}
	return u.Username, nil
}

// CheckURL reports why Open would refuse rawURL before connecting (nil
// if it would not), for a configuration check.
func CheckURL(rawURL string) error {
	_, err := parseURL(rawURL)
	return err
}
