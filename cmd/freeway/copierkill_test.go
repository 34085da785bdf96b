package main

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/backends"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/enginetest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// TestCopierKilledMidFileDeliversEveryLineOnce runs `freeway copier
// --backfill` merging minutes of segments into gzip files, kills it
// (SIGKILL) while it writes a period's file, three times, then lets it
// finish: every minute's file holds its segments' lines once, in bucket
// order, and nothing else is left at the destination. Once with a local
// destination and the embedded store and coordinator, once on the real
// engines: a real HDFS root as destination, the progress in HBase and the
// copier lease in ZooKeeper.
func TestCopierKilledMidFileDeliversEveryLineOnce(t *testing.T) {
	t.Run("local", func(t *testing.T) {
		dest := "file://" + filepath.ToSlash(filepath.Join(t.TempDir(), "warehouse"))
		copierKilledMidFile(t, dest, "")
	})
	t.Run("engines", func(t *testing.T) {
		addr := enginetest.Addr(t, enginetest.HDFS)
		zk, hbase := enginetest.Addr(t, enginetest.ZK), enginetest.Addr(t, enginetest.HBase)
		var b [8]byte
		rand.Read(b[:])
		name := fmt.Sprintf("copierkill-%x", b)
		t.Cleanup(func() {
			parent, err := backends.OpenDFS(fmt.Sprintf("hdfs://%s/freeway-test", addr))
			if err != nil {
				t.Errorf("clean up: %v", err)
				return
			}
			defer parent.Close()
			if err := dfstest.RemoveAll(parent, name); err != nil {
				t.Errorf("clean up %s: %v", name, err)
			}
		})
		suffix := fmt.Sprintf("%x", b)
		copierKilledMidFile(t, fmt.Sprintf("hdfs://%s/freeway-test/%s", addr, name),
			fmt.Sprintf("store: hbase://%s/copierkill_%s_\ncoord: zk://%s/freeway-test/copierkill-%s?session_timeout=4s\n", hbase, suffix, zk, suffix))
	})
}

// copierKilledMidFile runs the test with the merged files going to dest
// and engines (config lines for the store and coordinator; empty: the
// embedded ones).
func copierKilledMidFile(t *testing.T, dest, engines string) {
	f := newBackfillFixture(t, dest, engines, 6, 25000)
	// Kill a backfill as soon as a temporary file shows up in the
	// directory of period p (both buckets' files are there), a different
	// period each time.
	caught := 0
	for k, p := range []int{1, 3, 4} {
		periodDir := path.Dir(layout.MergedFile(f.cat, 0, f.start.Add(time.Duration(p)*time.Minute), time.Minute, ".gz"))
		cmd, out, done := f.backfill(t)
		killed := false
		deadline := time.Now().Add(2 * time.Minute)
	poll:
		for time.Now().Before(deadline) {
			select {
			case err := <-done:
				t.Logf("kill %d: the backfill finished first (%v)", k, err)
				break poll
			default:
			}
			infos, err := f.dst.ReadDir(periodDir)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("list %s: %v", periodDir, err)
			}
			for _, fi := range infos {
				if dfs.Hidden(fi.Name()) {
					if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
						t.Fatal(err)
					}
					<-done //nolint:errcheck // killed: its exit status says so
					killed = true
					caught++
					t.Logf("kill %d: killed while it wrote %s/%s", k, periodDir, fi.Name())
					break poll
				}
			}
			if len(infos) == f.buckets {
				// Both files of the period published between two looks: kill
				// it anyway, between files.
				if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				<-done //nolint:errcheck // killed: its exit status says so
				killed = true
				t.Logf("kill %d: killed after period %d", k, p)
				break poll
			}
		}
		if !killed && time.Now().After(deadline) {
			_ = cmd.Process.Kill() // the test fails anyway
			t.Fatalf("kill %d: the backfill neither wrote period %d nor finished:\n%s", k, p, out.String())
		}
	}
	if caught == 0 {
		t.Error("no kill landed while a file was being written")
	}

	_, out, done := f.backfill(t)
	if err := <-done; err != nil {
		t.Fatalf("the last backfill: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "backfill: merged") {
		t.Errorf("no summary:\n%s", out.String())
	}
	f.checkMerged(t)
}

// backfillFixture is a copier configuration merging minutes of segments
// (category web, two buckets, two segments a bucket and minute) into a
// gzip file a bucket and minute, the segments written in its data_dir's
// embedded dfs, and the files the merge must make of them.
type backfillFixture struct {
	bin, cfgFile string
	cat          string
	buckets      int
	start        time.Time         // the first minute
	want         map[string]string // merged file → its text
	dst          dfs.FS            // the destination
}

// newBackfillFixture writes periods minutes of segments of perSeg lines,
// the merged files going to dest, with engines (config lines for the
// store and coordinator; empty: the embedded ones).
func newBackfillFixture(t *testing.T, dest, engines string, periods, perSeg int) *backfillFixture {
	t.Helper()
	const segments = 2 // per bucket and period
	f := &backfillFixture{bin: freewayBinary(t), cat: "web", buckets: 2, want: map[string]string{}}
	dir := t.TempDir()
	f.cfgFile = filepath.Join(dir, "freeway.yaml")
	cfg := fmt.Sprintf(`data_dir: %s
buckets: %d
log: {level: warn}
copier:
  destination: %s
  merge_period: 1m
  merge_delay: 1m
  compression: gzip
%s`, filepath.Join(dir, "data"), f.buckets, dest, engines)
	if err := os.WriteFile(f.cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := backends.OpenDFS("file://" + filepath.ToSlash(filepath.Join(dir, "data", "dfs")))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	// Minutes three hours ago, published as they arrived: every period is
	// closed and no line is late.
	f.start = time.Now().Add(-3 * time.Hour).Truncate(time.Minute)
	seq := uint64(0)
	for p := range periods {
		for s := range segments {
			seq++
			at := f.start.Add(time.Duration(p)*time.Minute + time.Duration(s*20)*time.Second)
			for b := range f.buckets {
				enc := segment.NewEncoder()
				data := enc.AppendHeader(nil)
				blk := &segment.Block{ArrivalMs: at.UnixMilli()}
				var text strings.Builder
				for i := range perSeg {
					msg := fmt.Sprintf("bucket %d minute %d segment %d line %05d of the access log", b, p, s, i)
					blk.Messages = append(blk.Messages, []byte(msg))
					text.WriteString(msg + "\n")
				}
				data = enc.AppendBlock(data, blk)
				name := path.Join(layout.BucketDir(f.cat, b), layout.SegmentName(1, seq))
				if err := dfs.WriteFile(src, name, data); err != nil {
					t.Fatal(err)
				}
				if err := os.Chtimes(filepath.Join(dir, "data", "dfs", filepath.FromSlash(name)), at, at); err != nil {
					t.Fatal(err)
				}
				f.want[layout.MergedFile(f.cat, b, f.start.Add(time.Duration(p)*time.Minute), time.Minute, ".gz")] += text.String()
			}
		}
	}
	f.dst, err = backends.OpenDFS(dest)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.dst.Close() })
	return f
}

// backfill starts `freeway copier --backfill` on the fixture's
// configuration; done has its exit.
func (f *backfillFixture) backfill(t *testing.T) (cmd *exec.Cmd, out *testkit.LogBuffer, done chan error) {
	t.Helper()
	cmd = exec.Command(f.bin, "copier", "--config", f.cfgFile, "--backfill")
	out = &testkit.LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited, started := make(chan error, 1), cmd
	go func() { exited <- started.Wait() }()
	return cmd, out, exited
}

// checkMerged checks that the destination holds the merged files and
// nothing else, each one its segments' lines once, in bucket order.
func (f *backfillFixture) checkMerged(t *testing.T) {
	t.Helper()
	var got []string
	if err := walk(f.dst, f.cat, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(f.want) {
		t.Errorf("destination holds %d files %q, want %d", len(got), got, len(f.want))
	}
	for _, name := range got {
		if _, ok := f.want[name]; !ok {
			t.Errorf("unexpected file %s", name)
		}
	}
	for name, text := range f.want {
		data, err := dfs.ReadFile(f.dst, name)
		if err != nil {
			t.Errorf("read %s: %v", name, err)
			continue
		}
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		plain, err := io.ReadAll(zr)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if string(plain) != text {
			t.Errorf("%s holds %d bytes (%d lines), want %d (%d lines)", name, len(plain), bytes.Count(plain, []byte("\n")), len(text), strings.Count(text, "\n"))
		}
	}
}

// walk appends every file under name, hidden ones included.
func walk(fsys dfs.FS, name string, out *[]string) error {
	infos, err := fsys.ReadDir(name)
	if err != nil {
		return err
	}
	for _, fi := range infos {
		p := path.Join(name, fi.Name())
		if fi.IsDir() {
			if err := walk(fsys, p, out); err != nil {
				return err
			}
			continue
		}
		*out = append(*out, p)
	}
	return nil
}
