// Package dfstest is the conformance suite for dfs.FS. Every
// implementation runs it: the local one always, HDFS whenever
// FREEWAY_TEST_HDFS names a NameNode (and always under `make test`).
package dfstest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"path"
	"sync"
	"testing"

	"github.com/freeway-dev/freeway/internal/dfs"
)

// Run runs the suite. newFS returns an empty file system for one subtest;
// it registers its own cleanup.
func Run(t *testing.T, newFS func(t *testing.T) dfs.FS) {
	tests := []struct {
		name string
		fn   func(t *testing.T, fsys dfs.FS)
	}{
		{"WriteCloseRead", testWriteCloseRead},
		{"CreateExisting", testCreateExisting},
		{"NotExist", testNotExist},
		{"InvalidNames", testInvalidNames},
		{"ReadDirSorted", testReadDirSorted},
		{"ReadDirNames", testReadDirNames},
		{"WriteBuffers", testWriteBuffers},
		{"Truncate", testTruncate},
		{"RenamePublishes", testRenamePublishes},
		{"RenameReplacesFile", testRenameReplacesFile},
		{"Remove", testRemove},
		{"UnclosedVisibility", testUnclosedVisibility},
		{"LargeFileSeekReadAt", testLargeFile},
		{"ConcurrentWriters", testConcurrentWriters},
		{"WriteFileReadFile", testWriteFileReadFile},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newFS(t))
		})
	}
}

func mustWrite(t *testing.T, fsys dfs.FS, name string, data []byte) {
	t.Helper()
	f, err := fsys.Create(name)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close %s: %v", name, err)
	}
}

func mustRead(t *testing.T, fsys dfs.FS, name string) []byte {
	t.Helper()
	b, err := dfs.ReadFile(fsys, name)
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return b
}

func testWriteCloseRead(t *testing.T, fsys dfs.FS) {
	data := []byte("hello\nworld\n")
	mustWrite(t, fsys, "a/b/c.seg", data)
	if got := mustRead(t, fsys, "a/b/c.seg"); !bytes.Equal(got, data) {
		t.Fatalf("read back %q, want %q", got, data)
	}
	st, err := fsys.Stat("a/b/c.seg")
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != int64(len(data)) || st.IsDir() || st.Name() != "c.seg" {
		t.Fatalf("stat: name %q size %d dir %v", st.Name(), st.Size(), st.IsDir())
	}
	dst, err := fsys.Stat("a/b")
	if err != nil {
		t.Fatal(err)
	}
	if !dst.IsDir() {
		t.Fatalf("a/b is not a directory")
	}
}

func testCreateExisting(t *testing.T, fsys dfs.FS) {
	mustWrite(t, fsys, "x", []byte("1"))
	f, err := fsys.Create("x")
	if err == nil {
		_ = f.Close()
		t.Fatal("create over an existing file succeeded")
	}
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("create existing: %v, want fs.ErrExist", err)
	}
	if got := mustRead(t, fsys, "x"); string(got) != "1" {
		t.Fatalf("existing file changed to %q", got)
	}
}

func testNotExist(t *testing.T, fsys dfs.FS) {
	if _, err := fsys.Open("nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("open missing: %v", err)
	}
	if _, err := fsys.Stat("nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat missing: %v", err)
	}
	if _, err := fsys.ReadDir("nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("readdir missing: %v", err)
	}
	if err := fsys.Rename("nope", "other"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("rename missing: %v", err)
	}
	if err := fsys.Remove("nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("remove missing: %v", err)
	}
}

func testInvalidNames(t *testing.T, fsys dfs.FS) {
	for _, name := range []string{"/abs", "../up", "a/../../b", "a//b"} {
		if f, err := fsys.Create(name); err == nil {
			_ = f.Close()
			t.Errorf("create %q succeeded", name)
		}
		if _, err := fsys.Open(name); err == nil {
			t.Errorf("open %q succeeded", name)
		}
	}
}

func testReadDirSorted(t *testing.T, fsys dfs.FS) {
	names := []string{"0000000000000002-0000000000000001.seg", "0000000000000001-0000000000000009.seg", "0000000000000001-000000000000000a.seg", "sub"}
	for _, n := range names[:3] {
		mustWrite(t, fsys, "d/"+n, []byte(n))
	}
	if err := fsys.MkdirAll("d/sub"); err != nil {
		t.Fatal(err)
	}
	infos, err := fsys.ReadDir("d")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, fi := range infos {
		got = append(got, fi.Name())
	}
	want := []string{names[1], names[2], names[0], "sub"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("readdir = %v, want %v", got, want)
	}
	if !infos[3].IsDir() || infos[0].IsDir() || infos[0].Size() != int64(len(names[1])) {
		t.Fatalf("readdir infos wrong: %v %v %d", infos[3].IsDir(), infos[0].IsDir(), infos[0].Size())
	}
	root, err := fsys.ReadDir("")
	if err != nil || len(root) != 1 || root[0].Name() != "d" {
		t.Fatalf("readdir of the root = %v, %v", root, err)
	}
}

// testReadDirNames: dfs.ReadDirNames (the file system's own NameLister,
// if it has one) lists what ReadDir does, in the same order, with the
// same errors.
func testReadDirNames(t *testing.T, fsys dfs.FS) {
	// Enough names, in an order of creation unlike the sorted one, that a
	// listing in directory order is unlikely to come out sorted.
	for i := range 40 {
		n := fmt.Sprintf("%016x-%016x.seg", (i*7)%5, (i*13)%40)
		if i%9 == 0 {
			n = "." + n + ".inprogress"
		}
		mustWrite(t, fsys, "d/"+n, nil)
	}
	if err := fsys.MkdirAll("d/sub"); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, fsys, "d/sub/deeper", []byte("x"))
	infos, err := fsys.ReadDir("d")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, fi := range infos {
		want = append(want, fi.Name())
	}
	got, err := dfs.ReadDirNames(fsys, "d")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || len(got) != 41 {
		t.Fatalf("names = %v, want (readdir) %v", got, want)
	}
	if _, err := dfs.ReadDirNames(fsys, "nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("names of a missing directory: %v, want ErrNotExist", err)
	}
	if _, err := dfs.ReadDirNames(fsys, "../x"); err == nil {
		t.Fatal("names of an invalid name succeeded")
	}
}

// testWriteBuffers: dfs.WriteBuffers (the file's own BuffersWriter, if it
// has one) writes what one Write of the buffers' concatenation would:
// more buffers than one writev takes, empty ones among them, and buffers
// from one byte to more than a block.
func testWriteBuffers(t *testing.T, fsys dfs.FS) {
	rng := rand.New(rand.NewSource(7))
	var bufs [][]byte
	var want []byte
	for i := range 2500 {
		n := rng.Intn(300)
		switch {
		case i%97 == 0:
			n = 0
		case i%501 == 0:
			n = 70_000 + rng.Intn(100_000)
		}
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		bufs = append(bufs, b)
		want = append(want, b...)
	}
	f, err := fsys.Create("w/buffers")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("head")); err != nil {
		t.Fatal(err)
	}
	n, err := dfs.WriteBuffers(f, bufs)
	if err != nil || n != int64(len(want)) {
		t.Fatalf("write buffers = %d, %v; want %d", n, err, len(want))
	}
	if n, err := dfs.WriteBuffers(f, [][]byte{{}, []byte("tail")}); err != nil || n != 4 {
		t.Fatalf("write buffers = %d, %v; want 4", n, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	want = append(append([]byte("head"), want...), "tail"...)
	if got := mustRead(t, fsys, "w/buffers"); !bytes.Equal(got, want) {
		t.Fatalf("file holds %d bytes, want %d (equal: %v)", len(got), len(want), bytes.Equal(got, want))
	}
}

// testTruncate: a file that is a dfs.Truncater (one that is not, or says
// errors.ErrUnsupported, is skipped) is cut back to the size given, and
// what is written after goes on from there.
func testTruncate(t *testing.T, fsys dfs.FS) {
	f, err := fsys.Create("w/truncated")
	if err != nil {
		t.Fatal(err)
	}
	tr, ok := f.(dfs.Truncater)
	if !ok {
		_ = f.Close()
		t.Skip("its files are no dfs.Truncater")
	}
	if _, err := f.Write([]byte("head")); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("refused")); err != nil {
		t.Fatal(err)
	}
	if err := tr.Truncate(4); errors.Is(err, errors.ErrUnsupported) {
		_ = f.Close()
		t.Skip("its files cannot be truncated")
	} else if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("-tail")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, fsys, "w/truncated"); string(got) != "head-tail" {
		t.Fatalf("file holds %q, want %q", got, "head-tail")
	}
}

func testRenamePublishes(t *testing.T, fsys dfs.FS) {
	if err := fsys.MkdirAll("cat/0"); err != nil {
		t.Fatal(err)
	}
	final := "cat/0/seg"
	tmp := dfs.TempName(final)
	if !dfs.Hidden(tmp) || dfs.Hidden(final) {
		t.Fatalf("Hidden(%q)=%v Hidden(%q)=%v", tmp, dfs.Hidden(tmp), final, dfs.Hidden(final))
	}
	mustWrite(t, fsys, tmp, []byte("payload"))
	if _, err := fsys.Stat(final); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("final name visible before rename: %v", err)
	}
	if err := fsys.Rename(tmp, final); err != nil {
		t.Fatal(err)
	}
	if _, err := fsys.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("temporary name still there after rename: %v", err)
	}
	if got := mustRead(t, fsys, final); string(got) != "payload" {
		t.Fatalf("published %q", got)
	}
}

func testRenameReplacesFile(t *testing.T, fsys dfs.FS) {
	mustWrite(t, fsys, "old", []byte("old"))
	mustWrite(t, fsys, "new", []byte("new"))
	if err := fsys.Rename("new", "old"); err != nil {
		t.Fatalf("rename over a file: %v", err)
	}
	if got := mustRead(t, fsys, "old"); string(got) != "new" {
		t.Fatalf("after rename old = %q", got)
	}
	if _, err := fsys.Stat("new"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("source still there: %v", err)
	}
}

func testRemove(t *testing.T, fsys dfs.FS) {
	mustWrite(t, fsys, "dir/f", []byte("x"))
	if err := fsys.Remove("dir"); err == nil {
		t.Fatal("removed a non-empty directory")
	}
	if err := fsys.Remove("dir/f"); err != nil {
		t.Fatal(err)
	}
	if err := fsys.Remove("dir"); err != nil {
		t.Fatalf("remove empty dir: %v", err)
	}
	if _, err := fsys.Stat("dir"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("dir still there: %v", err)
	}
}

// testUnclosedVisibility pins down what differs between backends: a
// reader of a file still being written sees, at most, a prefix of what was
// written; if SyncDurable, it sees everything up to the last Sync; after
// Close it sees all of it.
func testUnclosedVisibility(t *testing.T, fsys dfs.FS) {
	f, err := fsys.Create("open.seg")
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 1024)
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	r, err := fsys.Open("open.seg")
	if err == nil {
		got, rerr := io.ReadAll(r)
		_ = r.Close() // opened for reading
		if rerr != nil && !fsys.SyncDurable() {
			t.Logf("reading an unclosed file: %v (allowed on this backend)", rerr)
		} else if rerr != nil {
			t.Fatalf("read unclosed file: %v", rerr)
		}
		if !bytes.HasPrefix(data, got) {
			t.Fatalf("unclosed file shows %d bytes that are not a prefix of what was written", len(got))
		}
		if fsys.SyncDurable() && len(got) != len(data) {
			t.Fatalf("SyncDurable backend shows %d of %d synced bytes", len(got), len(data))
		}
		t.Logf("unclosed file: %d of %d bytes visible after Sync", len(got), len(data))
	} else if fsys.SyncDurable() {
		t.Fatalf("open unclosed file: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, fsys, "open.seg"); !bytes.Equal(got, data) {
		t.Fatalf("after close: %d bytes, want %d", len(got), len(data))
	}
}

func testLargeFile(t *testing.T, fsys dfs.FS) {
	// Several MiB: crosses HDFS blocks when the test cluster uses small ones.
	data := make([]byte, 3<<20+12345)
	rand.New(rand.NewSource(1)).Read(data)
	f, err := fsys.Create("big")
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(data); off += 100_000 {
		end := min(off+100_000, len(data))
		if _, err := f.Write(data[off:end]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := fsys.Open("big")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close() //nolint:errcheck // opened for reading
	for _, off := range []int64{0, 1, 131071, 131072, 1 << 20, int64(len(data)) - 10} {
		buf := make([]byte, 10)
		if _, err := r.ReadAt(buf, off); err != nil {
			t.Fatalf("readat %d: %v", off, err)
		}
		if !bytes.Equal(buf, data[off:off+10]) {
			t.Fatalf("readat %d: wrong bytes", off)
		}
	}
	off := int64(2<<20 + 7)
	if _, err := r.Seek(off, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rest, data[off:]) {
		t.Fatalf("read after seek: %d bytes, want %d", len(rest), len(data)-int(off))
	}
}

func testConcurrentWriters(t *testing.T, fsys dfs.FS) {
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("c/%d/f", i)
			f, err := fsys.Create(name)
			if err != nil {
				errs <- err
				return
			}
			for j := range 100 {
				if _, err := fmt.Fprintf(f, "%d:%d\n", i, j); err != nil {
					_ = f.Close()
					errs <- err
					return
				}
			}
			errs <- f.Close()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range 8 {
		var want bytes.Buffer
		for j := range 100 {
			fmt.Fprintf(&want, "%d:%d\n", i, j)
		}
		if got := mustRead(t, fsys, fmt.Sprintf("c/%d/f", i)); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("file %d mixed up", i)
		}
	}
}

func testWriteFileReadFile(t *testing.T, fsys dfs.FS) {
	if err := fsys.MkdirAll("w"); err != nil {
		t.Fatal(err)
	}
	if err := dfs.WriteFile(fsys, "w/state", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if err := dfs.WriteFile(fsys, "w/state", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, fsys, "w/state"); string(got) != "v2" {
		t.Fatalf("state = %q", got)
	}
	infos, err := fsys.ReadDir("w")
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 1 {
		t.Fatalf("leftover temporary files: %d entries", len(infos))
	}
}

// RemoveAll removes name and everything under it ("": everything in
// fsys, the root itself kept). A name that does not exist is no error:
// tests clean up with it, also after a run that never wrote.
func RemoveAll(fsys dfs.FS, name string) error {
	if name != "" {
		fi, err := fsys.Stat(name)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return fsys.Remove(name)
		}
	}
	infos, err := fsys.ReadDir(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, fi := range infos {
		if err := RemoveAll(fsys, path.Join(name, fi.Name())); err != nil {
			return err
		}
	}
	if name == "" {
		return nil
	}
	return fsys.Remove(name)
}
