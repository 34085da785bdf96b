package layout

import (
	"errors"
	"io/fs"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
)

// oldValid is the rule categories had to follow before Encode: they must
// keep their names.
var oldValid = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

func TestEncodeKeepsTodaysNames(t *testing.T) {
	for _, c := range []string{"access", "a", "A.b-c_d", "0", "x..y", strings.Repeat("z", MaxName)} {
		if !oldValid.MatchString(c) {
			t.Fatalf("test case %q is not an old-style name", c)
		}
		if got := Encode(c); got != c {
			t.Errorf("Encode(%q) = %q, want it unchanged", c, got)
		}
		if back, hashed, ok := Decode(c); !ok || hashed || back != c {
			t.Errorf("Decode(%q) = %q %v %v", c, back, hashed, ok)
		}
	}
}

func TestEncodeEscapes(t *testing.T) {
	for in, want := range map[string]string{
		"web/access": "web%2Faccess",
		"a b":        "a%20b",
		"_internal":  "%5Finternal",
		".x":         "%2Ex",
		"..":         "%2E.",
		"a_.b":       "a_.b",
		"100%":       "100%25",
		"a~b":        "a%7Eb",
		"a:b":        "a%3Ab",
		"é":          "%C3%A9",
		"\x00\xff":   "%00%FF",
	} {
		if got := Encode(in); got != want {
			t.Errorf("Encode(%q) = %q, want %q", in, got, want)
		}
		if back, hashed, ok := Decode(want); !ok || hashed || back != in {
			t.Errorf("Decode(%q) = %q %v %v, want %q", want, back, hashed, ok, in)
		}
	}
}

func TestLongNamesAreHashed(t *testing.T) {
	long := strings.Repeat("w", 300)
	huge := strings.Repeat("web/", 2500) // 10 KB, escapes throughout
	for _, c := range []string{long, huge, strings.Repeat("w", MaxName+1), strings.Repeat("/", 70)} {
		e := Encode(c)
		if len(e) > MaxName {
			t.Errorf("Encode of %d bytes is %d bytes", len(c), len(e))
		}
		if !strings.Contains(e, "~") || !NeedsSidecar(c) {
			t.Errorf("Encode of %d bytes = %q: not hashed", len(c), e)
		}
		if _, hashed, ok := Decode(e); !ok || !hashed {
			t.Errorf("Decode(%q) = hashed %v ok %v", e, hashed, ok)
		}
		if !MatchesHashed(e, c) || MatchesHashed(e, c+"x") {
			t.Errorf("MatchesHashed of %q", e)
		}
		// The prefix is whole escapes: it reads as the start of c.
		prefix, _, _ := strings.Cut(e, "~")
		if back, ok := unescape(prefix); !ok || !strings.HasPrefix(c, back) {
			t.Errorf("prefix %q does not decode to the start of the category", prefix)
		}
	}
	if Encode(long) == Encode(long+"w") {
		t.Error("two long categories share a name")
	}
}

func TestDecodeRefusesForeignNames(t *testing.T) {
	for _, name := range []string{"", ".hidden", "_SUCCESS", "a/b", "lost+found", "a%2f", "a%2", "%41", "a~b", "a~" + strings.Repeat("0", hashLen-1), "a~" + strings.Repeat("G", hashLen), "~" + strings.Repeat("0", hashLen), "_x~" + strings.Repeat("0", hashLen), strings.Repeat("x", MaxName+1)} {
		if c, hashed, ok := Decode(name); ok {
			t.Errorf("Decode(%q) = %q hashed %v, want refused", name, c, hashed)
		}
	}
}

func FuzzEncode(f *testing.F) {
	for _, s := range []string{"access", "web/access", "_x", ".", "%", "~", strings.Repeat("é/", 150)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, c string) {
		if c == "" {
			return
		}
		e := Encode(c)
		if len(e) == 0 || len(e) > MaxName || dfs.Hidden(e) || !fs.ValidPath(e) || strings.ContainsAny(e, "/:") {
			t.Fatalf("Encode(%q) = %q is not a safe path component", c, e)
		}
		for i := 0; i < len(e); i++ {
			if !plain(e[i]) && e[i] != '%' && e[i] != '~' {
				t.Fatalf("Encode(%q) = %q holds byte %#x", c, e, e[i])
			}
		}
		back, hashed, ok := Decode(e)
		if !ok {
			t.Fatalf("Decode(Encode(%q)) refused %q", c, e)
		}
		if hashed {
			if !MatchesHashed(e, c) {
				t.Fatalf("hashed %q does not match %q", e, c)
			}
		} else if back != c {
			t.Fatalf("Decode(Encode(%q)) = %q", c, back)
		}
		if oldValid.MatchString(c) && len(c) <= MaxName && e != c {
			t.Fatalf("old-style name %q encoded to %q", c, e)
		}
	})
}

func TestNames(t *testing.T) {
	n := SegmentName(0x1234, 7)
	if n != "0000000000001234-0000000000000007.seg" {
		t.Fatal(n)
	}
	e, s, ok := ParseSegmentName(n)
	if !ok || e != 0x1234 || s != 7 {
		t.Fatalf("parse: %d %d %v", e, s, ok)
	}
	if !(SegmentName(1, 0xff) < SegmentName(2, 0) && SegmentName(2, 9) < SegmentName(2, 10)) {
		t.Fatal("names do not sort by epoch then sequence")
	}
	for _, bad := range []string{"x.seg", "0000000000001234-0000000000000007", ".0000000000001234-0000000000000007.seg.inprogress", "000000000000123g-0000000000000007.seg", "8000000000000000-0000000000000000.seg"} {
		if _, _, ok := ParseSegmentName(bad); ok {
			t.Errorf("ParseSegmentName(%q) accepted", bad)
		}
	}
	if tmp := TempSegment(n); tmp != dfs.TempName(n) {
		t.Errorf("TempSegment %q, dfs.TempName %q", tmp, dfs.TempName(n))
	}
	if got, ok := ParseTempSegment(TempSegment(n)); !ok || got != n {
		t.Errorf("ParseTempSegment: %q %v", got, ok)
	}
	if got, ok := ParseSalvageSegment(SalvageSegment(n)); !ok || got != n {
		t.Errorf("ParseSalvageSegment: %q %v", got, ok)
	}
	for _, bad := range []string{n, "." + n, "." + n + ".salvage.inprogress", ".x.seg.inprogress"} {
		if _, ok := ParseTempSegment(bad); ok {
			t.Errorf("ParseTempSegment(%q) accepted", bad)
		}
	}
	for cat, want := range map[string][5]string{
		"access":     {"access/3", "calligraphus/access/3", "puma/access/3", "c/access/3", "s/access/3/"},
		"web/access": {"web%2Faccess/3", "calligraphus/web%2Faccess/3", "puma/web%2Faccess/3", "c/web%2Faccess/3", "s/web%2Faccess/3/"},
	} {
		got := [5]string{BucketDir(cat, 3), WriterLease(cat, 3), ShardLease(cat, 3), PumaCommitRow(cat, 3), PumaCellPrefix(cat, 3)}
		if got != want {
			t.Errorf("names of %q = %q, want %q", cat, got, want)
		}
	}
	// Rows of category "a" and of a category "a/1" cannot overlap.
	if strings.HasPrefix(PumaCellPrefix("a/1", 2), PumaCellPrefix("a", 1)) {
		t.Error("cell rows of a/1 fall under those of a")
	}
	for _, s := range []string{"0", "7", "4095"} {
		if b, ok := ParseBucket(s); !ok || BucketDir("c", b) != "c/"+s {
			t.Errorf("ParseBucket(%q) = %d %v", s, b, ok)
		}
	}
	for _, s := range []string{"", "-1", "01", "+1", "a", ".1"} {
		if _, ok := ParseBucket(s); ok {
			t.Errorf("ParseBucket(%q) accepted", s)
		}
	}
}

func TestCategoriesListsEveryCategoryWithItsName(t *testing.T) {
	fsys, err := localfs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cats := []string{"access", "web/access", "a b", "_internal", ".x", strings.Repeat("l", 300), strings.Repeat("web/", 2500)}
	for i, c := range cats {
		if err := WriteSidecar(fsys, c, "1"); err != nil {
			t.Fatal(err)
		}
		if err := WriteSidecar(fsys, c, "2"); err != nil { // again: a second writer
			t.Fatal(err)
		}
		if err := fsys.MkdirAll(BucketDir(c, i)); err != nil {
			t.Fatal(err)
		}
	}
	// Not categories: a file, a hidden directory, a foreign name.
	for _, d := range []string{".trash/x", "lost+found/x"} {
		if err := fsys.MkdirAll(d); err != nil {
			t.Fatal(err)
		}
	}
	if err := dfs.WriteFile(fsys, "README", []byte("x")); err != nil {
		t.Fatal(err)
	}
	got, unreadable, err := Categories(fsys)
	if err != nil || len(unreadable) != 0 {
		t.Fatalf("Categories: %v, unreadable %v", err, unreadable)
	}
	var names []string
	for _, c := range got {
		names = append(names, c.Name)
		if c.Dir != Encode(c.Name) {
			t.Errorf("category %q in dir %q", c.Name, c.Dir)
		}
	}
	slices.Sort(names)
	want := slices.Clone(cats)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("listed %d categories %q, want %d", len(names), names, len(want))
	}
	// No temporary sidecar is left, and short names have no sidecar.
	for _, c := range cats {
		infos, err := fsys.ReadDir(CategoryDir(c))
		if err != nil {
			t.Fatal(err)
		}
		for _, fi := range infos {
			if fi.Name() != SidecarName && dfs.Hidden(fi.Name()) {
				t.Errorf("%s holds %s", CategoryDir(c), fi.Name())
			}
			if fi.Name() == SidecarName && !NeedsSidecar(c) {
				t.Errorf("short category %q has a sidecar", c)
			}
		}
	}

	// A damaged sidecar makes the category unreadable, not another one.
	long := strings.Repeat("l", 300)
	if err := fsys.Remove(SidecarPath(long)); err != nil {
		t.Fatal(err)
	}
	if err := dfs.WriteFile(fsys, SidecarPath(long), []byte(long+"!")); err != nil {
		t.Fatal(err)
	}
	got, unreadable, err = Categories(fsys)
	if err != nil || len(got) != len(cats)-1 || !slices.Equal(unreadable, []string{Encode(long)}) {
		t.Errorf("with a damaged sidecar: %d categories, unreadable %q, %v", len(got), unreadable, err)
	}
	if err := WriteSidecar(fsys, long, "3"); !errors.Is(err, ErrSidecarMismatch) {
		t.Errorf("WriteSidecar over another category's sidecar: %v", err)
	}
}

// TestPublishedListsOnlyPublishedSegments: the listing every reader
// shares passes over files being written, salvages, markers, foreign
// names and directories, and starts after the name given.
func TestPublishedListsOnlyPublishedSegments(t *testing.T) {
	fsys, err := localfs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := BucketDir("web/access", 2)
	if got, err := Published(fsys, dir, ""); err != nil || got != nil {
		t.Fatalf("a bucket not created yet: %v %v", got, err)
	}
	segs := []string{SegmentName(1, 1), SegmentName(1, 2), SegmentName(2, 1)}
	others := []string{TempSegment(SegmentName(2, 2)), SalvageSegment(SegmentName(2, 2)), RetentionMarkName, "x.seg", "_" + SegmentName(3, 1)}
	for _, n := range append(slices.Clone(segs), others...) {
		if err := dfs.WriteFile(fsys, dir+"/"+n, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := fsys.MkdirAll(dir + "/" + SegmentName(9, 9)); err != nil {
		t.Fatal(err)
	}
	names := func(after string) []string {
		infos, err := Published(fsys, dir, after)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, fi := range infos {
			out = append(out, fi.Name())
		}
		return out
	}
	if got := names(""); !slices.Equal(got, segs) {
		t.Errorf("published: %q, want %q", got, segs)
	}
	if got := names(segs[0]); !slices.Equal(got, segs[1:]) {
		t.Errorf("published after %s: %q, want %q", segs[0], got, segs[1:])
	}
	if got := names(segs[2]); got != nil {
		t.Errorf("published after the last: %q", got)
	}
	for _, b := range []int{0, 10, 3} {
		if err := fsys.MkdirAll(BucketDir("web/access", b)); err != nil {
			t.Fatal(err)
		}
	}
	if err := fsys.MkdirAll(CategoryDir("web/access") + "/dt=2024-01-01"); err != nil {
		t.Fatal(err)
	}
	if got, err := Buckets(fsys, CategoryDir("web/access")); err != nil || !slices.Equal(got, []int{0, 2, 3, 10}) {
		t.Errorf("buckets: %v %v", got, err)
	}
	if got, err := Buckets(fsys, "nothing"); err != nil || got != nil {
		t.Errorf("buckets of a missing category: %v %v", got, err)
	}
}

func TestRetentionMark(t *testing.T) {
	fsys, err := localfs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := BucketDir("a", 0)
	if _, ok, err := ReadRetentionMark(fsys, dir); ok || err != nil {
		t.Fatalf("no mark yet: %v %v", ok, err)
	}
	m := RetentionMark{Through: SegmentName(3, 4), ThroughMs: 1_700_000_000_123}
	for _, unique := range []string{"1", "1", "2"} { // rewritten, also by the same holder
		if err := WriteRetentionMark(fsys, dir, m, unique); err != nil {
			t.Fatal(err)
		}
	}
	got, ok, err := ReadRetentionMark(fsys, dir)
	if err != nil || !ok || got != m {
		t.Fatalf("read back %+v %v %v, want %+v", got, ok, err, m)
	}
	infos, err := fsys.ReadDir(dir)
	if err != nil || len(infos) != 1 || infos[0].Name() != RetentionMarkName {
		t.Errorf("bucket holds %v (%v), want only the mark", infos, err)
	}
	if err := dfs.WriteFile(fsys, dir+"/"+RetentionMarkName, []byte(`{"through":"x"}`)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadRetentionMark(fsys, dir); err == nil {
		t.Error("a mark naming no segment was accepted")
	}
	// A damaged mark is replaced; an earlier one never replaces a later
	// one (a stale writer's), each field kept at its latest.
	if err := WriteRetentionMark(fsys, dir, m, "1"); err != nil {
		t.Fatal(err)
	}
	if err := WriteRetentionMark(fsys, dir, RetentionMark{Through: SegmentName(3, 2), ThroughMs: m.ThroughMs + 1}, "3"); err != nil {
		t.Fatal(err)
	}
	want := RetentionMark{Through: m.Through, ThroughMs: m.ThroughMs + 1}
	if got, ok, err := ReadRetentionMark(fsys, dir); err != nil || !ok || got != want {
		t.Errorf("after an earlier mark: %+v %v %v, want %+v", got, ok, err, want)
	}
}

func TestMergedFile(t *testing.T) {
	start := time.Date(2024, 5, 6, 7, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		cat    string
		start  time.Time
		period time.Duration
		ext    string
		want   string
	}{
		{"access", start, time.Hour, "", "access/dt=2024-05-06/hh=07/part-3"},
		{"web/access", start, 24 * time.Hour, ".gz", "web%2Faccess/dt=2024-05-06/hh=07/part-3.gz"},
		{"access", start.Add(35 * time.Minute), 5 * time.Minute, "", "access/dt=2024-05-06/hh=07/mm=35/part-3"},
		{"access", start.In(time.FixedZone("x", 3600)), time.Hour, "", "access/dt=2024-05-06/hh=07/part-3"},
	} {
		if got := MergedFile(c.cat, 3, c.start, c.period, c.ext); got != c.want {
			t.Errorf("MergedFile(%q, %v, %v) = %q, want %q", c.cat, c.start, c.period, got, c.want)
		}
	}
}

// countingFS counts the entries a file system describes: a Stat each, and
// each entry of a ReadDir.
type countingFS struct {
	*localfs.FS
	described int
}

func (c *countingFS) Stat(name string) (fs.FileInfo, error) {
	c.described++
	return c.FS.Stat(name)
}

func (c *countingFS) ReadDir(name string) ([]fs.FileInfo, error) {
	infos, err := c.FS.ReadDir(name)
	c.described += len(infos)
	return infos, err
}

// describingFS is a file system without dfs.NameLister: ReadDir alone.
type describingFS struct{ dfs.FS }

// TestPublishedDescribesOnlyWhatFollows: a reader lists its bucket each
// time it catches up, behind it the days of segments retention keeps; on
// a file system that lists names alone, only the segments after the
// reader's position are described (an lstat each on a local disk), and
// the listing is the one ReadDir gives.
func TestPublishedDescribesOnlyWhatFollows(t *testing.T) {
	local, err := localfs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := BucketDir("web", 0)
	var segs []string
	for i := range 200 {
		segs = append(segs, SegmentName(1, uint64(i+1)))
	}
	for _, n := range append(slices.Clone(segs), TempSegment(SegmentName(1, 999)), "x.seg") {
		if err := dfs.WriteFile(local, dir+"/"+n, []byte(n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := local.MkdirAll(dir + "/" + SegmentName(1, 500)); err != nil {
		t.Fatal(err)
	}
	cfs := &countingFS{FS: local}
	for _, after := range []string{segs[197], segs[0], ""} {
		cfs.described = 0
		got, err := Published(cfs, dir, after)
		if err != nil {
			t.Fatal(err)
		}
		want, err := Published(describingFS{local}, dir, after)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("after %q: %d segments, ReadDir's listing %d", after, len(got), len(want))
		}
		for i := range got {
			if got[i].Name() != want[i].Name() || got[i].Size() != want[i].Size() || !got[i].ModTime().Equal(want[i].ModTime()) {
				t.Errorf("after %q: segment %d is %s %d %v, ReadDir's %s %d %v", after, i,
					got[i].Name(), got[i].Size(), got[i].ModTime(), want[i].Name(), want[i].Size(), want[i].ModTime())
			}
		}
		// The segments after, and the directory named like one.
		if limit := len(want) + 1; cfs.described > limit {
			t.Errorf("after %q: %d entries described for %d segments after it", after, cfs.described, len(want))
		}
	}
}

// TestWriteSidecarRemovesCrashedTemps: a writer that crashed before its
// rename left its temporary sidecar, under a name no later writer makes
// again; the next WriteSidecar removes it, whether it publishes the
// sidecar or finds it there. A writer whose temporary file is removed
// so while it writes finds the sidecar published and succeeds.
func TestWriteSidecarRemovesCrashedTemps(t *testing.T) {
	fsys, err := localfs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("l", 300)
	crashed := func(unique string) string {
		tmp := CategoryDir(long) + "/" + SidecarName + "." + unique + TempSuffix
		if err := dfs.WriteFile(fsys, tmp, []byte(long[:10])); err != nil {
			t.Fatal(err)
		}
		return tmp
	}
	left := crashed("1")
	if err := WriteSidecar(fsys, long, "2"); err != nil {
		t.Fatal(err)
	}
	if _, err := fsys.Stat(left); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a crashed writer's temporary sidecar left after the sidecar was published: %v", err)
	}
	left = crashed("3")
	if err := WriteSidecar(fsys, long, "4"); err != nil {
		t.Fatal(err)
	}
	if _, err := fsys.Stat(left); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a crashed writer's temporary sidecar left after the sidecar was found: %v", err)
	}
	if got, err := ReadSidecar(fsys, CategoryDir(long)); err != nil || got != long {
		t.Errorf("sidecar %.12q, %v", got, err)
	}

	// A writer that read no sidecar, and whose temporary file another
	// removes before its rename.
	if err := fsys.Remove(SidecarPath(long)); err != nil {
		t.Fatal(err)
	}
	raced := dfstest.NewFaulty(fsys)
	raced.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpRename && strings.Contains(c.Name, ".5"+TempSuffix) {
			raced.SetHook(nil)
			if err := WriteSidecar(fsys, long, "6"); err != nil {
				t.Errorf("the other writer: %v", err)
			}
		}
		return nil
	})
	if err := WriteSidecar(raced, long, "5"); err != nil {
		t.Errorf("a writer whose temporary sidecar another removed after publishing the sidecar: %v", err)
	}
	names, err := dfs.ReadDirNames(fsys, CategoryDir(long))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{SidecarName}) {
		t.Errorf("category directory holds %q, want the sidecar alone", names)
	}
}
