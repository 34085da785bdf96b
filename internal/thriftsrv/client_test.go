package thriftsrv

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestClientNamesAnHTTPPeer: a client pointed at an HTTP port is told the
// peer answered HTTP, not "Incorrect frame size (1213486160)" ("HTTP"
// read as a frame size).
func TestClientNamesAnHTTPPeer(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	c, err := Dial(addr, Limits{}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A frame of some call, holding a newline (a length, a line), where
	// the HTTP server ends the request line it then answers 400 to.
	frame := append(make([]byte, 4), "\x80\x01\x00\x01\x00\x00\x00\x03Log\x00\x00\x00\x01\x0b\x00\x01\x00\x00\x00\x0a\r\n"...)
	if err := c.WriteFrame(context.Background(), frame); err != nil {
		t.Fatal(err)
	}
	_, err = c.Transport.Read(make([]byte, 16))
	if err == nil || !strings.Contains(err.Error(), addr+" answered HTTP") || !strings.Contains(err.Error(), "wrong port?") {
		t.Fatalf("reading the answer of an HTTP server: %v, want one saying it answered HTTP", err)
	}
}
