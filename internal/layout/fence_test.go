package layout

import (
	"errors"
	"io/fs"
	"slices"
	"testing"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
)

func publishedNames(t *testing.T, fsys dfs.FS, dir string) []string {
	t.Helper()
	infos, err := Published(fsys, dir, "")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, fi := range infos {
		out = append(out, fi.Name())
	}
	return out
}

func putSegment(t *testing.T, fsys dfs.FS, dir string, epoch int64, seq uint64) string {
	t.Helper()
	name := SegmentName(epoch, seq)
	if err := dfs.WriteFile(fsys, dir+"/"+name, []byte("x")); err != nil {
		t.Fatal(err)
	}
	return name
}

// TestFenceSealsOutAStaleWriter walks the protocol of fence.go through
// the interleavings that matter: a stale writer's segment published
// before the new owner's intent counts, one published after it never
// does, readers wait while the new owner has not sealed, a late seal of
// a superseded owner changes nothing, and a segment counted stays
// counted through later owners.
func TestFenceSealsOutAStaleWriter(t *testing.T) {
	fsys, err := localfs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := BucketDir("cat", 0)
	a1 := putSegment(t, fsys, dir, 1, 1)
	if got := publishedNames(t, fsys, dir); !slices.Equal(got, []string{a1}) {
		t.Fatalf("no fence: %v", got)
	}
	// Owner 2 takes the bucket: intent first.
	if err := WriteIntent(fsys, dir, 2); err != nil {
		t.Fatal(err)
	}
	if err := WriteIntent(fsys, dir, 2); err == nil {
		t.Fatal("a second intent of epoch 2 was created")
	}
	// Writer 1, stale, publishes before owner 2 lists: covered.
	a2 := putSegment(t, fsys, dir, 1, 2)
	f, err := ReadFence(fsys, dir)
	if err != nil {
		t.Fatal(err)
	}
	if v := f.Verdict(a2); v != Undecided {
		t.Fatalf("before the seal: %v, want undecided", v)
	}
	if got := publishedNames(t, fsys, dir); len(got) != 0 {
		t.Fatalf("readers went past an unsealed intent: %v", got)
	}
	if _, err := WriteSeal(fsys, dir, 2, "u"); err != nil {
		t.Fatal(err)
	}
	// Writer 1 publishes again after the listing: fenced.
	a3 := putSegment(t, fsys, dir, 1, 3)
	b1 := putSegment(t, fsys, dir, 2, 1)
	if got := publishedNames(t, fsys, dir); !slices.Equal(got, []string{a1, a2, b1}) {
		t.Fatalf("after seal 2: %v, want %v", got, []string{a1, a2, b1})
	}
	if f, _ = ReadFence(fsys, dir); f.Verdict(a3) != Fenced || f.Verdict(a2) != Counted || f.Verdict(b1) != Counted {
		t.Fatalf("verdicts %v %v %v", f.Verdict(a3), f.Verdict(a2), f.Verdict(b1))
	}

	// Owner 3 takes over; owner 2 was stalled and publishes and seals late.
	if err := WriteIntent(fsys, dir, 3); err != nil {
		t.Fatal(err)
	}
	b2 := putSegment(t, fsys, dir, 2, 2) // before owner 3 lists: covered
	if _, err := WriteSeal(fsys, dir, 3, "u"); err != nil {
		t.Fatal(err)
	}
	b3 := putSegment(t, fsys, dir, 2, 3) // after: fenced
	if _, err := WriteSeal(fsys, dir, 2, "late"); !errors.Is(err, ErrSuperseded) {
		t.Fatalf("late seal of a superseded owner: %v, want ErrSuperseded", err)
	}
	c1 := putSegment(t, fsys, dir, 3, 1)
	want := []string{a1, a2, b1, b2, c1}
	if got := publishedNames(t, fsys, dir); !slices.Equal(got, want) {
		t.Fatalf("after seal 3: %v, want %v", got, want)
	}
	// A seal left half-written by a writer that died.
	if err := dfs.WriteFile(fsys, FenceDir(dir)+"/."+SealName(3)+".x"+TempSuffix, []byte("{")); err != nil {
		t.Fatal(err)
	}
	// Owner 4 inherits seal 3 below epoch 3: a3 and b3 stay out.
	if err := WriteIntent(fsys, dir, 4); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteSeal(fsys, dir, 4, "u"); err != nil {
		t.Fatal(err)
	}
	if got := publishedNames(t, fsys, dir); !slices.Equal(got, want) {
		t.Fatalf("after seal 4: %v, want %v", got, want)
	}
	_ = b3
	// Older intents and seals are pruned.
	infos, err := fsys.ReadDir(FenceDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, fi := range infos {
		names = append(names, fi.Name())
	}
	if !slices.Equal(names, []string{IntentName(4), SealName(4)}) {
		t.Errorf("fence dir holds %v", names)
	}
}

// TestFenceCrashedOwnerBlocksUntilNextSeal: an owner that dies between
// its intent and its seal leaves the older segments undecided; the next
// owner's seal decides them.
func TestFenceCrashedOwnerBlocksUntilNextSeal(t *testing.T) {
	fsys, err := localfs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := BucketDir("cat", 1)
	a1 := putSegment(t, fsys, dir, 1, 1)
	if err := WriteIntent(fsys, dir, 2); err != nil {
		t.Fatal(err)
	}
	a2 := putSegment(t, fsys, dir, 1, 2)
	if got := publishedNames(t, fsys, dir); len(got) != 0 {
		t.Fatalf("readers went past an unsealed intent: %v", got)
	}
	if err := WriteIntent(fsys, dir, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteSeal(fsys, dir, 3, "u"); err != nil {
		t.Fatal(err)
	}
	if got := publishedNames(t, fsys, dir); !slices.Equal(got, []string{a1, a2}) {
		t.Fatalf("after the next owner's seal: %v", got)
	}
}

// TestFenceTopByNamesIsByReadDir: FenceTop on the local dfs (names alone,
// dfs.NameLister) gives what it gives through ReadDir (the local dfs
// behind a wrapper that hides its NameLister), whatever the fence
// directory holds: none, intents, seals, a seal being published, names
// that are neither, a directory.
func TestFenceTopByNamesIsByReadDir(t *testing.T) {
	fsys, err := localfs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var byReadDir dfs.FS = dfstest.NewFaulty(fsys)
	if _, ok := byReadDir.(dfs.NameLister); ok {
		t.Fatal("the wrapper lists names itself; the test compares nothing")
	}
	dir := "cat/3"
	fdir := FenceDir(dir)
	check := func(step string, want int64) {
		t.Helper()
		a, errA := FenceTop(fsys, dir)
		b, errB := FenceTop(byReadDir, dir)
		if errA != nil || errB != nil || a != b || a != want {
			t.Fatalf("%s: FenceTop by names = %d, %v; by ReadDir = %d, %v; want %d", step, a, errA, b, errB, want)
		}
	}
	check("no bucket", 0)
	putSegment(t, fsys, dir, 1, 1)
	check("no fence directory", 0)
	steps := []struct {
		name string
		top  int64
	}{
		{IntentName(2), 2},
		{IntentName(9), 9},
		{SealName(2), 9},
		{"." + SealName(12) + ".x" + TempSuffix, 9}, // a seal being published
		{"00000000000000ff.junk", 9},
		{"ff" + IntentName(1), 9}, // not 16 hex digits
		{SealName(10), 10},
		{IntentName(0x7fffffffffff), 0x7fffffffffff},
	}
	for _, s := range steps {
		if err := dfs.WriteFile(fsys, fdir+"/"+s.name, nil); err != nil {
			t.Fatal(err)
		}
		check(s.name, s.top)
	}
	if err := fsys.MkdirAll(fdir + "/" + IntentName(0x7ffffffffffff)); err != nil {
		t.Fatal(err)
	}
	check("a directory named like an intent", 0x7ffffffffffff)
}

// readDirCounting is a file system that lists names itself
// (dfs.NameLister) and records the directories it lists whole (ReadDir:
// an lstat per entry on a local disk).
type readDirCounting struct {
	*localfs.FS
	readDirs []string
}

func (c *readDirCounting) ReadDir(name string) ([]fs.FileInfo, error) {
	c.readDirs = append(c.readDirs, name)
	return c.FS.ReadDir(name)
}

// TestWriteSealByNamesIsByReadDir: the seal computed from a listing of
// names (a local disk: no lstat of the bucket's millions of names) is
// the one computed from a full listing, with hidden files, several
// epochs, a previous seal, and directories named like segments (the last
// of an epoch, and every one of another); and the bucket is not listed
// whole.
func TestWriteSealByNamesIsByReadDir(t *testing.T) {
	build := func(fsys dfs.FS) {
		t.Helper()
		for _, s := range [][2]uint64{{1, 1}, {1, 2}, {1, 7}, {2, 1}, {2, 2}, {3, 4}} {
			putSegment(t, fsys, dir0, int64(s[0]), s[1])
		}
		for _, d := range []string{SegmentName(2, 3), SegmentName(4, 1)} {
			if err := fsys.MkdirAll(dir0 + "/" + d); err != nil {
				t.Fatal(err)
			}
		}
		if err := dfs.WriteFile(fsys, dir0+"/."+SegmentName(3, 9)+".inprogress", []byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := WriteIntent(fsys, dir0, 3); err != nil {
			t.Fatal(err)
		}
		if _, err := WriteSeal(fsys, dir0, 3, "a"); err != nil {
			t.Fatal(err)
		}
		putSegment(t, fsys, dir0, 1, 9) // after the seal of 3: never counts
		if err := WriteIntent(fsys, dir0, 5); err != nil {
			t.Fatal(err)
		}
	}
	local, err := localfs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	byNames := &readDirCounting{FS: local}
	build(byNames)
	other, err := localfs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	byReadDir := dfstest.NewFaulty(other)
	build(byReadDir)
	byNames.readDirs = nil
	a, errA := WriteSeal(byNames, dir0, 5, "b")
	b, errB := WriteSeal(byReadDir, dir0, 5, "b")
	if errA != nil || errB != nil {
		t.Fatalf("WriteSeal: by names %v, by ReadDir %v", errA, errB)
	}
	want := []string{SegmentName(1, 7), SegmentName(2, 2), SegmentName(3, 4)}
	if !slices.Equal(a.Last, want) || !slices.Equal(b.Last, want) {
		t.Fatalf("seal by names %q, by ReadDir %q; want %q", a.Last, b.Last, want)
	}
	if slices.Contains(byNames.readDirs, dir0) {
		t.Errorf("the bucket was listed whole (ReadDir: an lstat per name): %q", byNames.readDirs)
	}
}

const dir0 = "cat/0"
