package serving

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/browser"
)

// TestControlCrossSiteForm: without an admin token, POST /admin/shutdown
// is honoured from the local host, and the operator's browser on that
// host is the local host. A page of another site that the operator opens
// must not stop the process with a form that posts itself there (no
// JavaScript of the attacker's needs to read an answer for that).
func TestControlCrossSiteForm(t *testing.T) {
	chromium := browser.Need(t)
	var shutdowns atomic.Int32
	s := newServer(t, &fakeSource{apps: testApps(t)}, func(_ *Config, d *Deps) { d.Control.Shutdown = func() { shutdowns.Add(1) } })
	// The answer to the form's post, once the handler is done with it.
	posted := make(chan int, 1)
	h := s.Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		if r.URL.Path == "/admin/shutdown" {
			posted <- rec.code
		}
	}))
	defer srv.Close()
	// The attacker's page, on another site (localhost is not 127.0.0.1).
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, fmt.Sprintf(`<!doctype html><form method="POST" action="%s/admin/shutdown"><input name="x" value="1"></form>
<script>document.forms[0].submit()</script>`, srv.URL))
	}))
	defer evil.Close()

	c, err := browser.Start(chromium)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	page, err := c.NewPage(ctx, 800, 600)
	if err != nil {
		t.Fatal(err)
	}
	if err := page.Navigate(ctx, strings.Replace(evil.URL, "127.0.0.1", "localhost", 1)+"/"); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-posted:
		if code != http.StatusForbidden || shutdowns.Load() != 0 {
			t.Fatalf("a cross-site form post to /admin/shutdown: %d, %d shutdowns; want 403 and none", code, shutdowns.Load())
		}
	case <-ctx.Done():
		t.Fatalf("the form was never posted\n%s", strings.Join(page.Logs(), "\n"))
	}
}
