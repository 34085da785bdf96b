package copier

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/segment"

	"github.com/freeway-dev/freeway/internal/enginetest"
	"github.com/freeway-dev/freeway/internal/testkit"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/dfs/hdfs"
	"github.com/freeway-dev/freeway/internal/layout"
)

// hdfsRoot opens a fresh root hdfs://<FREEWAY_TEST_HDFS>/freeway-test/
// copier-<random> and removes it when the test ends. Without
// FREEWAY_TEST_HDFS it skips, or fails under FREEWAY_REQUIRE_ENGINES=1.
func hdfsRoot(t *testing.T) (dfs.FS, string) {
	t.Helper()
	addr := enginetest.Addr(t, enginetest.HDFS)
	var b [8]byte
	rand.Read(b[:])
	name := fmt.Sprintf("copier-%x", b)
	url := fmt.Sprintf("hdfs://%s/freeway-test/%s?io_timeout=30s", addr, name)
	fsys, err := hdfs.Open(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		fsys.Close()
		parent, err := hdfs.Open(fmt.Sprintf("hdfs://%s/freeway-test", addr))
		if err != nil {
			t.Errorf("clean up %s: %v", url, err)
			return
		}
		defer parent.Close()
		if err := removeAll(parent, name); err != nil {
			t.Errorf("clean up %s: %v", url, err)
		}
	})
	return fsys, url
}

// removeAll removes name and everything under it through the dfs contract.
func removeAll(fsys dfs.FS, name string) error {
	fi, err := fsys.Stat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		infos, err := fsys.ReadDir(name)
		if err != nil {
			return err
		}
		for _, c := range infos {
			if err := removeAll(fsys, path.Join(name, c.Name())); err != nil {
				return err
			}
		}
	}
	return fsys.Remove(name)
}

func TestHDFSDestination(t *testing.T) {
	dst, url := hdfsRoot(t)
	e := newEnv(t)
	e.dst = dst
	names := publishSome(t, e.src)

	n := e.copier(t, "a", withConfig(func(c *Config) { c.Destination = url }))
	st := copyOnce(t, n)
	if st.Copied != len(names) || st.Errors != 0 {
		t.Fatalf("stats %+v, want %d copied", st, len(names))
	}
	sameTree(t, e, names)
	if st := copyOnce(t, n); st.Seen != 0 {
		t.Errorf("second pass %+v, want nothing to do", st)
	}

	// From an empty store, nothing is copied twice: every segment is found
	// at the destination, read back and compared.
	rec := dfstest.NewFaulty(dst)
	fresh := e.copier(t, "b", withDest(rec), withStore(openStore(t, filepath.Join(t.TempDir(), "empty.db"))))
	st = copyOnce(t, fresh)
	if st.Copied != 0 || st.Skipped != len(names) {
		t.Fatalf("re-run from scratch %+v, want every segment skipped", st)
	}
	if creates, renames := writes(rec); len(creates)+len(renames) != 0 {
		t.Errorf("re-run wrote: created %q, renamed to %q", creates, renames)
	}
}

func TestHDFSCrashedCopyIsRedone(t *testing.T) {
	dst, url := hdfsRoot(t)
	e := newEnv(t)
	e.dst = dst
	var names []string
	for seq := range uint64(3) {
		names = append(names, publish(t, e.src, "access", 0, 4, seq, 50))
	}

	// A copier died while writing the temporary copy of the second
	// segment: the file is still open (under construction, its lease held
	// by the dead client) when the next copier comes.
	crashed, err := hdfs.Open(url)
	if err != nil {
		t.Fatal(err)
	}
	defer crashed.Close()
	f, err := crashed.Create(dfs.TempName(names[1]))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(readFile(t, e.src, names[1])[:100]); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	// And a finished but unpublished copy of a segment retention removed.
	gone := path.Join(layout.BucketDir("access", 0), layout.SegmentName(1, 0))
	g, err := dst.Create(dfs.TempName(gone))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Write([]byte("never published")); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}

	n := e.copier(t, "a", withConfig(func(c *Config) { c.Destination = url }))
	st := copyOnce(t, n)
	if st.Copied != len(names) || st.Errors != 0 {
		t.Fatalf("stats %+v, want %d copied", st, len(names))
	}
	sameTree(t, e, names)
	if got := n.metric(t, "freeway_copier_temp_files_removed_total"); got != 2 {
		t.Errorf("temp files removed metric %v, want 2", got)
	}
	got := files(t, dst, "")
	if !slices.Equal(got, names) {
		t.Errorf("destination holds %q", got)
	}
}

func TestHDFSRunCopiesNewSegments(t *testing.T) {
	dst, url := hdfsRoot(t)
	e := newEnv(t)
	e.dst = dst
	n := e.copier(t, "a", withConfig(func(c *Config) { c.Destination = url }))
	stop := run(t, n)
	var names []string
	for seq := range uint64(4) {
		names = append(names, publish(t, e.src, "access", int(seq%2), 2, seq, 5))
		want := names[len(names)-1]
		testkit.WaitFor(t, want+" at the destination", func() bool { return exists(dst, want) })
	}
	stop()
	sameTree(t, e, names)
}

// TestHDFSMergeKilledMidFile merges from one real HDFS root into another:
// a copier dies with a period file open (the file still under
// construction, its lease held by the dead client), another dies halfway
// through a write, a third right after recording a period it has not
// published; the copier started after them delivers every line once, and
// one started from an empty store rewrites nothing.
func TestHDFSMergeKilledMidFile(t *testing.T) {
	src, _ := hdfsRoot(t)
	dst, url := hdfsRoot(t)
	e := newEnv(t)
	e.src, e.dst = src, dst
	now := time.Now()
	base := now.Truncate(time.Minute).Add(-30 * time.Minute)
	var want []string // per minute
	seq := uint64(0)
	for m := range 3 {
		var minute []string
		for s := range 2 {
			seq++
			at := base.Add(time.Duration(m)*time.Minute + time.Duration(s*20)*time.Second)
			enc := segment.NewEncoder()
			data := enc.AppendHeader(nil)
			msgs := lines(fmt.Sprintf("m%d s%d", m, s), 200)
			b := &segment.Block{ArrivalMs: at.UnixMilli()}
			for _, msg := range msgs {
				b.Messages = append(b.Messages, []byte(msg))
			}
			data = enc.AppendBlock(data, b)
			name := path.Join(layout.BucketDir("web/access", 2), layout.SegmentName(1, seq))
			if err := dfs.WriteFile(src, name, data); err != nil {
				t.Fatal(err)
			}
			minute = append(minute, msgs...)
		}
		want = append(want, text(minute))
	}
	clk := &clock{t: now.Add(3 * time.Hour)}
	merging := func(c *Config, d *Deps) {
		c.Destination = url
		c.MergePeriod = config.Duration(time.Minute)
		c.MergeDelay = config.Duration(time.Hour) // the segments were published just now
		c.Compression = CompressionGzip
		d.Now = clk.Now
	}
	fileOf := func(m int) string {
		return layout.MergedFile("web/access", 2, base.Add(time.Duration(m)*time.Minute), time.Minute, ".gz")
	}

	// 1. A copier died writing the first minute's file.
	dead, err := hdfs.Open(url)
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	f, err := dead.Create(dfs.TempName(fileOf(0)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("half a gzip stream")); err != nil {
		t.Fatal(err)
	}
	// 2. Another one halfway through a write of its own (its 6th call,
	// New's probe counted: it removed the dead one's file, created its
	// own, and writes).
	ffs := &faultFS{FS: dst, k: 6}
	if _, err := e.copier(t, "b", merging, withDest(ffs)).CopyOnce(context.Background()); !errors.Is(err, errInjected) {
		t.Fatalf("copier b: %v, want the injected fault", err)
	}
	// 3. A third records the first minute's file and dies before
	// publishing it (before it could read the row again: a write
	// answered with an error that the copier finds made, it goes on).
	fst := &faultStore{Store: e.st, after: true, crash: true, k: 1}
	if _, err := e.copier(t, "c", merging, withStore(fst)).CopyOnce(context.Background()); !errors.Is(err, errInjected) {
		t.Fatalf("copier c: %v, want the injected fault", err)
	}
	if _, err := dst.Stat(fileOf(0)); err == nil {
		t.Fatal("the first minute was published before the restart")
	}

	st := mergePass(t, e.copier(t, "d", merging))
	if st.Merged != 3 || st.Conflicts != 0 {
		t.Fatalf("restarted copier: %+v, want the 3 minutes", st)
	}
	for m := range 3 {
		if got := readMergedText(t, dst, fileOf(m)); got != want[m] {
			t.Errorf("minute %d holds %d bytes, want %d", m, len(got), len(want[m]))
		}
	}
	if all := files(t, dst, ""); len(all) != 3 {
		t.Errorf("destination holds %q, want the 3 files", all)
	}

	rec := dfstest.NewFaulty(dst)
	st = mergePass(t, e.copier(t, "e", merging, withDest(rec), withStore(openStore(t, filepath.Join(t.TempDir(), "empty.db")))))
	if _, renames := writes(rec); st.Skipped != 3 || len(renames) != 0 {
		t.Errorf("re-run from an empty store: %+v, renamed %q", st, renames)
	}
}

// TestHDFSMergedHourIsTheConcatenationOfItsSegments: on two real HDFS
// roots (source and destination), each hour's file is its segments'
// lines, one a line, in bucket order, with the hour boundary in the
// middle of a segment; another bucket gets its own file.
func TestHDFSMergedHourIsTheConcatenationOfItsSegments(t *testing.T) {
	src, _ := hdfsRoot(t)
	dst, url := hdfsRoot(t)
	e := newEnv(t)
	e.src, e.dst = src, dst
	// The NameNode stamps a segment's publish time (now); the blocks
	// arrived in the two hours before this one. A merge delay of 3h keeps
	// those hours open at publish time, so no line counts as late; the
	// copier's clock, 5h ahead, sees both closed.
	now := time.Now()
	h0 := now.Truncate(time.Hour).Add(-2 * time.Hour)
	h1 := h0.Add(time.Hour)
	publish := func(bucket int, seq uint64, blocks ...blk) {
		t.Helper()
		enc := segment.NewEncoder()
		data := enc.AppendHeader(nil)
		for _, b := range blocks {
			sb := &segment.Block{ArrivalMs: b.at.UnixMilli()}
			for _, m := range b.msgs {
				sb.Messages = append(sb.Messages, []byte(m))
			}
			data = enc.AppendBlock(data, sb)
		}
		if err := dfs.WriteFile(src, path.Join(layout.BucketDir("web/access", bucket), layout.SegmentName(1, seq)), data); err != nil {
			t.Fatal(err)
		}
	}
	a1, a2, a3 := lines("a1", 300), lines("a2", 2), append(lines("a3", 2), "ends in a newline\n", "")
	b1, b2 := lines("b1", 4), lines("b2", 500)
	c1 := lines("c1", 5)
	publish(0, 1, blk{h0.Add(10 * time.Minute), a1}, blk{h0.Add(11 * time.Minute), a2})
	publish(0, 2, blk{h0.Add(59*time.Minute + 59*time.Second), a3}, blk{h1, b1}) // the hour ends mid-segment
	publish(0, 3, blk{h1.Add(30 * time.Minute), b2})
	publish(1, 1, blk{h0.Add(30 * time.Minute), c1})

	clk := &clock{t: now.Add(5 * time.Hour)}
	n := e.copier(t, "a", func(c *Config, d *Deps) {
		c.Destination = url
		c.MergePeriod = config.Duration(time.Hour)
		c.MergeDelay = config.Duration(3 * time.Hour)
		d.Now = clk.Now
	})
	st := mergePass(t, n)
	if st.Merged != 3 || st.Errors != 0 || st.Lines != int64(len(a1)+len(a2)+len(a3)+len(b1)+len(b2)+len(c1)) {
		t.Fatalf("pass: %+v, want 3 files", st)
	}
	for _, c := range []struct {
		bucket int
		hour   time.Time
		want   string
	}{
		{0, h0, text(a1, a2, a3)},
		{0, h1, text(b1, b2)},
		{1, h0, text(c1)},
	} {
		if got := readMergedText(t, dst, hourFile("web/access", c.bucket, c.hour)); got != c.want {
			t.Errorf("bucket %d hour %s: %d bytes, want %d:\n%.200q\nwant\n%.200q", c.bucket, c.hour.UTC().Format("15"), len(got), len(c.want), got, c.want)
		}
	}
	if all := files(t, dst, ""); len(all) != 3 {
		t.Errorf("destination holds %q, want the 3 hour files", all)
	}
	if st := mergePass(t, n); st.Merged != 0 || st.Seen != 0 {
		t.Errorf("a second pass: %+v, want nothing new", st)
	}
}

// TestHDFSNewRefusesSourceUnderAnotherName: the source's root reached
// through localhost rather than 127.0.0.1, or a directory inside it, is
// refused as the destination; a sibling root of the same cluster is not.
// Accepted, the first pass would delete a writer's segment in progress.
func TestHDFSNewRefusesSourceUnderAnotherName(t *testing.T) {
	src, url := hdfsRoot(t)
	addr := enginetest.Addr(t, enginetest.HDFS)
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	other := "localhost"
	if host == "localhost" {
		other = "127.0.0.1"
	}
	publish(t, src, "access", 0, 1, 0, 2)
	inProgress := path.Join(layout.BucketDir("access", 0), layout.TempSegment(layout.SegmentName(1, 1)))
	if err := dfs.WriteFile(src, inProgress, nil); err != nil {
		t.Fatal(err)
	}
	base, _, _ := strings.Cut(url, "?")
	root := strings.TrimPrefix(base, "hdfs://"+addr)
	for _, tc := range []struct{ what, url string }{
		{"the source through " + other, "hdfs://" + net.JoinHostPort(other, port) + root},
		{"inside the source through " + other, "hdfs://" + net.JoinHostPort(other, port) + root + "/backup"},
		{"around the source through " + other, "hdfs://" + net.JoinHostPort(other, port) + path.Dir(root)},
	} {
		dst, err := hdfs.Open(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		defer dst.Close()
		e := newEnv(t)
		e.src, e.dst = src, dst
		if _, err := New(DefaultConfig(), Deps{Source: src, Dest: dst, Store: e.st, Coord: e.hub.Session()}); err != nil {
			t.Logf("%s: %v", tc.what, err)
			continue
		}
		_, perr := e.copier(t, "a").CopyOnce(context.Background())
		t.Errorf("New accepted %s (%s) as the destination of %s; in-progress file still there after a pass: %v (pass: %v)",
			tc.what, dst, src, exists(src, inProgress), perr)
		if err := dfs.WriteFile(src, inProgress, nil); err != nil {
			t.Fatal(err)
		}
	}

	sibling, _ := hdfsRoot(t)
	if _, err := New(DefaultConfig(), Deps{Source: src, Dest: sibling, Store: openStore(t, filepath.Join(t.TempDir(), "s.db")), Coord: newEnv(t).hub.Session()}); err != nil {
		t.Fatalf("New refused a sibling root: %v", err)
	}
	if got := files(t, sibling, ""); len(got) != 0 {
		t.Errorf("the probe left %q at the destination", got)
	}
	if got := files(t, src, ""); len(got) != 2 {
		t.Errorf("source holds %q, want the segment and the file in progress", got)
	}
}

// TestHDFSCopyAfterMergeCopiesOnlyWhatIsNotMerged: merge_period removed
// after a merge stopped inside a segment, on HDFS at both ends: the
// segment is copied from the merge's position (read at an offset from
// HDFS), and every line is at the destination once.
func TestHDFSCopyAfterMergeCopiesOnlyWhatIsNotMerged(t *testing.T) {
	src, _ := hdfsRoot(t)
	dst, url := hdfsRoot(t)
	e := newEnv(t)
	e.src, e.dst = src, dst
	// As in TestHDFSMergedHourIsTheConcatenationOfItsSegments: the
	// NameNode stamps the publish time, a merge delay of 3h keeps the
	// blocks' hours open then.
	h0 := time.Now().Truncate(time.Hour).Add(-2 * time.Hour)
	h1 := h0.Add(time.Hour)
	a, b, c := lines("before the hour", 300), lines("after the hour", 200), lines("next segment", 5)
	for seq, blocks := range [][]blk{{{h1.Add(-500 * time.Millisecond), a}, {h1.Add(300 * time.Millisecond), b}}, {{h1.Add(30 * time.Minute), c}}} {
		enc := segment.NewEncoder()
		data := enc.AppendHeader(nil)
		for _, bl := range blocks {
			sb := &segment.Block{ArrivalMs: bl.at.UnixMilli()}
			for _, m := range bl.msgs {
				sb.Messages = append(sb.Messages, []byte(m))
			}
			data = enc.AppendBlock(data, sb)
		}
		if err := dfs.WriteFile(src, path.Join(layout.BucketDir("access", 0), layout.SegmentName(1, uint64(seq+1))), data); err != nil {
			t.Fatal(err)
		}
	}
	clk := &clock{t: h0.Add(4*time.Hour + time.Minute)} // h0 closed, h1 open
	merging := e.copier(t, "merging", func(c *Config, d *Deps) {
		c.Destination = url
		c.MergePeriod = config.Duration(time.Hour)
		c.MergeDelay = config.Duration(3 * time.Hour)
		d.Now = clk.Now
	})
	if st := mergePass(t, merging); st.Merged != 1 {
		t.Fatalf("merge %+v, want hour %s written", st, h0.UTC().Format("15"))
	}
	if st := copyOnce(t, e.copier(t, "copying", withConfig(func(c *Config) { c.Destination = url }))); st.Copied != 2 {
		t.Fatalf("copy %+v, want both segments", st)
	}
	if got, want := destinationLines(t, dst), slices.Concat(a, b, c); !slices.Equal(got, want) {
		t.Errorf("destination holds %d lines, want each of the %d once", len(got), len(want))
	}
}
