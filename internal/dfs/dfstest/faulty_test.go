package dfstest_test

import (
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
)

func local(t *testing.T) dfs.FS {
	t.Helper()
	l, err := localfs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Without a hook, Faulty is the file system it wraps, and like HDFS it
// is a file system with HDFS's visibility: both pass the suite.
func TestFaultyPassesTheSuite(t *testing.T) {
	t.Run("transparent", func(t *testing.T) {
		dfstest.Run(t, func(t *testing.T) dfs.FS { return dfstest.NewFaulty(local(t)) })
	})
	t.Run("like HDFS", func(t *testing.T) {
		dfstest.Run(t, func(t *testing.T) dfs.FS { return dfstest.NewFaulty(local(t)).LikeHDFS() })
	})
}

func TestFaultyHookFailsCallsAndSeesThem(t *testing.T) {
	f := dfstest.NewFaulty(local(t))
	injected := errors.New("injected")
	f.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpRename || (c.Op == dfstest.OpRead && c.Off >= 3) {
			return injected
		}
		return nil
	})
	w, err := f.Create("d/.x.inprogress")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("abcdef")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Rename("d/.x.inprogress", "d/x"); !errors.Is(err, injected) {
		t.Fatalf("rename: %v, want the injected error", err)
	}
	if _, err := f.Stat("d/x"); err == nil {
		t.Fatal("a failed rename reached the file system")
	}
	r, err := f.Open("d/.x.inprogress")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 3)
	if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "abc" {
		t.Fatalf("first read: %q %v", buf, err)
	}
	if _, err := r.Read(buf); !errors.Is(err, injected) {
		t.Fatalf("read at 3: %v, want the injected error", err)
	}
	if _, err := r.ReadAt(buf, 0); err != nil || string(buf) != "abc" {
		t.Fatalf("readat 0: %q %v", buf, err)
	}
	want := []dfstest.Call{
		{Op: dfstest.OpCreate, Name: "d/.x.inprogress"},
		{Op: dfstest.OpRename, Name: "d/.x.inprogress", To: "d/x"},
		{Op: dfstest.OpOpen, Name: "d/.x.inprogress"},
	}
	if got := f.Calls(dfstest.OpCreate, dfstest.OpRename, dfstest.OpOpen); !slices.Equal(got, want) {
		t.Fatalf("calls %+v, want %+v", got, want)
	}
	var offs []int64
	for _, c := range f.Calls(dfstest.OpRead) {
		offs = append(offs, c.Off)
	}
	if !slices.Equal(offs, []int64{0, 3, 0}) || f.Count(dfstest.OpRead) != 3 {
		t.Fatalf("reads at %v (%d counted), want at 0, 3, 0", offs, f.Count(dfstest.OpRead))
	}
}

func TestFaultyTamper(t *testing.T) {
	f := dfstest.NewFaulty(local(t))
	f.SetTamper(func(_ string, p []byte) []byte {
		p[0] ^= 0xff
		return p
	})
	data := []byte("abc")
	if err := dfs.WriteFile(f, "x", data); err != nil {
		t.Fatal(err)
	}
	if string(data) != "abc" {
		t.Fatal("tamper changed the caller's bytes")
	}
	got, err := dfs.ReadFile(f, "x")
	if err != nil || string(got) == "abc" || string(got[1:]) != "bc" {
		t.Fatalf("read back %q %v, want the first byte flipped", got, err)
	}
}
