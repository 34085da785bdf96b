package scribe

import (
	"net"
	"testing"
)

// TestIdleClientsDoNotLockOutTheAgent: with max_connections idle
// connections open (apps that connected and went quiet), another app can
// still log: the longest-idle connection is closed for it. (Before, the
// agent stopped accepting at 1,024 connections and every other app
// waited.)
func TestIdleClientsDoNotLockOutTheAgent(t *testing.T) {
	cfg := testConfig(t.TempDir(), deadAddr(t))
	cfg.MaxConnections = 8
	a := startAgent(t, cfg)
	for range cfg.MaxConnections {
		c, err := net.Dial("tcp", a.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	mustLog(t, dial(t, a.Addr()), entries("access", "after-idle", 0, 3))
	if n := counterValue(t, a, "freeway_listener_connections_evicted_total"); n < 1 {
		t.Fatalf("evictions counted %v", n)
	}
}

func counterValue(t *testing.T, a *agent, name string) float64 {
	t.Helper()
	mfs, err := a.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue()
			}
		}
	}
	return v
}
