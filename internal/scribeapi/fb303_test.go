package scribeapi

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
)

type controls struct{ reinit, shut atomic.Int32 }

func (c *controls) control() component.Control {
	return component.Control{
		Options:      func() map[string]string { return map[string]string{"agent.listen": "127.0.0.1:1463", "buckets": "4"} },
		Reinitialize: func() { c.reinit.Add(1) },
		Shutdown:     func() { c.shut.Add(1) },
	}
}

func listenWith(t *testing.T, addr string, info Info) (*Server, *testkit.LogBuffer) {
	t.Helper()
	logs := &testkit.LogBuffer{}
	srv, err := Listen(addr, &recorder{}, info, thriftsrv.Limits{}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return srv, logs
}

// TestFB303OptionsAndControl: getOptions reports the configuration;
// reinitialize and shutdown (oneway, as scribe_ctrl sends them) reach the
// process from the local host; setOption is refused with a reason and
// the connection goes on.
func TestFB303OptionsAndControl(t *testing.T) {
	var ctl controls
	srv, _ := listenWith(t, "127.0.0.1:0", Info{Name: "t", Control: ctl.control()})
	c, err := Dial(srv.Addr(), thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	opts, err := c.GetOptions(ctx)
	if err != nil || opts["agent.listen"] != "127.0.0.1:1463" || len(opts) != 2 {
		t.Fatalf("getOptions: %v %v", opts, err)
	}
	if v, err := c.GetOption(ctx, "buckets"); err != nil || v != "4" {
		t.Fatalf("getOption: %q %v", v, err)
	}
	if err := c.SetOption(ctx, "buckets", "8"); err == nil || !strings.Contains(err.Error(), "edit the configuration file") {
		t.Fatalf("setOption: %v", err)
	}
	if err := c.Reinitialize(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// Calls on a connection are served in order: once getName is
	// answered, the oneway calls before it have been.
	if name, err := c.GetName(ctx); err != nil || name != "t" {
		t.Fatalf("getName after the control calls: %q %v", name, err)
	}
	if ctl.reinit.Load() != 1 || ctl.shut.Load() != 1 {
		t.Fatalf("reinitialize %d, shutdown %d times, want once each", ctl.reinit.Load(), ctl.shut.Load())
	}
}

// TestFB303ControlOnlyFromLocalHost: a control call from another host is
// refused, counted and logged, and does nothing.
func TestFB303ControlOnlyFromLocalHost(t *testing.T) {
	var ctl controls
	reg := prometheus.NewRegistry()
	srv, logs := listenWith(t, "127.0.0.1:0", Info{Name: "t", Control: ctl.control(), Metrics: reg})
	remote := thriftsrv.WithPeer(context.Background(), &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 40000})
	if err := srv.service.Reinitialize(remote); err == nil {
		t.Error("reinitialize from another host accepted")
	}
	if err := srv.service.Shutdown(remote); err == nil {
		t.Error("shutdown from another host accepted")
	}
	if err := srv.service.SetOption(remote, "a", "b"); err == nil || !strings.Contains(err.Error(), "only from the local host") {
		t.Errorf("setOption from another host: %v", err)
	}
	if err := srv.service.Shutdown(context.Background()); err == nil {
		t.Error("shutdown from an unknown peer accepted")
	}
	mapped := thriftsrv.WithPeer(context.Background(), &net.TCPAddr{IP: net.ParseIP("::ffff:127.0.0.1"), Port: 1})
	if err := srv.service.Reinitialize(mapped); err != nil {
		t.Errorf("reinitialize from an IPv4-mapped loopback address: %v", err)
	}
	if ctl.shut.Load() != 0 || ctl.reinit.Load() != 1 {
		t.Fatalf("shutdown %d, reinitialize %d times", ctl.shut.Load(), ctl.reinit.Load())
	}
	mfs, _ := reg.Gather()
	var refused float64
	for _, mf := range mfs {
		if mf.GetName() == "freeway_fb303_control_refused_total" {
			for _, m := range mf.GetMetric() {
				refused += m.GetCounter().GetValue()
			}
		}
	}
	if refused != 4 {
		t.Errorf("refusals counted %v, want 4", refused)
	}
	if !strings.Contains(logs.String(), "fb303 control call refused: not from the local host") || !strings.Contains(logs.String(), "192.0.2.7") {
		t.Errorf("log: %s", logs.String())
	}

	// Without hooks the calls say they are not supported.
	bare, _ := listenWith(t, "127.0.0.1:0", Info{Name: "bare"})
	local := thriftsrv.WithPeer(context.Background(), &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err := bare.service.Reinitialize(local); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("reinitialize without a hook: %v", err)
	}
}

// TestFB303ControlRefusedOverTheNetwork does the same through a real
// connection from a non-loopback address of this host, when it has one.
func TestFB303ControlRefusedOverTheNetwork(t *testing.T) {
	var ip net.IP
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			ip = n.IP
			break
		}
	}
	if ip == nil {
		t.Skip("no non-loopback IPv4 address on this host")
	}
	var ctl controls
	srv, _ := listenWith(t, net.JoinHostPort(ip.String(), "0"), Info{Name: "t", Control: ctl.control()})
	c, err := Dial(srv.Addr(), thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetName(ctx); err != nil {
		t.Fatal(err)
	}
	if ctl.shut.Load() != 0 {
		t.Fatal("shutdown honoured from a non-loopback peer")
	}
	if opts, err := c.GetOptions(ctx); err != nil || len(opts) != 2 {
		t.Fatalf("getOptions from a non-loopback peer: %v %v", opts, err)
	}
}

// TestFB303ControlRefusedWithAdminToken: with an admin token configured
// the control calls, which cannot carry it, are refused even from the
// local host, saying what to use instead; getOptions still answers.
func TestFB303ControlRefusedWithAdminToken(t *testing.T) {
	var ctl controls
	reg := prometheus.NewRegistry()
	control := ctl.control()
	control.TokenRequired = true
	srv, logs := listenWith(t, "127.0.0.1:0", Info{Name: "t", Control: control, Metrics: reg})
	c, err := Dial(srv.Addr(), thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	local := thriftsrv.WithPeer(ctx, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err := srv.service.Reinitialize(local); err == nil || !strings.Contains(err.Error(), "POST /admin/reload") {
		t.Errorf("reinitialize with an admin token configured: %v", err)
	}
	if err := srv.service.Shutdown(local); err == nil || !strings.Contains(err.Error(), "POST /admin/shutdown") {
		t.Errorf("shutdown with an admin token configured: %v", err)
	}
	// Through a connection too (oneway: no answer, nothing done).
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if opts, err := c.GetOptions(ctx); err != nil || len(opts) != 2 {
		t.Fatalf("getOptions: %v %v", opts, err)
	}
	if ctl.shut.Load() != 0 || ctl.reinit.Load() != 0 {
		t.Fatalf("shutdown %d, reinitialize %d times", ctl.shut.Load(), ctl.reinit.Load())
	}
	mfs, _ := reg.Gather()
	var refused float64
	for _, mf := range mfs {
		if mf.GetName() == "freeway_fb303_control_refused_total" {
			for _, m := range mf.GetMetric() {
				refused += m.GetCounter().GetValue()
			}
		}
	}
	if refused != 3 {
		t.Errorf("refusals counted %v, want 3", refused)
	}
	if !strings.Contains(logs.String(), "an admin token is configured and control calls cannot carry one") {
		t.Errorf("log: %s", logs.String())
	}
}
