package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/freeway-dev/freeway/internal/loadgen"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// countingServer is a Scribe server that acknowledges everything and
// says when the first entries arrived.
type countingServer struct {
	mu      sync.Mutex
	entries int
	first   chan struct{}
}

func (s *countingServer) Log(_ context.Context, entries []*scribe.LogEntry) (scribe.ResultCode, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.entries == 0 && len(entries) > 0 {
		close(s.first)
	}
	s.entries += len(entries)
	return scribe.ResultCode_OK, nil
}

func (s *countingServer) LogBatch(context.Context, *scribe.Batch) (scribe.ResultCode, error) {
	return scribe.ResultCode_TRY_LATER, nil
}

// TestLoadGoesOnThroughSIGHUP sends SIGHUP to a running `freeway load`
// (operators send it to every freeway process, and `pkill -HUP freeway`
// meant for the reloads of the long-running ones reaches a load test
// too). It used to kill the load mid-run with Go's default action; it now
// says it has nothing to reload and sends every line.
func TestLoadGoesOnThroughSIGHUP(t *testing.T) {
	bin := freewayBinary(t)
	h := &countingServer{first: make(chan struct{})}
	srv, err := scribeapi.Listen("127.0.0.1:0", h, scribeapi.Info{Name: "test"}, thriftsrv.Limits{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = srv.Serve(ctx) }() // stops when the test ends

	// 3,000 lines at 1,000 a second: the signal arrives long before the
	// end, unless the machine stalls for seconds (then the test says so).
	cmd := exec.Command(bin, "load", "--addr", srv.Addr(), "--count", "3000", "--rate", "1000", "--batch", "10", "--conns", "2", "--json")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	<-h.first
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("freeway load sent SIGHUP ended with %v, want exit 0\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	var sum loadgen.Summary
	if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
		t.Fatalf("summary %q: %v", stdout.String(), err)
	}
	h.mu.Lock()
	got := h.entries
	h.mu.Unlock()
	if sum.Entries != 3000 || got != 3000 {
		t.Fatalf("the load acknowledged %d lines and the server got %d, want 3000", sum.Entries, got)
	}
	if !strings.Contains(stderr.String(), "nothing to reload") {
		t.Errorf("no word that SIGHUP does not reload a load run:\n%s", stderr.String())
	}
}
