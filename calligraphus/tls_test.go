package calligraphus

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/auth/authtest"
	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

func loadTLS(t *testing.T, c auth.TLSConfig) *auth.TLS {
	t.Helper()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	x, err := auth.NewTLS(c, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// TestBatchSequencesNeedVerifiedAgent: with client certificates verified
// (tls.ca_file), a LogBatch from a connection without one is taken as
// from a stock client (no agent id, no sequences), counted and logged;
// one from a verified agent keeps its agent id and sequences. Without a
// CA to verify with, batches keep theirs as before.
func TestBatchSequencesNeedVerifiedAgent(t *testing.T) {
	dir := t.TempDir()
	ca := authtest.NewCA(t, dir, "ca")
	writerCert := ca.Issue(t, dir, "writer")
	agentCert := ca.Issue(t, dir, "agent-1")
	for _, verify := range []bool{true, false} {
		cfg := auth.TLSConfig{CertFile: writerCert.CertFile, KeyFile: writerCert.KeyFile}
		if verify {
			cfg.CAFile = ca.File
		}
		wtls := loadTLS(t, cfg)
		fsys := dfstest.NewFaulty(newLocal(t))
		_, co := inprocCoord(t)
		var logMu sync.Mutex
		var logs bytes.Buffer
		reg := prometheus.NewRegistry()
		now := time.UnixMilli(1_700_000_000_000)
		c, err := New(testConfig(), Deps{FS: fsys, Coord: co, Router: NewRouter(1, nil),
			Common: component.Common{Metrics: reg, Version: "test",
				Log:    slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil)),
				Now:    func() time.Time { return now },
				Shared: component.Shared{TLS: wtls}}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		s := &server{t: t, c: c, reg: reg, cancel: cancel, done: make(chan error, 1)}
		go func() { s.done <- c.Run(ctx) }()
		t.Cleanup(s.stop)

		dialTLS := func(tc *tls.Config) *scribeapi.Client {
			t.Helper()
			cl, err := scribeapi.DialTLS(c.Addr(), tc, thriftsrv.Limits{}, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cl.Close() })
			return cl
		}
		verified := dialTLS(loadTLS(t, auth.TLSConfig{CertFile: agentCert.CertFile, KeyFile: agentCert.KeyFile, CAFile: ca.File}).ClientConfig(c.Addr()))
		roots := x509.NewCertPool()
		roots.AddCert(ca.Cert)
		anonymous := dialTLS(&tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
		if cfg.CAFile == "" {
			anonymous = dialTLS(loadTLS(t, auth.TLSConfig{CertFile: agentCert.CertFile, KeyFile: agentCert.KeyFile, CAFile: ca.File}).ClientConfig(c.Addr()))
		}
		bg := context.Background()
		for cl, b := range map[*scribeapi.Client]*scribethrift.Batch{
			verified:  {AgentID: "agent-1", FirstSeq: 1, ReceivedAtMs: now.Add(-time.Minute).UnixMilli(), Messages: entries("cat", "verified")},
			anonymous: {AgentID: "agent-1", FirstSeq: 7, ReceivedAtMs: now.Add(-time.Minute).UnixMilli(), Messages: entries("cat", "forged", "forged-2")},
		} {
			if rc, err := cl.LogBatch(bg, b); err != nil || rc != scribethrift.ResultCode_OK {
				t.Fatalf("logbatch: %v %v", rc, err)
			}
		}
		mustLog(t, anonymous, entries("cat", "stock"))
		s.stop()
		want := map[string]entry{
			"verified": {Agent: "agent-1", Seq: 1, Arrival: now.Add(-time.Minute).UnixMilli()},
			"forged":   {Agent: "", Seq: 0, Arrival: now.UnixMilli()},
			"forged-2": {Agent: "", Seq: 0, Arrival: now.UnixMilli()},
			"stock":    {Agent: "", Seq: 0, Arrival: now.UnixMilli()},
		}
		wantUnverified := 2.0
		if !verify {
			// No CA: client certificates are not asked for, batches
			// keep their identity as before.
			want["forged"] = entry{Agent: "agent-1", Seq: 7, Arrival: now.Add(-time.Minute).UnixMilli()}
			want["forged-2"] = entry{Agent: "agent-1", Seq: 8, Arrival: now.Add(-time.Minute).UnixMilli()}
			wantUnverified = 0
		}
		got := scan(t, fsys, "cat/0")
		if len(got) != len(want) {
			t.Fatalf("verify=%v: %d entries, want %d", verify, len(got), len(want))
		}
		for _, e := range got {
			w := want[e.Msg]
			if e.Agent != w.Agent || e.Seq != w.Seq || e.Arrival != w.Arrival {
				t.Errorf("verify=%v: %s: agent %q seq %d arrival %d, want %q %d %d", verify, e.Msg, e.Agent, e.Seq, e.Arrival, w.Agent, w.Seq, w.Arrival)
			}
		}
		if n := counter(t, reg, "freeway_calligraphus_entries_unverified_total"); n != wantUnverified {
			t.Errorf("verify=%v: unverified entries counted %v, want %v", verify, n, wantUnverified)
		}
		logMu.Lock()
		line := strings.Contains(logs.String(), "without a verified client certificate")
		logMu.Unlock()
		if line != verify {
			t.Errorf("verify=%v: line about the unverified batch: %v\n%s", verify, line, logs.String())
		}
	}
}

// TestForwardUnderMutualTLS: with client certificates verified
// (tls.ca_file), a batch forwarded from one writer to the holder keeps
// its agent id and sequence numbers there: the forwarding writer offers
// the process's certificate.
func TestForwardUnderMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := authtest.NewCA(t, dir, "ca")
	writerCert := ca.Issue(t, dir, "writer")
	agentCert := ca.Issue(t, dir, "agent-1")
	cfg := auth.TLSConfig{CertFile: writerCert.CertFile, KeyFile: writerCert.KeyFile, CAFile: ca.File}
	fsys := newLocal(t)
	hub, co1 := inprocCoord(t)
	co2 := hub.Session()
	defer co2.Close()
	start := func(id string, co coord.Coord) *server {
		c1 := testConfig()
		c1.ID = id
		reg := prometheus.NewRegistry()
		c, err := New(c1, Deps{FS: fsys, Coord: co, Router: NewRouter(1, nil),
			Common: component.Common{Metrics: reg, Version: "test", Log: slog.New(slog.NewTextHandler(t.Output(), nil)),
				Shared: component.Shared{TLS: loadTLS(t, cfg)}}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		s := &server{t: t, c: c, reg: reg, cancel: cancel, ctx: ctx, done: make(chan error, 1)}
		go func() { s.done <- c.Run(ctx) }()
		t.Cleanup(s.stop)
		return s
	}
	w1, w2 := start("w1", co1), start("w2", co2)
	testkit.WaitFor(t, "both writers to see each other", func() bool {
		return len(w1.c.currentView().ids) == 2 && len(w2.c.currentView().ids) == 2
	})
	agent := func(s *server) *scribeapi.Client {
		cl, err := scribeapi.DialTLS(s.c.Addr(), loadTLS(t, auth.TLSConfig{CertFile: agentCert.CertFile, KeyFile: agentCert.KeyFile, CAFile: ca.File}).ClientConfig(s.c.Addr()), thriftsrv.Limits{}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	bg := context.Background()
	// w1 takes the bucket; then the agent sends to w2, which forwards.
	if rc, err := agent(w1).LogBatch(bg, &scribethrift.Batch{AgentID: "agent-1", FirstSeq: 1, Messages: entries("cat", "at-w1"), Forwarded: thriftBool(true)}); err != nil || rc != scribethrift.ResultCode_OK {
		t.Fatalf("w1: %v %v", rc, err)
	}
	if rc, err := agent(w2).LogBatch(bg, &scribethrift.Batch{AgentID: "agent-1", FirstSeq: 2, Messages: entries("cat", "via-w2", "via-w2-b")}); err != nil || rc != scribethrift.ResultCode_OK {
		t.Fatalf("w2: %v %v", rc, err)
	}
	if got := counter(t, w2.reg, "freeway_calligraphus_entries_forwarded_total", "direction", "out"); got != 2 {
		t.Errorf("w2 forwarded %v entries, want 2", got)
	}
	w1.stop()
	w2.stop()
	got := scan(t, fsys, "cat/0")
	want := []entry{{Msg: "at-w1", Seq: 1}, {Msg: "via-w2", Seq: 2}, {Msg: "via-w2-b", Seq: 3}}
	if len(got) != len(want) {
		t.Fatalf("bucket holds %q", msgs(got))
	}
	for i, e := range got {
		if e.Msg != want[i].Msg || e.Agent != "agent-1" || e.Seq != want[i].Seq {
			t.Errorf("entry %d: %q agent %q seq %d, want %q agent-1 %d", i, e.Msg, e.Agent, e.Seq, want[i].Msg, want[i].Seq)
		}
	}
	if n := counter(t, w1.reg, "freeway_calligraphus_entries_unverified_total"); n != 0 {
		t.Errorf("holder took %v forwarded entries as unverified", n)
	}
}
