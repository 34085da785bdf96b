package copier

import (
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
)

// oddCategories are categories a stock Scribe server accepts that once
// had no directory: a slash, a space, hidden-looking names, names too long
// for a dfs path component.
func oddCategories() []string {
	return []string{"web/access", "a b", "_internal", ".x", strings.Repeat("c", 300), strings.Repeat("web/", 2500)}
}

// publishCategories publishes a segment in bucket 1 of each category the
// way a writer does (the sidecar of a long name first) and returns the
// segment names.
func publishCategories(t *testing.T, fsys dfs.FS, cats []string) []string {
	t.Helper()
	var names []string
	for i, c := range cats {
		if err := layout.WriteSidecar(fsys, c, "1"); err != nil {
			t.Fatal(err)
		}
		name := path.Join(layout.BucketDir(c, 1), layout.SegmentName(3, uint64(i)))
		if err := dfs.WriteFile(fsys, name, segmentBytes(name, 2)); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	return names
}

func listed(t *testing.T, fsys dfs.FS) []string {
	t.Helper()
	cats, unreadable, err := layout.Categories(fsys)
	if err != nil || len(unreadable) != 0 {
		t.Fatalf("list categories: %v, unreadable %v", err, unreadable)
	}
	var names []string
	for _, c := range cats {
		names = append(names, c.Name)
	}
	slices.Sort(names)
	return names
}

// TestCopiesEveryCategory: every category directory is copied, and the
// destination lists the same categories (the sidecars of long names come
// along).
func TestCopiesEveryCategory(t *testing.T) {
	e := newEnv(t)
	cats := append(oddCategories(), "plain")
	names := publishCategories(t, e.src, cats)
	n := e.copier(t, "a")
	st := copyOnce(t, n)
	if st.Copied != len(names) || st.Errors != 0 {
		t.Fatalf("stats %+v, want %d copied", st, len(names))
	}
	for _, name := range names {
		if !slices.Equal(readFile(t, e.src, name), readFile(t, e.dst, name)) {
			t.Errorf("%s not copied", name)
		}
	}
	want := slices.Clone(cats)
	slices.Sort(want)
	if got := listed(t, e.dst); !slices.Equal(got, want) {
		t.Errorf("destination lists %.80q, want %.80q", got, want)
	}
	for _, c := range cats {
		last, err := LastCopied(t.Context(), e.st, DefaultConfig().Table, c, 1)
		if err != nil || last != path.Base(names[slices.Index(cats, c)]) {
			t.Errorf("LastCopied(%.20q) = %q, %v", c, last, err)
		}
	}
	// Metric labels are bounded.
	mfs, err := n.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if len(lp.GetValue()) > layout.MaxName {
					t.Errorf("%s has a label of %d bytes", mf.GetName(), len(lp.GetValue()))
				}
			}
		}
	}
}

// TestCopiesConfiguredCategories: categories: may name any category.
func TestCopiesConfiguredCategories(t *testing.T) {
	e := newEnv(t)
	cats := oddCategories()
	names := publishCategories(t, e.src, cats)
	pick := []string{cats[0], cats[5]}
	cfg := DefaultConfig()
	cfg.Categories = pick
	if err := cfg.Validate(); err != nil {
		t.Fatalf("categories %.40q: %v", pick, err)
	}
	n := e.copier(t, "a", withConfig(func(c *Config) { c.Categories = pick }))
	if st := copyOnce(t, n); st.Copied != 2 || st.Errors != 0 {
		t.Fatalf("stats %+v, want 2 copied", st)
	}
	for i, name := range names {
		_, err := e.dst.Stat(name)
		if copied := err == nil; copied != (i == 0 || i == 5) {
			t.Errorf("%s copied: %v", name, copied)
		}
	}
	want := slices.Clone(pick)
	slices.Sort(want)
	if got := listed(t, e.dst); !slices.Equal(got, want) {
		t.Errorf("destination lists %.80q", got)
	}
}

// TestCopiesEveryCategoryToHDFS: the odd categories' names and sidecars
// are valid HDFS paths, listed back with their exact names.
func TestCopiesEveryCategoryToHDFS(t *testing.T) {
	dst, url := hdfsRoot(t)
	e := newEnv(t)
	e.dst = dst
	cats := append(oddCategories(), "plain")
	names := publishCategories(t, e.src, cats)
	n := e.copier(t, "a", withConfig(func(c *Config) { c.Destination = url }))
	if st := copyOnce(t, n); st.Copied != len(names) || st.Errors != 0 {
		t.Fatalf("stats %+v, want %d copied", st, len(names))
	}
	for _, name := range names {
		if !slices.Equal(readFile(t, e.src, name), readFile(t, e.dst, name)) {
			t.Errorf("%s differs in HDFS", name)
		}
	}
	want := slices.Clone(cats)
	slices.Sort(want)
	if got := listed(t, e.dst); !slices.Equal(got, want) {
		t.Errorf("HDFS lists %.80q, want %.80q", got, want)
	}
}
