package dfstest_test

import (
	"errors"
	"io/fs"
	"slices"
	"testing"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
)

func TestRemoveAll(t *testing.T) {
	f := dfstest.NewCrashFS()
	for _, name := range []string{"a/b/c/1", "a/b/2", "a/3", "keep/4", "5"} {
		if err := dfs.WriteFile(f, name, []byte(name)); err != nil {
			t.Fatal(err)
		}
	}
	names := func() []string {
		t.Helper()
		got, err := dfs.ReadDirNames(f, "")
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if err := dfstest.RemoveAll(f, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Stat("a"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a after RemoveAll: %v", err)
	}
	if got := names(); !slices.Equal(got, []string{"5", "keep"}) {
		t.Fatalf("root holds %v, want [5 keep]", got)
	}
	if err := dfstest.RemoveAll(f, "a"); err != nil {
		t.Fatalf("RemoveAll of a name gone: %v", err)
	}
	if err := dfstest.RemoveAll(f, "5"); err != nil {
		t.Fatal(err)
	}
	if err := dfstest.RemoveAll(f, ""); err != nil {
		t.Fatal(err)
	}
	if got := names(); len(got) != 0 {
		t.Fatalf("root holds %v after RemoveAll of everything", got)
	}
}
