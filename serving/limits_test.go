package serving

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/httpsrv"
)

func idleConns(t *testing.T, addr string, n int) {
	t.Helper()
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
}

func gathered(t *testing.T, s *Server, name string) float64 {
	t.Helper()
	mfs, err := s.deps.Metrics.(prometheus.Gatherer).Gather()
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

// TestQueryPortIdleClientsDoNotLockOut: 256 idle connections (the query
// port's cap) do not keep a new client from querying. (Before, the port
// stopped accepting at the cap.)
func TestQueryPortIdleClientsDoNotLockOut(t *testing.T) {
	s := newServer(t, &fakeSource{apps: testApps(t)}, func(c *Config, d *Deps) { c.ThriftListen = "127.0.0.1:0" })
	run(t, s)
	idleConns(t, s.ThriftAddr(), 256)
	apps, err := thriftClient(t, s).Apps(t.Context())
	if err != nil || len(apps) != 2 {
		t.Fatalf("apps with the port full of idle connections: %v %v", apps, err)
	}
	if n := gathered(t, s, "freeway_listener_connections_evicted_total"); n < 1 {
		t.Fatalf("evictions counted %v", n)
	}
}

// TestHTTPIdleClientsDoNotLockOut: at the HTTP connection cap, a new
// client is served; an idle connection makes room.
func TestHTTPIdleClientsDoNotLockOut(t *testing.T) {
	s := newServer(t, &fakeSource{apps: testApps(t)}, func(c *Config, d *Deps) { d.HTTP = httpsrv.Limits{MaxConnections: 8} })
	run(t, s)
	idleConns(t, s.Addr(), 8)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	resp, err := client.Get("http://" + s.Addr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if n := gathered(t, s, "freeway_listener_connections_evicted_total"); n < 1 {
		t.Fatalf("evictions counted %v", n)
	}
}

// TestHTTPSlowBodyCutAtReadTimeout: a request whose body trickles in (a
// byte every 50ms) is cut at the read timeout. (Before, only the headers
// had a timeout and the connection was held for as long as the body
// kept coming.)
func TestHTTPSlowBodyCutAtReadTimeout(t *testing.T) {
	s := newServer(t, &fakeSource{apps: testApps(t)}, func(c *Config, d *Deps) {
		d.HTTP = httpsrv.Limits{ReadTimeout: 500 * time.Millisecond}
	})
	run(t, s)
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "POST /api/v1/query HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, err := io.Copy(io.Discard, c) // the answer, then the end
		closed <- err
	}()
	for range 400 { // 20s of trickle
		select {
		case err := <-closed:
			if err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("connection not closed: %v", err)
			}
			return
		case <-time.After(50 * time.Millisecond):
		}
		if _, err := c.Write([]byte("x")); err != nil && strings.Contains(err.Error(), "broken pipe") {
			return
		}
	}
	t.Fatal("the slow body was still being read after 20s")
}
