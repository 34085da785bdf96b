package freeway

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// These tests reproduce, through the whole pipeline, how an agent's
// identity used to turn exactly-once into at-most-once: Puma drops an
// entry at or below its sender's sequence high water, and a restored or
// copied queue directory, or a forged batch, reused a live identity.

// copyDir copies the regular files of src into dst (created), as a backup
// tool or a VM image copy would.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(out, data, 0o644)
	})
	if err != nil {
		t.Fatalf("copy %s to %s: %v", src, dst, err)
	}
}

// TestRestoredAgentDirLosesNothing: an agent whose queue directory is
// restored from an older backup numbers its new entries from where the
// backup stood, below what Puma has seen from it. Its new entries must be
// counted all the same.
func TestRestoredAgentDirLosesNothing(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	queueDir := filepath.Join(dir, "agent")
	backup := filepath.Join(t.TempDir(), "agent-backup")

	first := orders(1000, 0, base)
	r := start(t, cfg)
	send(t, r.p.Agent.Addr(), first, 100)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(first))
	r.stop(t)
	copyDir(t, queueDir, backup)

	second := orders(1000, 5, base)
	r = start(t, cfg)
	send(t, r.p.Agent.Addr(), second, 100)
	all := slices.Concat(first, second)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(all))
	r.stop(t)

	if err := os.RemoveAll(queueDir); err != nil {
		t.Fatal(err)
	}
	copyDir(t, backup, queueDir)
	third := orders(1000, 9, base)
	r = start(t, cfg)
	defer r.stop(t)
	send(t, r.p.Agent.Addr(), third, 100)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(append(all, third...)))
}

// TestCopiedAgentDirLosesNothing: two agents started from copies of one
// queue directory (a cloned VM image) send at the same time, with the
// same agent id and interleaved sequence numbers. Every entry of both
// must be counted.
func TestCopiedAgentDirLosesNothing(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	first := orders(500, 0, base)
	r := start(t, cfg)
	send(t, r.p.Agent.Addr(), first, 100)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(first))
	r.stop(t)

	clone := t.TempDir()
	copyDir(t, filepath.Join(dir, "agent"), filepath.Join(clone, "agent"))
	r = start(t, cfg)
	defer r.stop(t)
	agentCfg := testConfig(clone)
	agentCfg.Agent.Upstream = []string{r.p.Calligraphus.Addr()}
	twin := startTarget(t, agentCfg, Agent)
	defer twin.stop(t)
	if twin.p.Agent.ID() != r.p.Agent.ID() {
		t.Fatalf("the copy has agent id %s, the original %s: not a copy", twin.p.Agent.ID(), r.p.Agent.ID())
	}

	second, third := orders(1500, 3, base), orders(1500, 8, base)
	done := make(chan struct{})
	go func() {
		defer close(done)
		send(t, twin.p.Agent.Addr(), third, 50)
	}()
	send(t, r.p.Agent.Addr(), second, 50)
	<-done
	all := append(append(first, second...), third...)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(all))
}

// TestForgedBatchCannotSuppressAnAgent: anyone who can reach the writer
// may send a LogBatch naming a live agent's id (which is logged) with a
// huge sequence number. The forged entries are entries like any others,
// but the agent's later entries must still be counted.
func TestForgedBatchCannotSuppressAnAgent(t *testing.T) {
	cfg := testConfig(t.TempDir())
	r := start(t, cfg)
	defer r.stop(t)
	first := orders(600, 0, base)
	send(t, r.p.Agent.Addr(), first, 100)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(first))

	c, err := scribeapi.Dial(r.p.Calligraphus.Addr(), thriftsrv.Limits{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	forged := orders(6, 1, base)
	guess := "00000000000000000000000000000000"
	for i, b := range []*scribethrift.Batch{
		{AgentID: r.p.Agent.ID(), FirstSeq: 1 << 40},                      // as an agent before incarnations
		{AgentID: r.p.Agent.ID(), FirstSeq: 1 << 40, Incarnation: &guess}, // a guessed incarnation
	} {
		for _, o := range forged[3*i : 3*i+3] {
			b.Messages = append(b.Messages, &scribethrift.LogEntry{Category: "orders", Message: o.json()})
		}
		if rc, err := c.LogBatch(context.Background(), b); err != nil || rc != scribethrift.ResultCode_OK {
			t.Fatalf("forged batch %d: %v %v", i, rc, err)
		}
	}

	second := orders(600, 4, base)
	send(t, r.p.Agent.Addr(), second, 100)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(append(append(first, forged...), second...)))
}
