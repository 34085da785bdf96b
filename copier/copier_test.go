package copier

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/boltstore"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/ptail"
)

// env is a source and a destination root, a store and a coordination hub,
// which several copiers (the "processes" of a test) share.
type env struct {
	src, dst dfs.FS
	st       store.Store
	hub      *inproc.Hub
}

func newEnv(t *testing.T) *env {
	t.Helper()
	src, err := localfs.New(filepath.Join(t.TempDir(), "src"))
	if err != nil {
		t.Fatal(err)
	}
	dst, err := localfs.New(filepath.Join(t.TempDir(), "dst"))
	if err != nil {
		t.Fatal(err)
	}
	return &env{src: src, dst: dst, st: openStore(t, filepath.Join(t.TempDir(), "store.db")), hub: inproc.NewHub()}
}

func openStore(t *testing.T, file string) store.Store {
	t.Helper()
	s, err := boltstore.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// node is one copier with its own coord session, registry and log.
type node struct {
	*Copier
	reg     *prometheus.Registry
	session *inproc.Session
	logs    *testkit.LogBuffer
}

type option func(*Config, *Deps)

func withDest(d dfs.FS) option   { return func(_ *Config, deps *Deps) { deps.Dest = d } }
func withSource(s dfs.FS) option { return func(_ *Config, deps *Deps) { deps.Source = s } }
func withStore(s store.Store) option {
	return func(_ *Config, deps *Deps) { deps.Store = s }
}
func withConfig(f func(*Config)) option { return func(c *Config, _ *Deps) { f(c) } }

func (e *env) copier(t *testing.T, id string, opts ...option) *node {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Destination = "file:///unused"
	cfg.ID = id
	cfg.Interval = config.Duration(10 * time.Millisecond)
	reg := prometheus.NewRegistry()
	session := e.hub.Session()
	t.Cleanup(func() { session.Close() })
	logs := &testkit.LogBuffer{}
	deps := Deps{
		Source: e.src,
		Dest:   e.dst,
		Store:  e.st,
		Coord:  session,
		Common: component.Common{
			Log:     slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			Metrics: reg,
		},
	}
	for _, o := range opts {
		o(&cfg, &deps)
	}
	c, err := New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	return &node{Copier: c, reg: reg, session: session, logs: logs}
}

// metric sums the samples of a metric family, whatever their labels.
func (n *node) metric(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := n.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			total += value(m)
		}
	}
	return total
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return 0
}

// segmentBytes is a segment of n blocks, each of a few messages.
func segmentBytes(tag string, blocks int) []byte {
	return segmentBytesAs(tag, blocks, segment.Uncompressed)
}

// segmentMessages are the messages of segmentBytes(tag, blocks).
func segmentMessages(tag string, blocks int) []string {
	var out []string
	for i := range blocks {
		for k := range 3 {
			out = append(out, fmt.Sprintf("%s block %d message %d", tag, i, k))
		}
	}
	return out
}

// segmentBytesAs is segmentBytes with the blocks stored as c says, as a
// writer stores them (segment.AppendUnstampedAs, then Stamp).
func segmentBytesAs(tag string, blocks int, c segment.Compression) []byte {
	enc := segment.NewEncoder()
	data := enc.AppendHeader(nil)
	for i := range blocks {
		b := &segment.Block{Agent: "agent", ArrivalMs: 1_700_000_000_000, Seqs: []uint64{uint64(3*i + 1), uint64(3*i + 2), uint64(3*i + 3)}}
		for k := range 3 {
			b.Messages = append(b.Messages, fmt.Appendf(nil, "%s block %d message %d", tag, i, k))
		}
		start := len(data)
		data = segment.AppendUnstampedAs(data, b, c)
		if err := enc.Stamp(data[start:]); err != nil {
			panic(err)
		}
	}
	return data
}

// readSegment reads the segment name of fsys, failing on any damage: its
// messages, and how many of its blocks are stored compressed.
func readSegment(t *testing.T, fsys dfs.FS, name string) (msgs []string, compressed int) {
	t.Helper()
	data := readFile(t, fsys, name)
	r, err := segment.NewReader(bytes.NewReader(data), 0)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var b segment.Block
	for {
		off := r.Offset()
		if err := r.Next(&b); err == io.EOF {
			return msgs, compressed
		} else if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if segment.Compression(data[off+segment.BlockHeaderSize]) != segment.Uncompressed {
			compressed++
		}
		for _, m := range b.Messages {
			msgs = append(msgs, string(m))
		}
	}
}

// publish writes segment seq of epoch in bucket cat/b of fsys the way a
// writer does: under its temporary name, closed, then renamed.
func publish(t *testing.T, fsys dfs.FS, cat string, b int, epoch int64, seq uint64, blocks int) string {
	t.Helper()
	name := path.Join(layout.BucketDir(cat, b), layout.SegmentName(epoch, seq))
	if err := dfs.WriteFile(fsys, name, segmentBytes(name, blocks)); err != nil {
		t.Fatal(err)
	}
	return name
}

func readFile(t *testing.T, fsys dfs.FS, name string) []byte {
	t.Helper()
	data, err := dfs.ReadFile(fsys, name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// files lists every file under dir of fsys, hidden ones included.
func files(t *testing.T, fsys dfs.FS, dir string) []string {
	t.Helper()
	var out []string
	infos, err := fsys.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, fi := range infos {
		name := path.Join(dir, fi.Name())
		if dir == "" {
			name = fi.Name()
		}
		if fi.IsDir() {
			out = append(out, files(t, fsys, name)...)
		} else {
			out = append(out, name)
		}
	}
	return out
}

// sameTree fails unless every name is in both roots with equal contents.
func sameTree(t *testing.T, e *env, names []string) {
	t.Helper()
	for _, n := range names {
		if !bytes.Equal(readFile(t, e.src, n), readFile(t, e.dst, n)) {
			t.Errorf("%s differs between source and destination", n)
		}
	}
	got := files(t, e.dst, "")
	want := slices.Clone(names)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("destination holds %q, want %q", got, want)
	}
}

func copyOnce(t *testing.T, n *node) Stats {
	t.Helper()
	st, err := n.CopyOnce(context.Background())
	if err != nil {
		t.Fatalf("CopyOnce: %v (stats %+v)", err, st)
	}
	return st
}

// writes returns the names rec created and renamed files to, but for
// New's probe (distinct).
func writes(rec *dfstest.Faulty) (creates, renames []string) {
	for _, c := range rec.Calls(dfstest.OpCreate, dfstest.OpRename) {
		if strings.HasPrefix(c.Name, probePrefix) {
			continue
		}
		if c.Op == dfstest.OpCreate {
			creates = append(creates, c.Name)
		} else {
			renames = append(renames, c.To)
		}
	}
	return creates, renames
}

// flip corrupts what is written, as a disk or a network may silently do.
func flip(_ string, p []byte) []byte {
	if len(p) > 20 {
		p[20] ^= 0xff
	}
	return p
}

// publishAs is publish with the blocks stored as c says.
func publishAs(t *testing.T, fsys dfs.FS, cat string, b int, epoch int64, seq uint64, blocks int, c segment.Compression) string {
	t.Helper()
	name := path.Join(layout.BucketDir(cat, b), layout.SegmentName(epoch, seq))
	if err := dfs.WriteFile(fsys, name, segmentBytesAs(name, blocks, c)); err != nil {
		t.Fatal(err)
	}
	return name
}

// publishSome publishes a few buckets of two categories and returns the
// segment names in the order a writer published them. The older
// writer's blocks are compressed (s2), the newer one's not: a writer
// whose compression changed at its restart.
func publishSome(t *testing.T, fsys dfs.FS) []string {
	t.Helper()
	var names []string
	for _, cat := range []string{"access", "errors"} {
		for b := range 3 {
			for seq := range uint64(4) {
				names = append(names, publishAs(t, fsys, cat, b, 7, seq, 3, segment.S2))
			}
			// A newer writer's segments sort after the older one's.
			names = append(names, publish(t, fsys, cat, b, 9, 0, 2))
		}
	}
	return names
}

func TestCopiesEverySegmentInOrder(t *testing.T) {
	e := newEnv(t)
	names := publishSome(t, e.src)
	rec := dfstest.NewFaulty(e.dst)
	n := e.copier(t, "a", withDest(rec), withConfig(func(c *Config) { c.Concurrency = 3 }))

	st := copyOnce(t, n)
	if st.Copied != len(names) || st.Seen != len(names) || st.Buckets != 6 || st.Lag != 0 || st.Errors != 0 {
		t.Fatalf("stats %+v, want %d copied of 6 buckets", st, len(names))
	}
	sameTree(t, e, names)
	// The copies read back, compressed blocks and plain ones.
	compressed := 0
	for _, name := range names {
		got, c := readSegment(t, e.dst, name)
		blocks := 3
		if strings.Contains(name, layout.SegmentName(9, 0)) {
			blocks = 2
		}
		if want := segmentMessages(name, blocks); !slices.Equal(got, want) {
			t.Errorf("copy of %s reads back %q, want %q", name, got, want)
		}
		compressed += c
	}
	if compressed != 2*3*4*3 {
		t.Errorf("%d compressed blocks copied, want the older writer's %d", compressed, 2*3*4*3)
	}

	// Within each bucket, segments were published in name order.
	_, renames := writes(rec)
	byBucket := map[string][]string{}
	for _, r := range renames {
		byBucket[path.Dir(r)] = append(byBucket[path.Dir(r)], r)
	}
	for dir, got := range byBucket {
		if !slices.IsSorted(got) || len(got) != 5 {
			t.Errorf("bucket %s published %q, want 5 in name order", dir, got)
		}
	}
	var size int64
	for _, name := range names {
		size += int64(len(readFile(t, e.src, name)))
	}
	if st.Bytes != size {
		t.Errorf("stats say %d bytes, the segments hold %d", st.Bytes, size)
	}
	if got := n.metric(t, "freeway_copier_segments_copied_total"); got != float64(len(names)) {
		t.Errorf("segments copied metric %v, want %d", got, len(names))
	}
	if got := n.metric(t, "freeway_copier_bytes_copied_total"); got != float64(size) {
		t.Errorf("bytes copied metric %v, want %d", got, size)
	}
	if got := n.metric(t, "freeway_copier_lag_segments"); got != 0 {
		t.Errorf("lag %v after a full pass", got)
	}

	// Progress: each bucket's mark is its last segment.
	for _, cat := range []string{"access", "errors"} {
		for b := range 3 {
			last, err := LastCopied(context.Background(), e.st, "copier", cat, b)
			if err != nil {
				t.Fatal(err)
			}
			if want := layout.SegmentName(9, 0); last != want {
				t.Errorf("progress of %s/%d is %q, want %q", cat, b, last, want)
			}
		}
	}

	// A second pass finds nothing to do and touches nothing.
	creates, _ := writes(rec)
	st = copyOnce(t, n)
	if st != (Stats{Buckets: 6, Duration: st.Duration}) {
		t.Errorf("second pass %+v, want nothing done", st)
	}
	if again, _ := writes(rec); len(again) != len(creates) {
		t.Errorf("second pass created %q", again[len(creates):])
	}
}

func TestCategoriesFilter(t *testing.T) {
	e := newEnv(t)
	publishSome(t, e.src)
	n := e.copier(t, "a", withConfig(func(c *Config) { c.Categories = []string{"errors", "missing"} }))
	st := copyOnce(t, n)
	if st.Copied != 15 || st.Buckets != 3 {
		t.Fatalf("stats %+v, want the 15 segments of errors only", st)
	}
	for _, f := range files(t, e.dst, "") {
		if !strings.HasPrefix(f, "errors/") {
			t.Errorf("copied %s, which is not in category errors", f)
		}
	}
}

func TestRestartResumesFromStoredProgress(t *testing.T) {
	e := newEnv(t)
	names := publishSome(t, e.src)
	dbFile := filepath.Join(t.TempDir(), "progress.db")
	first, err := boltstore.Open(dbFile)
	if err != nil {
		t.Fatal(err)
	}
	if st := copyOnce(t, e.copier(t, "a", withStore(first))); st.Copied != len(names) {
		t.Fatalf("first run %+v", st)
	}
	first.Close()

	// A new process: new store handle on the same file, new coordinator.
	more := publish(t, e.src, "access", 1, 9, 1, 2)
	e.hub = inproc.NewHub()
	rec := dfstest.NewFaulty(e.dst)
	src := dfstest.NewFaulty(e.src)
	n := e.copier(t, "b", withStore(openStore(t, dbFile)), withDest(rec), withSource(src))
	st := copyOnce(t, n)
	if st.Seen != 1 || st.Copied != 1 || st.Skipped != 0 {
		t.Fatalf("after restart %+v, want only the new segment copied", st)
	}
	if creates, _ := writes(rec); len(creates) != 1 || !isTempOf(creates[0], more) {
		t.Errorf("after restart created %q, want a temporary file of %s only", creates, more)
	}
	if got := src.Count(dfstest.OpOpen); got != 1 {
		t.Errorf("after restart opened %d source files, want 1", got)
	}
	sameTree(t, e, append(names, more))
}

func TestEmptyStoreCopiesNothingTwice(t *testing.T) {
	for _, verify := range []string{VerifyChecksum, VerifySize} {
		t.Run(verify, func(t *testing.T) {
			e := newEnv(t)
			names := publishSome(t, e.src)
			if st := copyOnce(t, e.copier(t, "a")); st.Copied != len(names) {
				t.Fatalf("first run %+v", st)
			}

			// Progress lost (a new store), destination kept.
			rec := dfstest.NewFaulty(e.dst)
			n := e.copier(t, "b", withDest(rec), withStore(openStore(t, filepath.Join(t.TempDir(), "empty.db"))),
				withConfig(func(c *Config) { c.Verify = verify }))
			st := copyOnce(t, n)
			if st.Copied != 0 || st.Skipped != len(names) || st.Errors != 0 {
				t.Fatalf("re-run from scratch %+v, want every segment skipped", st)
			}
			if creates, renames := writes(rec); len(creates)+len(renames) != 0 {
				t.Errorf("re-run wrote: created %q, renamed to %q", creates, renames)
			}
			if got := n.metric(t, "freeway_copier_segments_skipped_total"); got != float64(len(names)) {
				t.Errorf("skipped metric %v, want %d", got, len(names))
			}
			// And the progress it recorded makes the next pass a no-op.
			if st := copyOnce(t, n); st.Seen != 0 {
				t.Errorf("pass after re-run %+v", st)
			}
			sameTree(t, e, names)
		})
	}
}

func TestDifferentDestinationFileIsReplaced(t *testing.T) {
	e := newEnv(t)
	name := publish(t, e.src, "access", 0, 1, 0, 4)
	// Same size, other contents: caught by the checksum only.
	bad := bytes.ToUpper(readFile(t, e.src, name))
	if err := dfs.WriteFile(e.dst, name, bad); err != nil {
		t.Fatal(err)
	}
	n := e.copier(t, "a")
	st := copyOnce(t, n)
	if st.Copied != 1 || st.Replaced != 1 {
		t.Fatalf("stats %+v, want the differing file copied over", st)
	}
	sameTree(t, e, []string{name})
	if !strings.Contains(n.logs.String(), "destination segment differs from the source") {
		t.Error("replacing a differing destination file was not logged")
	}
}

func TestCrashLeftoversAreRedone(t *testing.T) {
	e := newEnv(t)
	names := publishSome(t, e.src)
	// A crashed copier left: a partial copy of the first segment of a
	// bucket under its temporary name, and the temporary file of a segment
	// that retention has since removed from the source.
	partial := readFile(t, e.src, names[0])[:30]
	if err := dfs.WriteFile(e.dst, dfs.TempName(names[0]), partial); err != nil {
		t.Fatal(err)
	}
	gone := path.Join(layout.BucketDir("errors", 2), layout.SegmentName(1, 0))
	if err := dfs.WriteFile(e.dst, dfs.TempName(gone), []byte("half a segm")); err != nil {
		t.Fatal(err)
	}
	// Someone else's hidden file, not a temporary copy of a segment, stays.
	if err := dfs.WriteFile(e.dst, "errors/2/_SUCCESS", nil); err != nil {
		t.Fatal(err)
	}
	if err := dfs.WriteFile(e.src, "errors/2/_SUCCESS", nil); err != nil {
		t.Fatal(err)
	}

	n := e.copier(t, "a")
	st := copyOnce(t, n)
	if st.Copied != len(names) || st.Errors != 0 {
		t.Fatalf("stats %+v", st)
	}
	sameTree(t, e, append(slices.Clone(names), "errors/2/_SUCCESS"))
	if got := n.metric(t, "freeway_copier_temp_files_removed_total"); got != 2 {
		t.Errorf("temp files removed metric %v, want 2", got)
	}
}

func TestCrashedCopyTempIsRemovedWhenCopiedAgain(t *testing.T) {
	e := newEnv(t)
	first := publish(t, e.src, "access", 0, 1, 0, 2)
	n := e.copier(t, "a")
	stop := run(t, n)
	testkit.WaitFor(t, "the first segment at the destination", func() bool { return exists(e.dst, first) })
	// Under the same lease (no sweep of the bucket again), a temporary file
	// of the next segment is in the way of its copy.
	next := path.Join(layout.BucketDir("access", 0), layout.SegmentName(1, 1))
	_, epoch, err := n.session.Holder(context.Background(), "copier")
	if err != nil {
		t.Fatal(err)
	}
	if err := dfs.WriteFile(e.dst, dfs.TempName(next+"."+strconv.FormatInt(epoch, 16)), []byte("torn")); err != nil {
		t.Fatal(err)
	}
	publish(t, e.src, "access", 0, 1, 1, 2)
	testkit.WaitFor(t, "the next segment at the destination", func() bool { return exists(e.dst, next) })
	stop()
	sameTree(t, e, []string{first, next})
	if got := n.metric(t, "freeway_copier_temp_files_removed_total"); got != 1 {
		t.Errorf("temp files removed metric %v, want 1", got)
	}
}

func TestHiddenAndForeignFilesAreIgnored(t *testing.T) {
	e := newEnv(t)
	real := publish(t, e.src, "access", 0, 1, 0, 2)
	for _, name := range []string{
		dfs.TempName(path.Join("access/0", layout.SegmentName(1, 1))), // being written
		"access/0/_" + layout.SegmentName(1, 2),
		"access/0/notes.txt",
		"access/0/" + layout.SegmentName(1, 3) + ".bak",
		"access/1x/" + layout.SegmentName(1, 0), // not a bucket directory
		"access/01/" + layout.SegmentName(1, 0), // not as layout.BucketDir names it
		".trash/0/" + layout.SegmentName(1, 0),  // not a category
		"README",
	} {
		if err := dfs.WriteFile(e.src, name, segmentBytes(name, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.src.MkdirAll("access/0/" + layout.SegmentName(1, 4)); err != nil { // a directory, not a segment
		t.Fatal(err)
	}
	n := e.copier(t, "a")
	st := copyOnce(t, n)
	if st.Copied != 1 || st.Seen != 1 {
		t.Fatalf("stats %+v, want the one published segment copied", st)
	}
	sameTree(t, e, []string{real})
}

func TestVanishedSegmentIsCountedAndPassedOver(t *testing.T) {
	e := newEnv(t)
	var names []string
	for seq := range uint64(3) {
		names = append(names, publish(t, e.src, "access", 0, 1, seq, 2))
	}
	// Retention removes the middle segment after the copier listed it.
	src := dfstest.NewFaulty(e.src)
	src.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpOpen && c.Name == names[1] {
			e.src.Remove(c.Name)
		}
		return nil
	})
	n := e.copier(t, "a", withSource(src))
	st := copyOnce(t, n)
	if st.Copied != 2 || st.Vanished != 1 || st.Errors != 0 || st.Lag != 0 {
		t.Fatalf("stats %+v, want 2 copied and 1 vanished", st)
	}
	if got := n.metric(t, "freeway_copier_segments_vanished_total"); got != 1 {
		t.Errorf("vanished metric %v", got)
	}
	if !strings.Contains(n.logs.String(), "level=WARN msg=\"segment removed from the source before it was copied\"") {
		t.Errorf("vanished segment not logged as a warning:\n%s", n.logs)
	}
	sameTree(t, e, []string{names[0], names[2]})
	if st := copyOnce(t, n); st.Seen != 0 {
		t.Errorf("next pass %+v, want the vanished segment passed over", st)
	}
}

func TestCorruptCopyIsNotPublished(t *testing.T) {
	e := newEnv(t)
	names := []string{publish(t, e.src, "access", 0, 1, 0, 3), publish(t, e.src, "access", 0, 1, 1, 3)}
	rec := dfstest.NewFaulty(e.dst)
	rec.SetTamper(flip)
	n := e.copier(t, "a", withDest(rec))
	st, err := n.CopyOnce(context.Background())
	if err == nil || st.Errors != 1 || st.Copied != 0 || st.Lag != 2 {
		t.Fatalf("corrupted copy: stats %+v, err %v; want one error and nothing copied", st, err)
	}
	if !strings.Contains(err.Error(), "CRC-32C") {
		t.Errorf("error %q does not say the checksum differs", err)
	}
	if got := files(t, e.dst, ""); len(got) != 0 {
		t.Errorf("destination holds %q after a failed copy", got)
	}
	if got := n.metric(t, "freeway_copier_errors_total"); got != 1 {
		t.Errorf("errors metric %v, want 1 (op verify)", got)
	}
	if got := n.metric(t, "freeway_copier_lag_segments"); got != 2 {
		t.Errorf("lag metric %v, want 2", got)
	}
	// The next pass retries from the failed segment.
	rec.SetTamper(nil)
	if st := copyOnce(t, n); st.Copied != 2 {
		t.Fatalf("retry %+v", st)
	}
	sameTree(t, e, names)
}

func TestLargeSegmentStreams(t *testing.T) {
	e := newEnv(t)
	// About 6 MiB: several copy buffers.
	name := path.Join("big", "0", layout.SegmentName(1, 0))
	data := []byte(segment.Magic)
	msg := bytes.Repeat([]byte("x"), 60<<10)
	for range 100 {
		data = segment.AppendBlock(data, &segment.Block{Messages: [][]byte{msg}})
	}
	if err := dfs.WriteFile(e.src, name, data); err != nil {
		t.Fatal(err)
	}
	st := copyOnce(t, e.copier(t, "a"))
	if st.Copied != 1 || st.Bytes != int64(len(data)) {
		t.Fatalf("stats %+v", st)
	}
	sameTree(t, e, []string{name})
}

func TestProgressIsLogged(t *testing.T) {
	e := newEnv(t)
	publishSome(t, e.src)
	var ticks atomic.Int64
	clock := func() time.Time { return time.Unix(1_700_000_000+ticks.Add(1), 0) } // a second per reading
	n := e.copier(t, "a", func(c *Config, d *Deps) { c.Concurrency = 1; d.Now = clock })
	copyOnce(t, n)
	logs := n.logs.String()
	if got := strings.Count(logs, `msg="copy pass progress"`); got < 5 {
		t.Errorf("%d progress lines, want one per second of the pass:\n%s", got, logs)
	}
	if !strings.Contains(logs, `msg="copy pass done" component=copier copied=30`) || !strings.Contains(logs, "component=copier") {
		t.Errorf("no summary line with the component:\n%s", logs)
	}
}

func exists(fsys dfs.FS, name string) bool {
	_, err := fsys.Stat(name)
	return err == nil
}

func run(t *testing.T, n *node) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestRunPicksUpNewSegments(t *testing.T) {
	e := newEnv(t)
	first := publish(t, e.src, "access", 0, 1, 0, 2)
	n := e.copier(t, "a")
	stop := run(t, n)
	testkit.WaitFor(t, "the first segment at the destination", func() bool { return exists(e.dst, first) })

	var later []string
	for seq := range uint64(5) {
		later = append(later, publish(t, e.src, "access", 0, 1, seq+1, 2))
	}
	later = append(later, publish(t, e.src, "errors", 3, 1, 0, 2)) // a new category and bucket
	testkit.WaitFor(t, "the later segments at the destination", func() bool {
		for _, name := range later {
			if !exists(e.dst, name) {
				return false
			}
		}
		return true
	})
	stop()
	sameTree(t, e, append([]string{first}, later...))
	if got := n.metric(t, "freeway_copier_active"); got != 0 {
		t.Errorf("active gauge %v after Run returned", got)
	}
	// The pass that copied the later segments may have been cut short by
	// stop, after its renames: only the first is sure to have ended.
	if got := n.metric(t, "freeway_copier_passes_total"); got < 1 {
		t.Errorf("passes metric %v", got)
	}
}

func TestOneCopierHoldsTheLease(t *testing.T) {
	e := newEnv(t)
	a := e.copier(t, "a")
	b := e.copier(t, "b")
	stopA := run(t, a)
	testkit.WaitFor(t, "copier a active", func() bool { return a.metric(t, "freeway_copier_active") == 1 })
	stopB := run(t, b)
	defer stopB()
	testkit.WaitFor(t, "copier b standing by", func() bool {
		return strings.Contains(b.logs.String(), "lease held by another process; standing by")
	})

	var names []string
	for seq := range uint64(5) {
		names = append(names, publish(t, e.src, "access", int(seq%2), 1, seq, 2))
	}
	testkit.WaitFor(t, "a's copies", func() bool { return a.metric(t, "freeway_copier_segments_copied_total") == 5 })
	if got := b.metric(t, "freeway_copier_segments_copied_total") + b.metric(t, "freeway_copier_segments_skipped_total"); got != 0 {
		t.Errorf("standby copier b did %v segments while a held the lease", got)
	}
	if _, err := b.CopyOnce(context.Background()); !errors.Is(err, coord.ErrHeld) {
		t.Errorf("CopyOnce on the standby: %v, want ErrHeld", err)
	}

	stopA()
	more := publish(t, e.src, "access", 0, 2, 0, 2)
	testkit.WaitFor(t, "b's copy after a stopped", func() bool { return b.metric(t, "freeway_copier_segments_copied_total") >= 1 })
	stopB()
	if got := b.metric(t, "freeway_copier_segments_copied_total") + b.metric(t, "freeway_copier_segments_skipped_total"); got != 1 {
		t.Errorf("b did %v segments, want only the new one (a's progress is in the store)", got)
	}
	sameTree(t, e, append(names, more))
}

func TestLostLeaseStopsCopier(t *testing.T) {
	e := newEnv(t)
	// a retries the lease only long after losing it, so that b takes it.
	a := e.copier(t, "a", withConfig(func(c *Config) { c.Interval = config.Duration(time.Hour) }))
	b := e.copier(t, "b")
	run(t, a)
	testkit.WaitFor(t, "copier a active", func() bool { return a.metric(t, "freeway_copier_active") == 1 })
	run(t, b)
	a.session.Expire() // a's ZooKeeper session, say, expired
	testkit.WaitFor(t, "copier b active", func() bool { return b.metric(t, "freeway_copier_active") == 1 })
	testkit.WaitFor(t, "copier a standing by", func() bool { return a.metric(t, "freeway_copier_active") == 0 })
	name := publish(t, e.src, "access", 0, 1, 0, 2)
	testkit.WaitFor(t, "b's copy", func() bool { return exists(e.dst, name) })
	if got := a.metric(t, "freeway_copier_segments_copied_total"); got != 0 {
		t.Errorf("copier a copied %v segments after losing its lease", got)
	}
	if !strings.Contains(a.logs.String(), "copier lease lost") {
		t.Errorf("a did not log the loss of its lease:\n%s", a.logs)
	}
}

func TestStaleProgressWriteIsFenced(t *testing.T) {
	e := newEnv(t)
	publish(t, e.src, "access", 0, 1, 0, 2)
	a := e.copier(t, "a")
	lease, err := a.session.Acquire(context.Background(), "copier", "a")
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Release(context.Background()) //nolint:errcheck // released when the test ends, best effort
	if _, err := a.pass(context.Background(), lease, nil, true); err != nil {
		t.Fatal(err)
	}
	// Another copier (that a has not heard of) records progress of the
	// bucket; a, still believing it holds the lease, must not overwrite it.
	if _, err := advance(context.Background(), e.st, "copier", "access/0", a.marks["access/0"], layout.SegmentName(5, 0), ptail.Position{}, "other@1", 0); err != nil {
		t.Fatal(err)
	}
	publish(t, e.src, "access", 0, 1, 1, 2)
	// a's cached mark is behind the stored one; its write is refused.
	_, err = a.pass(context.Background(), lease, nil, true)
	if !errors.Is(err, errFenced) {
		t.Fatalf("pass after a foreign progress write: %v, want errFenced", err)
	}
	last, err := LastCopied(context.Background(), e.st, "copier", "access", 0)
	if err != nil {
		t.Fatal(err)
	}
	if last != layout.SegmentName(5, 0) {
		t.Errorf("progress is %q, the other copier's %q was overwritten", last, layout.SegmentName(5, 0))
	}
}

// TestProgressWriteRefusedForItsOwnLostWrite: a progress write is made
// and answered with an error, and the copier's look at the row after it
// fails too (or the store makes it after answering): its next write, from
// the mark before, is refused. The row holds its own earlier write, not
// another copier's: it is not fenced, and goes on from the row; a newer
// holder's write still fences it.
func TestProgressWriteRefusedForItsOwnLostWrite(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	st := &hookedStore{Store: e.st, before: func(n int, _ string, _ []store.Cell) error {
		if n == 1 {
			return fmt.Errorf("write %d: %w: %w", n, errInjected, dfstest.ErrApplied)
		}
		return nil
	}}
	m0, err := advance(ctx, st, "copier", "a/0", mark{}, "s0", ptail.Position{}, "me@1", 1000)
	if err != nil {
		t.Fatal(err)
	}
	st.beforeGet = func(string) error { return errInjected }
	if _, err := advance(ctx, st, "copier", "a/0", m0, "s1", ptail.Position{}, "me@1", 2000); !errors.Is(err, errInjected) {
		t.Fatalf("write answered with an error: %v", err)
	}
	st.beforeGet = nil
	m1, err := advance(ctx, st, "copier", "a/0", m0, "s2", ptail.Position{}, "me@1", 3000)
	if !errors.Is(err, errAnswerLost) || errors.Is(err, errFenced) {
		t.Fatalf("write refused for its own: %v, want errAnswerLost", err)
	}
	if m1.last != "s1" || m1.owner != "me@1" {
		t.Fatalf("mark after the refusal: %+v, want the row's", m1)
	}
	m2, err := advance(ctx, st, "copier", "a/0", m1, "s2", ptail.Position{}, "me@1", 3000)
	if err != nil || m2.last != "s2" {
		t.Fatalf("write from the row: %+v %v", m2, err)
	}
	if _, err := advance(ctx, e.st, "copier", "a/0", m2, "s3", ptail.Position{}, "me@2", 4000); err != nil {
		t.Fatal(err)
	}
	if _, err := advance(ctx, st, "copier", "a/0", m2, "s4", ptail.Position{}, "me@1", 5000); !errors.Is(err, errFenced) {
		t.Errorf("write after a newer holder's: %v, want errFenced", err)
	}
}

func TestProgressTimestampsIncrease(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	m, err := advance(ctx, e.st, "copier", "a/0", mark{}, "x", ptail.Position{}, "o", 1000)
	if err != nil {
		t.Fatal(err)
	}
	// A host whose clock is behind still writes the newest version.
	m2, err := advance(ctx, e.st, "copier", "a/0", m, "y", ptail.Position{}, "o", 10)
	if err != nil {
		t.Fatal(err)
	}
	if m2.ts <= m.ts {
		t.Errorf("timestamp %d after %d", m2.ts, m.ts)
	}
	if last, _ := LastCopied(ctx, e.st, "copier", "a", 0); last != "y" {
		t.Errorf("progress %q, want y", last)
	}
}

func TestConfigValidate(t *testing.T) {
	def := DefaultConfig()
	if err := def.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if def.Enabled() {
		t.Error("the default config enables the copier")
	}
	for _, tc := range []struct {
		path string
		edit func(*Config)
	}{
		{"$.copier.destination", func(c *Config) { c.Destination = "s3://bucket/x" }},
		{"$.copier.destination", func(c *Config) { c.Destination = "://" }},
		{"$.copier.interval", func(c *Config) { c.Interval = 0 }},
		{"$.copier.concurrency", func(c *Config) { c.Concurrency = 0 }},
		{"$.copier.verify", func(c *Config) { c.Verify = "md5" }},
		{"$.copier.table", func(c *Config) { c.Table = "" }},
		{"$.copier.progress_interval", func(c *Config) { c.ProgressInterval = config.Duration(time.Millisecond) }},
		{"$.copier.categories[1]", func(c *Config) { c.Categories = []string{"ok", ""} }},
		{"$.copier.categories[1]", func(c *Config) { c.Categories = []string{"ok", "ok"} }},
	} {
		c := DefaultConfig()
		c.Destination = "hdfs://127.0.0.1:9000/warehouse"
		tc.edit(&c)
		var fe *config.FieldError
		err := c.Validate()
		if !errors.As(err, &fe) || fe.Path != strings.TrimPrefix(tc.path, "$.copier.") {
			t.Errorf("%s: Validate() = %v, want an error at that path, relative to the section", tc.path, err)
		}
		if !errors.As(config.Under("$.copier", err), &fe) || fe.Path != tc.path {
			t.Errorf("%s: placed: %v", tc.path, err)
		}
	}
	// A period is told as a file writes it ("7m", not Go's "7m0s").
	c := DefaultConfig()
	c.Destination = "hdfs://127.0.0.1:9000/warehouse"
	c.MergePeriod = config.Duration(7 * time.Minute)
	if err := c.Validate(); err == nil || !strings.HasSuffix(err.Error(), "not 7m") {
		t.Errorf("merge_period 7m: %v", err)
	}
}

func TestNewRefusesSourceAsDestination(t *testing.T) {
	e := newEnv(t)
	cfg := DefaultConfig()
	if _, err := New(cfg, Deps{Source: e.src, Dest: e.src, Store: e.st, Coord: e.hub.Session()}); err == nil {
		t.Error("New accepted the source as destination")
	}
}

// TestNewRefusesSourceUnderAnotherName: a destination that is the source
// spelled otherwise (a symbolic link), inside it, or around it is refused
// at New, and the probe leaves nothing behind. Accepted, the copier's
// first pass would delete a writer's segment in progress in the source,
// taking it for a temporary file of its own.
func TestNewRefusesSourceUnderAnotherName(t *testing.T) {
	dir := t.TempDir()
	srcRoot := filepath.Join(dir, "src")
	src, err := localfs.New(srcRoot)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(srcRoot, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	publish(t, src, "access", 0, 1, 0, 2)
	inProgress := path.Join(layout.BucketDir("access", 0), layout.TempSegment(layout.SegmentName(1, 1)))
	f, err := src.Create(inProgress) // a writer's segment in progress
	if err != nil {
		t.Fatal(err)
	}
	f.Close()

	for _, tc := range []struct{ what, dst string }{
		{"the source through a symbolic link", filepath.Join(dir, "link")},
		{"inside the source", filepath.Join(srcRoot, "backup")},
		{"inside the source through a symbolic link", filepath.Join(dir, "link", "backup")},
		{"around the source", dir},
	} {
		dst, err := localfs.New(tc.dst)
		if err != nil {
			t.Fatal(err)
		}
		e := &env{src: src, dst: dst, st: openStore(t, filepath.Join(t.TempDir(), "store.db")), hub: inproc.NewHub()}
		cfg := DefaultConfig()
		_, err = New(cfg, Deps{Source: src, Dest: dst, Store: e.st, Coord: e.hub.Session()})
		if err != nil {
			t.Logf("%s: %v", tc.what, err)
			continue
		}
		n := e.copier(t, "a")
		_, perr := n.CopyOnce(context.Background())
		t.Errorf("New accepted %s (%s) as the destination of %s; in-progress file still there after a pass: %v (pass: %v)",
			tc.what, dst, src, exists(src, inProgress), perr)
		if err := dfs.WriteFile(src, inProgress, nil); err != nil { // for the next case
			t.Fatal(err)
		}
	}
	if got := files(t, src, ""); len(got) != 2 {
		t.Errorf("source holds %q after the probes, want the segment and the file in progress", got)
	}

	// A sibling directory is a destination like any other.
	dst, err := localfs.New(filepath.Join(dir, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(DefaultConfig(), Deps{Source: src, Dest: dst, Store: openStore(t, filepath.Join(t.TempDir(), "s.db")), Coord: inproc.NewHub().Session()}); err != nil {
		t.Fatalf("New refused a sibling destination: %v", err)
	}
	if got := files(t, dst, ""); len(got) != 0 {
		t.Errorf("the probe left %q at the destination", got)
	}
}

var _ io.Reader = ctxReader{}

// TestNewRemovesProbesCrashesLeft: a copier that crashed between writing
// its probe at the destination and removing it left the probe there; a
// copier started once the probe is older than any probe in progress can
// be removes it, and leaves a recent one alone (another copier's, which
// is starting).
func TestNewRemovesProbesCrashesLeft(t *testing.T) {
	e := newEnv(t)
	root, err := e.dst.(dfs.Rooted).RootPath()
	if err != nil {
		t.Fatal(err)
	}
	old, recent := probePrefix+"0123456789abcdef", probePrefix+"fedcba9876543210"
	for name, age := range map[string]time.Duration{old: probeMaxAge + time.Minute, recent: time.Minute} {
		if err := dfs.WriteFile(e.dst, name, nil); err != nil {
			t.Fatal(err)
		}
		at := time.Now().Add(-age)
		if err := os.Chtimes(filepath.Join(root, name), at, at); err != nil {
			t.Fatal(err)
		}
	}
	e.copier(t, "a")
	if got := files(t, e.dst, ""); !slices.Equal(got, []string{recent}) {
		t.Errorf("destination holds %q after New, want only the recent probe %s", got, recent)
	}
}

// TestStaleCopierNeverPublishesAPartialSegment: a copier that lost its
// lease without seeing it yet copies the segment the new holder is about
// to publish, and is cut off mid-write: the published copy is still the
// new holder's, whole, not the stale copier's partial one.
func TestStaleCopierNeverPublishesAPartialSegment(t *testing.T) {
	e := newEnv(t)
	name := publish(t, e.src, "access", 0, 1, 1, 5)
	staleDest := &hookedDest{FS: e.dst, writeFails: true, writing: make(chan struct{}), release: make(chan struct{})}
	stale := e.copier(t, "stale", withDest(staleDest))
	staleDone := make(chan error, 1)
	newDest := &hookedDest{FS: e.dst, beforePublish: func() {
		// The new holder has copied and verified the segment: the stale
		// copier copies it too, and is cut off mid-write.
		go func() {
			_, err := stale.pass(context.Background(), staleLease{epoch: 1}, nil, true)
			staleDone <- err
		}()
		<-staleDest.writing
	}}
	holder := e.copier(t, "new", withDest(newDest))
	if st, err := holder.pass(context.Background(), staleLease{epoch: 2}, nil, true); err != nil || st.Copied != 1 {
		t.Fatalf("new holder's pass: %+v %v, want the segment copied", st, err)
	}
	close(staleDest.release)
	if err := <-staleDone; err == nil {
		t.Error("the stale copier's cut-off write was not reported")
	}
	if got, want := readFile(t, e.dst, name), readFile(t, e.src, name); !bytes.Equal(got, want) {
		t.Errorf("published copy holds %d bytes, want the segment's %d", len(got), len(want))
	}
	if last, err := LastCopied(context.Background(), e.st, "copier", "access", 0); err != nil || last != path.Base(name) {
		t.Errorf("last copied %q (%v)", last, err)
	}
}

// isTempOf reports whether tmp is a temporary name of name (any epoch).
func isTempOf(tmp, name string) bool {
	of, _, ok := parseTemp(path.Base(tmp))
	return ok && path.Dir(tmp) == path.Dir(name) && of == path.Base(name)
}
