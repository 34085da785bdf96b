package freeway

import (
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/freeway-dev/freeway/puma"
)

// TestLoopbackPortsRefuseReboundHosts: a Puma node's admin port and its
// puma.listen, bound to 127.0.0.1 without tokens, answer a request for
// another host than an IP address or localhost (a web page's name
// rebound to 127.0.0.1) 403, and serve one for a name of
// auth.allowed_hosts or for the advertised name (serving's fan-out asks
// puma.listen by it).
func TestLoopbackPortsRefuseReboundHosts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pumaAddr := ln.Addr().String()
	ln.Close()
	cfg := testConfig(t.TempDir())
	cfg.Puma.Listen = pumaAddr
	cfg.Auth.AllowedHosts = []string{"dash.example"}
	cfg.Advertise = "node.example"
	r := startWith(t, cfg, Puma, Options{AdminListen: "127.0.0.1:0"})
	get := func(u, host string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", u, nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, _ = io.ReadAll(resp.Body)
		return resp.StatusCode
	}
	for _, u := range []string{r.p.AdminURL() + "/metrics", "http://" + pumaAddr + puma.AppsPath} {
		if code := get(u, "evil.example"); code != http.StatusForbidden {
			t.Errorf("GET %s for host evil.example: %d, want 403", u, code)
		}
		for _, host := range []string{"dash.example", "node.example:1", "localhost", "127.0.0.1"} {
			if code := get(u, host); code != http.StatusOK {
				t.Errorf("GET %s for host %s: %d, want 200", u, host, code)
			}
		}
	}
}
