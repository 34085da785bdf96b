package browser

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestPage: a page served on loopback is loaded, evaluated, its console
// and exceptions collected, and screenshotted as a PNG of its viewport.
func TestPage(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte(`<!doctype html><title>t</title><body style="background:#f00"><p id=x>41</p>
<script>console.log("hello", 7); setTimeout(() => { document.getElementById("x").textContent = "42"; }, 100);
setTimeout(() => { throw new Error("boom") }, 0);</script>`))
	}))
	defer srv.Close()
	c, err := Start(Need(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	v, err := c.Version(ctx)
	if err != nil || !strings.Contains(v, "/") {
		t.Fatalf("version %q: %v\n%s", v, err, c.Stderr())
	}
	p, err := c.NewPage(ctx, 320, 200)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Navigate(ctx, srv.URL); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(ctx, `document.getElementById("x").textContent === "42"`); err != nil {
		t.Fatal(err)
	}
	var sum struct{ A, B int }
	if err := p.Eval(ctx, `Promise.resolve({A: 1 + 1, B: document.querySelectorAll("p").length})`, &sum); err != nil || sum.A != 2 || sum.B != 1 {
		t.Fatalf("eval: %+v %v", sum, err)
	}
	if err := p.Eval(ctx, `nope.nope`, nil); err == nil || !strings.Contains(err.Error(), "nope is not defined") {
		t.Fatalf("an exception: %v", err)
	}
	png, err := p.Screenshot(ctx, false)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("screenshot: %v, %d bytes", err, len(png))
	}
	logs := strings.Join(p.Logs(), "\n")
	if !strings.Contains(logs, "console.log: hello 7") || !strings.Contains(logs, "Error: boom") {
		t.Fatalf("logs:\n%s", logs)
	}
}
