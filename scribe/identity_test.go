package scribe

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// copyDir copies the regular files of src (recursively) into dst, as a
// backup tool or a VM image copy would.
func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o755)
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(to)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
	if err != nil {
		t.Fatalf("copy %s to %s: %v", src, dst, err)
	}
}

// logShipped logs es to a and waits until the queue has shipped them all.
func logShipped(t testing.TB, a *agent, es []string) {
	t.Helper()
	c := dial(t, a.Addr())
	for _, m := range es {
		mustLog(t, c, []*scribethrift.LogEntry{{Category: "c", Message: []byte(m)}})
	}
	testkit.WaitFor(t, "the queue shipped", func() bool { return a.q.Stats().Entries == 0 })
}

func names(prefix string, n int) []string {
	var out []string
	for i := range n {
		out = append(out, prefix+"-"+string(rune('a'+i)))
	}
	return out
}

// A queue directory restored from a backup used to number new entries
// with sequence numbers the original had already shipped: Puma dropped
// them as duplicates until the numbering caught up.
func TestRestoredQueueDirLosesNothing(t *testing.T) {
	up := startUpstream(t, "127.0.0.1:0", nil)
	dir := filepath.Join(t.TempDir(), "queue")
	backup := filepath.Join(t.TempDir(), "backup")
	cfg := testConfig(dir, up.srv.Addr())

	a := startAgent(t, cfg)
	logShipped(t, a, names("before", 5))
	a.stopped(t)
	copyDir(t, dir, backup)

	a = startAgent(t, cfg)
	logShipped(t, a, names("original", 5))
	a.stopped(t)

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	copyDir(t, backup, dir)
	a = startAgent(t, cfg)
	logShipped(t, a, names("restored", 5))
	a.stopped(t)

	up.received(t) // no identity with two contents
	wantOnce(t, up.pumaCounts(), slices.Concat(names("before", 5), names("original", 5), names("restored", 5)))
}

// Two agents running from copies of one queue directory (a copied VM
// image) used to share the agent id and the numbering: Puma kept one
// agent's entries and dropped the other's. Entries that were in the queue
// when it was copied are shipped by both and counted once.
func TestCopiedQueueDirsBothDeliver(t *testing.T) {
	upAddr := deadAddr(t)
	dir := filepath.Join(t.TempDir(), "queue")
	cfg := testConfig(dir, upAddr)
	a := startAgent(t, cfg)
	c := dial(t, a.Addr())
	pending := names("pending", 5)
	for _, m := range pending {
		mustLog(t, c, []*scribethrift.LogEntry{{Category: "c", Message: []byte(m)}})
	}
	a.stopped(t)
	copied := filepath.Join(t.TempDir(), "copy")
	copyDir(t, dir, copied)

	up := startUpstream(t, upAddr, nil)
	one := startAgent(t, cfg)
	two := startAgent(t, testConfig(copied, upAddr))
	if one.ID() != two.ID() {
		t.Fatalf("the copies have different agent ids")
	}
	logShipped(t, one, names("one", 5))
	logShipped(t, two, names("two", 5))
	up.received(t) // no identity with two contents
	wantOnce(t, up.pumaCounts(), slices.Concat(pending, names("one", 5), names("two", 5)))
}

// The incarnation is a secret: it goes upstream in Batch.incarnation and
// nowhere else (not in logs, metrics or fb303).
func TestIncarnationIsNeverLoggedOrExposed(t *testing.T) {
	up := startUpstream(t, "127.0.0.1:0", func(n int, _ *scribethrift.Batch) (scribethrift.ResultCode, error) {
		if n == 0 {
			return scribethrift.ResultCode_TRY_LATER, nil // a retry is logged at debug level
		}
		return scribethrift.ResultCode_OK, nil
	})
	a := startAgent(t, testConfig(t.TempDir(), up.srv.Addr()))
	c := dial(t, a.Addr())
	mustLog(t, c, entries("c", "s", 0, 3))
	mustLog(t, c, []*scribethrift.LogEntry{{Category: "", Message: []byte("blank")}})
	testkit.WaitFor(t, "the queue shipped", func() bool { return a.q.Stats().Entries == 0 })
	inc := up.callsSnapshot()[0].GetIncarnation()
	if len(inc) != 32 {
		t.Fatalf("incarnation %d characters long", len(inc))
	}
	if strings.Contains(a.logs.String(), inc) {
		t.Fatal("the incarnation was logged")
	}
	mfs, err := a.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if strings.Contains(mf.String(), inc) {
			t.Fatalf("metric %s exposes the incarnation", mf.GetName())
		}
	}
	counters, err := c.GetCounters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for k := range counters {
		if strings.Contains(k, inc) {
			t.Fatalf("fb303 counter %q exposes the incarnation", k)
		}
	}
	details, _ := c.GetStatusDetails(context.Background())
	if strings.Contains(details, inc) {
		t.Fatal("fb303 status details expose the incarnation")
	}
}
