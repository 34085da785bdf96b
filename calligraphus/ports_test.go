package calligraphus

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/testkit"
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

// TestAdvertise: a writer bound to every interface publishes --advertise
// with its port, and refuses to start without it; one bound to an
// address publishes that address.
func TestAdvertise(t *testing.T) {
	_, co := inprocCoord(t)
	start := func(listen, advertise string) (*Calligraphus, error) {
		cfg := testConfig()
		cfg.Listen = listen
		return New(cfg, Deps{FS: newLocal(t), Coord: co, Common: component.Common{Shared: component.Shared{Advertise: advertise}}})
	}
	if _, err := start("0.0.0.0:0", ""); err == nil || !strings.Contains(err.Error(), "--advertise") {
		t.Errorf("bound to 0.0.0.0 without --advertise: %v, want an error naming --advertise", err)
	}
	c, err := start("0.0.0.0:0", "writer-7.example")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(c.Addr())
	if want := "writer-7.example:" + port; c.advertised != want {
		t.Errorf("advertised %q, want %q", c.advertised, want)
	}
	stopped, stop := context.WithCancel(context.Background())
	stop()
	if err := c.Run(stopped); err != nil { // closes its listener
		t.Fatal(err)
	}
	c, err = start("127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	if c.advertised != c.Addr() {
		t.Errorf("advertised %q, want the bound address %q", c.advertised, c.Addr())
	}
	// Published in the group of live writers once running.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	testkit.WaitFor(t, "the writer to join the group", func() bool {
		ms, _, err := co.Members(context.Background(), layout.WriterMembers)
		return err == nil && len(ms) == 1 && ms[0].ID == "w1" && string(ms[0].Data) == c.Addr()
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ms, _, _ := co.Members(context.Background(), layout.WriterMembers); len(ms) != 0 {
		t.Errorf("members after the writer stopped: %v", ms)
	}
}
