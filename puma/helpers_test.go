package puma

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/apps/appstest"
	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
	"github.com/freeway-dev/freeway/internal/enginetest"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/boltstore"
	"github.com/freeway-dev/freeway/internal/store/hbasestore"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/ptail"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// t0 is a minute boundary: the start of the first window of most tests.
const t0 = int64(1_700_000_040_000)

func testLog() *slog.Logger {
	if os.Getenv("PUMA_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// orders is the app most tests use (appstest.Orders) with event times in
// Unix milliseconds, 5 minutes of allowed lateness and an hour of
// retention.
func orders(t testing.TB, mod ...func(*apps.Spec)) *apps.App {
	t.Helper()
	s := appstest.Orders("unix_ms")
	s.AllowedLateness = config.Duration(5 * time.Minute)
	s.Retention = config.Duration(time.Hour)
	for _, m := range mod {
		m(&s)
	}
	return appstest.Compile(t, s)
}

// order is one line of the orders app; amount nil leaves the field out.
func order(tsMs int64, region, kind string, amount any) []byte {
	m := map[string]any{"ts": tsMs, "region": region, "kind": kind}
	if amount != nil {
		m["amount"] = amount
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// env is a set of embedded backends under a test directory, shared by the
// nodes a test starts: a localfs dfs, a bbolt store and an inproc hub.
type env struct {
	t       testing.TB
	root    string
	fs      *localfs.FS
	st      store.Store
	hub     *inproc.Hub
	apps    []*apps.App
	buckets int

	mu   sync.Mutex
	segs map[string]uint64 // bucket dir → last segment seq
	// comp, if set, makes publish write v2 segments (as Freeway's
	// writers do) whose segment seq stores its blocks as comp(seq)
	// says; nil: v1 segments. compressed counts the blocks stored
	// compressed.
	comp       func(seq uint64) segment.Compression
	compressed int
}

func newEnv(t testing.TB, appList ...*apps.App) *env {
	t.Helper()
	dir := t.TempDir()
	fs, err := localfs.New(filepath.Join(dir, "dfs"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := boltstore.Open(filepath.Join(dir, "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &env{t: t, root: filepath.Join(dir, "dfs"), fs: fs, st: st, hub: inproc.NewHub(), apps: appList, buckets: 1, segs: map[string]uint64{}}
}

func (e *env) config(id string) Config {
	cfg := DefaultConfig()
	cfg.ID = id
	cfg.CheckpointInterval = config.Duration(100 * time.Millisecond)
	cfg.PollInterval = config.Duration(5 * time.Millisecond)
	return cfg
}

func (e *env) deps(st store.Store, co *inproc.Session) Deps {
	return Deps{
		FS: e.fs, Store: st, Coord: co, Apps: e.apps,
		Buckets: func(string) int { return e.buckets },
		Common:  component.Common{Log: testLog()},
	}
}

// node returns a node on the env's backends with its own coord session.
func (e *env) node(id string, mod ...func(*Config, *Deps)) *Puma {
	e.t.Helper()
	cfg := e.config(id)
	co := e.hub.Session()
	e.t.Cleanup(func() { co.Close() })
	deps := e.deps(e.st, co)
	for _, m := range mod {
		m(&cfg, &deps)
	}
	p, err := New(cfg, deps)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// publish writes blocks as the next segment of a bucket, under a hidden
// name first and then renamed, as a writer publishes it. It returns the
// position after the last block.
func (e *env) publish(category string, bucket int, blocks ...*segment.Block) ptail.Position {
	e.t.Helper()
	dir := filepath.Join(e.root, filepath.FromSlash(names.BucketDir(category, bucket)))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	e.mu.Lock()
	e.segs[dir]++
	seq := e.segs[dir]
	name := names.SegmentName(1, seq)
	e.mu.Unlock()
	var b []byte
	if e.comp == nil {
		b = []byte(segment.Magic)
		for _, blk := range blocks {
			b = segment.AppendBlock(b, blk)
		}
	} else {
		enc := segment.NewEncoder()
		b = enc.AppendHeader(nil)
		for _, blk := range blocks {
			start := len(b)
			b = segment.AppendUnstampedAs(b, blk, e.comp(seq))
			if err := enc.Stamp(b[start:]); err != nil {
				e.t.Fatal(err)
			}
			if segment.Compression(b[start+segment.BlockHeaderSize]) != segment.Uncompressed {
				e.mu.Lock()
				e.compressed++
				e.mu.Unlock()
			}
		}
	}
	tmp := filepath.Join(dir, "_"+name)
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		e.t.Fatal(err)
	}
	return ptail.Position{Segment: name, Offset: int64(len(b))}
}

// arrival is the arrival time of the blocks tests make: a day after t0,
// so that the event times of the tests' lines are in its past.
const arrival = t0 + 24*3600_000

// stock is a block from a stock Scribe client (no agent, no sequence).
func stock(lines ...[]byte) *segment.Block {
	return &segment.Block{ArrivalMs: arrival, Messages: lines}
}

// agent is a block from Freeway's agent with sequence numbers from first.
func agent(id string, first uint64, lines ...[]byte) *segment.Block {
	b := &segment.Block{Agent: id, ArrivalMs: arrival, Messages: lines}
	for i := range lines {
		b.Seqs = append(b.Seqs, first+uint64(i))
	}
	return b
}

// running is a node's Run in a goroutine.
type running struct {
	p      *Puma
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func start(t testing.TB, p *Puma) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{p: p, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- p.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels Run and waits for it (final checkpoints included).
func (r *running) stop(t testing.TB) {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("node did not stop")
		}
	})
}

// waitCommitted waits until every shard of the node is ready and has
// committed pos (the end of what was published).
func waitCommitted(t testing.TB, p *Puma, pos ptail.Position) {
	t.Helper()
	testkit.Eventually(t, "commit of "+pos.String(), func() error {
		if !p.Ready() {
			return fmt.Errorf("not ready")
		}
		for _, s := range p.Statuses() {
			if s.Committed != pos.String() {
				return fmt.Errorf("shard %s/%d committed %s (read %s)", s.Category, s.Bucket, s.Committed, s.Position)
			}
		}
		return nil
	})
}

// waitRead waits until the node's shard orders/bucket has read up to pos.
func waitRead(t testing.TB, p *Puma, bucket int, pos ptail.Position) {
	t.Helper()
	testkit.Eventually(t, "read of "+pos.String(), func() error {
		for _, s := range p.Statuses() {
			if s.Category == "orders" && s.Bucket == bucket {
				if s.Position != pos.String() {
					return fmt.Errorf("shard %s/%d at %s", s.Category, s.Bucket, s.Position)
				}
				return nil
			}
		}
		return fmt.Errorf("no shard orders/%d", bucket)
	})
}

type querier interface {
	Query(ctx context.Context, q Query) (*Result, error)
}

// rows is a readable, sorted form of a query's answer.
func rows(t testing.TB, src querier, q Query) []string {
	t.Helper()
	if q.App == "" {
		q.App = "orders"
	}
	if q.FromMs == 0 && q.ToMs == 0 {
		q.FromMs, q.ToMs = t0-24*3600_000, t0+24*3600_000
	}
	res, err := src.Query(context.Background(), q)
	if err != nil {
		t.Fatalf("query %+v: %v", q, err)
	}
	return formatRows(res)
}

func formatRows(res *Result) []string {
	var out []string
	for _, r := range res.Rows {
		out = append(out, formatRow(r))
	}
	return out
}

func formatRow(r Row) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%+d..%+ds", (r.WindowStartMs-t0)/1000, (r.WindowEndMs-t0)/1000)
	b.WriteString(" " + formatMap(r.Key))
	vals := map[string]string{}
	for k, v := range r.Values {
		if v == nil {
			vals[k] = "null"
		} else {
			vals[k] = fmt.Sprint(v)
		}
	}
	b.WriteString(" " + formatMap(vals))
	return b.String()
}

func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+"="+m[k])
	}
	return "{" + strings.Join(parts, " ") + "}"
}

func equalRows(t testing.TB, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("%s:\ngot:\n  %s\nwant:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// hbaseCategory opens the test HBase (skipping without one, as
// enginetest does) and returns it with a category of this run's own,
// named prefix plus random hex: one table serves every run (tables are
// not dropped), and the category's commit, cell and deduplication rows
// are deleted when the test ends.
func hbaseCategory(t *testing.T, prefix string) (store.Store, string) {
	t.Helper()
	addr := enginetest.Addr(t, enginetest.HBase)
	st, err := hbasestore.Open("hbase://" + addr + "/fwtest_puma_")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	b := make([]byte, 4)
	_, _ = crand.Read(b)
	category := prefix + hex.EncodeToString(b)
	t.Cleanup(func() {
		ctx := context.Background()
		for _, p := range []string{"c/" + category + "/", "s/" + category + "/", "d/" + category + "/"} {
			if err := st.DeleteUpTo(ctx, "puma", p, store.PrefixEnd(p), math.MaxInt64-1); err != nil {
				t.Errorf("clean up %s: %v", p, err)
			}
		}
	})
	return st, category
}
