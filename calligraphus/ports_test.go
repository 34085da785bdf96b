package calligraphus

import (
	"net"
	"testing"

	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
)

// TestIdleClientsDoNotLockOutTheWriter: with max_connections idle
// connections open, an agent can still send: the longest-idle connection
// is closed for it. (Before, the writer stopped accepting at the cap.)
func TestIdleClientsDoNotLockOutTheWriter(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	cfg := testConfig()
	cfg.MaxConnections = 8
	s := startServer(t, cfg, fsys, co, nil)
	for range cfg.MaxConnections {
		c, err := net.Dial("tcp", s.c.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	mustLog(t, s.dial(t), entries("cat", "after idle clients"))
	if got := counter(t, s.reg, "freeway_listener_connections_evicted_total"); got < 1 {
		t.Fatalf("evictions counted %v", got)
	}
	s.stop()
	if got := msgs(scan(t, fsys, "cat/0")); len(got) != 1 {
		t.Fatalf("bucket holds %q", got)
	}
}
