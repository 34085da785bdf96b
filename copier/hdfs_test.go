package copier

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"slices"
	"testing"

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
