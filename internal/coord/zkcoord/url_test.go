package zkcoord

import (
	"strings"
	"testing"
	"time"
)

func TestParseURL(t *testing.T) {
	good := []struct {
		raw     string
		servers string
		root    string
		timeout time.Duration
		canon   string
	}{
		{"zk://127.0.0.1:2181/freeway", "127.0.0.1:2181", "/freeway", 10 * time.Second, "zk://127.0.0.1:2181/freeway"},
		{"zk://a:1,b:2,c/x/y/?session_timeout=2s", "a:1,b:2,c:2181", "/x/y", 2 * time.Second, "zk://a:1,b:2,c:2181/x/y?session_timeout=2s"},
		{"zk://[::1]:2182,[::2]/r", "[::1]:2182,[::2]:2181", "/r", 10 * time.Second, "zk://[::1]:2182,[::2]:2181/r"},
		{"zk://h:2181/free%20way?session_timeout=1500ms", "h:2181", "/free way", 1500 * time.Millisecond, "zk://h:2181/free way?session_timeout=1.5s"},
	}
	for _, tc := range good {
		cfg, err := parseURL(tc.raw)
		if err != nil {
			t.Errorf("parse %q: %v", tc.raw, err)
			continue
		}
		if got := strings.Join(cfg.servers, ","); got != tc.servers {
			t.Errorf("parse %q: servers %s, want %s", tc.raw, got, tc.servers)
		}
		if cfg.root != tc.root || cfg.sessionTimeout != tc.timeout {
			t.Errorf("parse %q: root %q timeout %v, want %q %v", tc.raw, cfg.root, cfg.sessionTimeout, tc.root, tc.timeout)
		}
		if cfg.String() != tc.canon {
			t.Errorf("parse %q: canonical %q, want %q", tc.raw, cfg.String(), tc.canon)
		}
	}

	bad := []struct{ raw, why string }{
		{"", "want zk://"},
		{"http://h:2181/x", "want zk://"},
		{"zk:/h:2181/x", "want zk://"},
		{"zk:///x", "no server"},
		{"zk://h:2181", "no root"},
		{"zk://h:2181/", "no root"},
		{"zk://h:2181,/x", "empty server"},
		{"zk://h:notaport/x", "invalid port"},
		{"zk://h:0/x", "invalid port"},
		{"zk://h:70000/x", "invalid port"},
		{"zk://::1/x", "too many colons"},
		{"zk://user@h:2181/x", "user information"},
		{"zk://h:2181/a//b", "empty path component"},
		{"zk://h:2181/a/../b", "relative path component"},
		{"zk://h:2181/zookeeper", "reserved"},
		{"zk://h:2181/zookeeper/x", "reserved"},
		{"zk://h:2181/a%00b", "not allowed"},
		{"zk://h:2181/a%zz", "root path"},
		{"zk://h:2181/x#frag", "fragment"},
		{"zk://h:2181/x?session_timeout=soon", "session_timeout"},
		{"zk://h:2181/x?session_timeout=-1s", "out of range"},
		{"zk://h:2181/x?session_timeout=1s&session_timeout=2s", "2 times"},
		{"zk://h:2181/x?session_timout=1s", "unknown parameter"},
		{"zk://h:2181/x?%zz", "query"},
	}
	for _, tc := range bad {
		_, err := parseURL(tc.raw)
		if err == nil {
			t.Errorf("parse %q succeeded, want an error about %s", tc.raw, tc.why)
			continue
		}
		if !strings.Contains(err.Error(), tc.why) || !strings.HasPrefix(err.Error(), "parse zk URL ") {
			t.Errorf("parse %q: %v, want an error about %s", tc.raw, err, tc.why)
		}
	}
}
