package layout

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"

	"github.com/freeway-dev/freeway/internal/dfs"
)

// Category is a category directory found in a dfs.
type Category struct {
	Name string // the category
	Dir  string // its directory: Encode(Name)
}

// Categories lists the category directories at the root of fsys, in
// directory name order. Entries Encode cannot have made (files, hidden or
// foreign directories) are passed over. A long name whose sidecar is
// missing or does not match is returned in unreadable rather than as a
// category: a writer creates the sidecar before the first bucket, so that
// is damage (or a sidecar being replaced), and the caller says so.
func Categories(fsys dfs.FS) (cats []Category, unreadable []string, err error) {
	infos, err := fsys.ReadDir("")
	if err != nil {
		return nil, nil, fmt.Errorf("list categories in %s: %w", fsys, err)
	}
	for _, fi := range infos {
		if !fi.IsDir() {
			continue
		}
		name, hashed, ok := Decode(fi.Name())
		if !ok {
			continue
		}
		if hashed {
			name, err = ReadSidecar(fsys, fi.Name())
			if err != nil {
				unreadable = append(unreadable, fi.Name())
				continue
			}
		}
		cats = append(cats, Category{Name: name, Dir: fi.Name()})
	}
	return cats, unreadable, nil
}

// ReadSidecar returns the category of the hashed directory dir from its
// sidecar, checking that it is the category the name stands for.
func ReadSidecar(fsys dfs.FS, dir string) (string, error) {
	data, err := dfs.ReadFile(fsys, dir+"/"+SidecarName)
	if err != nil {
		return "", fmt.Errorf("read category sidecar of %s: %w", dir, err)
	}
	if !MatchesHashed(dir, string(data)) {
		return "", fmt.Errorf("check category sidecar of %s (%d bytes): %w", dir, len(data), ErrSidecarMismatch)
	}
	return string(data), nil
}

// ErrSidecarMismatch means a category directory's sidecar names another
// category: two categories whose long names hash alike, or damage.
var ErrSidecarMismatch = errors.New("category sidecar names another category")

// WriteSidecar makes sure the directory of a long category holds its
// sidecar; other categories need none. Several writers may call it at
// once: each writes its own hidden temporary file (unique names it, a
// lease epoch say) and renames it over the sidecar, and the contents are
// the same. Once the sidecar is there, the temporary files of others
// are removed: a crash before the rename leaves one behind, under a
// name no later call makes again; one of a writer still at work makes
// its rename fail, after which it finds the sidecar there, as it wants.
func WriteSidecar(fsys dfs.FS, category, unique string) error {
	if !NeedsSidecar(category) {
		return nil
	}
	p := SidecarPath(category)
	tmp := CategoryDir(category) + "/" + SidecarName + "." + unique + TempSuffix
	data, err := dfs.ReadFile(fsys, p)
	if err == nil {
		if !bytes.Equal(data, []byte(category)) {
			return fmt.Errorf("check %s: %w", p, ErrSidecarMismatch)
		}
		removeSidecarTemps(fsys, category, tmp)
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if err := publishSidecar(fsys, category, tmp, p); err != nil {
		// Published meanwhile by another writer, which may have
		// removed this one's temporary file: the same bytes.
		if data, rerr := dfs.ReadFile(fsys, p); rerr == nil && bytes.Equal(data, []byte(category)) {
			return nil
		}
		return err
	}
	removeSidecarTemps(fsys, category, tmp)
	return nil
}

// publishSidecar writes the sidecar p of category through the temporary
// file tmp.
func publishSidecar(fsys dfs.FS, category, tmp, p string) error {
	f, err := fsys.Create(tmp)
	if errors.Is(err, fs.ErrExist) {
		// Left by a crash of the same grant's writer: ours to replace.
		if err := fsys.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale %s: %w", tmp, err)
		}
		f, err = fsys.Create(tmp)
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	if _, err := f.Write([]byte(category)); err != nil {
		_ = f.Close()
		_ = fsys.Remove(tmp) // the write error is the one to report
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		_ = fsys.Remove(tmp) // the close error is the one to report
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := fsys.Rename(tmp, p); err != nil {
		_ = fsys.Remove(tmp) // the rename error is the one to report
		return fmt.Errorf("publish %s: %w", p, err)
	}
	return nil
}

// removeSidecarTemps removes, best effort, the sidecar's temporary files
// in the category's directory other than own: once the sidecar is there
// they are of no use.
func removeSidecarTemps(fsys dfs.FS, category, own string) {
	dir := CategoryDir(category)
	names, err := dfs.ReadDirNames(fsys, dir)
	if err != nil {
		return
	}
	for _, name := range names {
		if name == path.Base(own) || !strings.HasPrefix(name, SidecarName+".") || !strings.HasSuffix(name, TempSuffix) {
			continue
		}
		_ = fsys.Remove(dir + "/" + name) // best effort: the next call tries again
	}
}

// ListBudget bounds the share of a reader's time spent listing a bucket
// (Published): after a listing that took d, the reader (ptail, the
// copier) lists the bucket again no sooner than ListBudget×d later, and
// goes on meanwhile with what it knows (the names a writer publishes
// next, what the last listing found). A listing reads every name in the
// bucket, and a bucket keeps dfs_retention of segments: on a local disk
// with 100 ms segments, millions of names after days, seconds a listing.
const ListBudget = 10

// Published lists the published segments of the bucket directory dir
// that count (fence.go) and whose names sort after after ("" for all of
// them), in name order: the one listing that readers (ptail, so Puma),
// the copier and retention share. Hidden files (segments being written
// or salvaged, markers, the fence directory) and names that are not
// segment names are never listed. A segment fenced off by a newer
// writer's seal is passed over; the list ends before the first segment
// whose fate a newer writer has not sealed yet (the next call goes on),
// and on a local disk before segments published while it lists (the
// next call has them; see segmentsAfter). A bucket that does not exist
// yet has no segments.
func Published(fsys dfs.FS, dir, after string) ([]fs.FileInfo, error) {
	published, _, err := PublishedAndFenced(fsys, dir, after)
	return published, err
}

// PublishedAndFenced is Published, and with it, from the same listing,
// the segments a newer owner's seal leaves out (fenced), in name order.
// No reader ever counts a fenced segment, and the verdict is final
// (later seals carry an older epoch's last segment forward from the seal
// before), so retention deletes them once they are old enough; a stale
// writer removes its own when it can.
func PublishedAndFenced(fsys dfs.FS, dir, after string) (published, fenced []fs.FileInfo, err error) {
	// The bucket first, then its fence: a fence read after the listing is
	// at least as new as every segment listed (see fence.go).
	out, err := segmentsAfter(fsys, dir, after)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list bucket %s: %w", dir, err)
	}
	return judge(fsys, dir, out, fs.FileInfo.Name)
}

// Entry is a segment of a bucket as ListPublishedAndFenced lists it: its
// name, and its description if the listing carried one.
type Entry struct {
	Name string
	Info fs.FileInfo // nil until Describe, when listed by name only
}

// Describe returns e's description: the listing's, or a Stat of the
// segment in the bucket directory dir, which e keeps. A segment removed
// since the listing gives an error wrapping fs.ErrNotExist.
func (e *Entry) Describe(fsys dfs.FS, dir string) (fs.FileInfo, error) {
	if e.Info == nil {
		fi, err := fsys.Stat(path.Join(dir, e.Name))
		if err != nil {
			return nil, err
		}
		e.Info = fi
	}
	return e.Info, nil
}

// ListPublishedAndFenced is PublishedAndFenced(fsys, dir, "") for a
// caller that needs few of the segments described: retention, which
// keeps dfs_retention of them in every bucket (days: millions of files
// on a local disk) and needs the times of only those it may delete. On a
// file system that lists names for less than it describes entries
// (dfs.NameLister) it lists names only, and an Entry is described when
// asked; elsewhere (HDFS, whose listing describes every entry anyway)
// the entries carry the listing's descriptions. A name-only listing
// cannot tell a directory named like a segment from a segment: Describe
// can.
func ListPublishedAndFenced(fsys dfs.FS, dir string) (published, fenced []Entry, err error) {
	var out []Entry
	if _, ok := fsys.(dfs.NameLister); ok {
		var names []string
		names, err = dfs.ReadDirNames(fsys, dir)
		for _, name := range names {
			if isSegment(name, "") {
				out = append(out, Entry{Name: name})
			}
		}
	} else {
		var infos []fs.FileInfo
		infos, err = fsys.ReadDir(dir)
		for _, fi := range infos {
			if !fi.IsDir() && isSegment(fi.Name(), "") {
				out = append(out, Entry{Name: fi.Name(), Info: fi})
			}
		}
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list bucket %s: %w", dir, err)
	}
	return judge(fsys, dir, out, func(e Entry) string { return e.Name })
}

// judge sorts the segments of a listing of the bucket directory dir by
// name and splits them by the bucket's fence into those that count, up
// to the first whose fate is undecided (published), and those a newer
// owner's seal leaves out (fenced).
func judge[T any](fsys dfs.FS, dir string, out []T, name func(T) string) (published, fenced []T, err error) {
	// ReadDir sorts by name already; a dfs that did not would break the
	// order every reader relies on.
	slices.SortFunc(out, func(a, b T) int { return strings.Compare(name(a), name(b)) })
	if len(out) == 0 {
		return nil, nil, nil
	}
	// Usually every segment listed is of the newest owner's epoch or
	// later: then the listing of the fence directory decides them all,
	// without reading a seal.
	minEpoch := int64(-1)
	for _, s := range out {
		if e, _, _ := ParseSegmentName(name(s)); minEpoch < 0 || e < minEpoch {
			minEpoch = e
		}
	}
	top, err := FenceTop(fsys, dir)
	if err != nil {
		return nil, nil, err
	}
	if top <= minEpoch {
		return out, nil, nil
	}
	fence, err := ReadFence(fsys, dir)
	if err != nil {
		return nil, nil, err
	}
	undecided := false
	for _, s := range out {
		switch fence.Verdict(name(s)) {
		case Counted:
			if !undecided {
				published = append(published, s)
			}
		case Fenced:
			fenced = append(fenced, s)
		case Undecided:
			undecided = true // readers wait here; fenced ones after it are final still
		}
	}
	return published, fenced, nil
}

// isSegment reports whether name, listed in a bucket directory, is a
// published segment's named after after: not hidden, a segment name.
func isSegment(name, after string) bool {
	if dfs.Hidden(name) || name <= after {
		return false
	}
	_, _, ok := ParseSegmentName(name)
	return ok
}

// segmentsAfter lists the segments of the bucket directory dir named
// after after (published ones: not hidden, not directories). On a file
// system that lists names for less than it describes entries
// (dfs.NameLister: a local directory, where describing one is an lstat),
// it lists the names and describes only the segments after after: a
// reader lists its bucket each time it catches up, and retention keeps
// days of segments behind it, which it would otherwise describe every
// time. A segment removed between the listing and its description
// (retention) is left out, as ReadDir leaves out one removed while it
// lists.
//
// A listing of a local directory is no snapshot: of the names renamed
// into it while it is read, it may miss one and hold a later one (ext4
// reads a directory in hash order), and a reader would pass over the
// one missed for good. A name there for the whole of a listing is in
// it, and the segments that count are published in name order (a
// writer's in sequence, an older epoch's before the newer owner's seal),
// so a second listing holds every segment up to the greatest the first
// one found, published before the second began; the later ones wait for
// the next call. HDFS lists a directory in pages in name order, so a
// name published while it lists is missed only with every name after
// it: one listing there (ReadDir) is enough.
func segmentsAfter(fsys dfs.FS, dir, after string) ([]fs.FileInfo, error) {
	var out []fs.FileInfo
	if l, ok := fsys.(dfs.NameLister); ok {
		first, err := l.ReadDirNames(dir)
		if err != nil {
			return nil, err
		}
		upTo := ""
		for _, name := range first {
			if isSegment(name, after) {
				upTo = max(upTo, name)
			}
		}
		if upTo == "" {
			return nil, nil
		}
		names, err := l.ReadDirNames(dir)
		if err != nil {
			return nil, err
		}
		for _, name := range names {
			if !isSegment(name, after) || name > upTo {
				continue
			}
			fi, err := fsys.Stat(path.Join(dir, name))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, err
			}
			if !fi.IsDir() {
				out = append(out, fi)
			}
		}
		return out, nil
	}
	infos, err := fsys.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, fi := range infos {
		if !fi.IsDir() && isSegment(fi.Name(), after) {
			out = append(out, fi)
		}
	}
	return out, nil
}

// Buckets lists the bucket numbers of the category directory dir, in
// increasing order. A category without a directory has none.
func Buckets(fsys dfs.FS, dir string) ([]int, error) {
	infos, err := fsys.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list category %s: %w", dir, err)
	}
	var out []int
	for _, fi := range infos {
		if !fi.IsDir() {
			continue
		}
		if b, ok := ParseBucket(fi.Name()); ok {
			out = append(out, b)
		}
	}
	slices.Sort(out)
	return out, nil
}

// RetentionMark is what retention leaves in a bucket directory
// (RetentionMarkName) before it deletes segments: the last segment it has
// deleted, or is about to. Every published segment of the bucket named at
// or before Through may be gone; a reader that needs one of them (a Puma
// shard without a commit row, or whose commit row points at or before
// Through) knows from it that its data is incomplete, and how far.
type RetentionMark struct {
	// Through is the name of the last segment deleted.
	Through string `json:"through"`
	// ThroughMs is the latest modification time (Unix ms, the dfs's
	// clock) of the segments deleted: when the last of them was
	// published, so a bound on the arrival times of their entries.
	ThroughMs int64 `json:"through_ms"`
}

// RetentionMarkName is the hidden file of a bucket directory holding its
// RetentionMark.
const RetentionMarkName = ".retention"

// ReadRetentionMark reads the retention mark of the bucket directory dir;
// ok is false when retention has deleted nothing there.
func ReadRetentionMark(fsys dfs.FS, dir string) (m RetentionMark, ok bool, err error) {
	p := dir + "/" + RetentionMarkName
	data, err := dfs.ReadFile(fsys, p)
	if errors.Is(err, fs.ErrNotExist) {
		return m, false, nil
	}
	if err != nil {
		return m, false, fmt.Errorf("read %s: %w", p, err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, false, fmt.Errorf("decode %s: %w: %w", p, ErrBadMark, err)
	}
	if _, _, valid := ParseSegmentName(m.Through); !valid {
		return m, false, fmt.Errorf("decode %s: %w: %q is not a segment name", p, ErrBadMark, m.Through)
	}
	return m, true, nil
}

// ErrBadMark means a retention mark is there but does not decode.
var ErrBadMark = errors.New("damaged retention mark")

// WriteRetentionMark replaces the retention mark of the bucket directory
// dir with m, through a hidden temporary file (unique names it) and a
// rename, so that a reader sees the old mark or the new one. It never
// moves the mark back: the mark there just before the rename is merged
// in (the later of each field), for a retention pass that lost its lease
// without seeing it yet may write after the new holder's pass deleted
// further; so only a pause between that read and the rename, not one
// anywhere in the pass, can still lose the later mark. An unreadable
// mark (ErrBadMark) is replaced.
func WriteRetentionMark(fsys dfs.FS, dir string, m RetentionMark, unique string) error {
	for {
		cur, ok, err := ReadRetentionMark(fsys, dir)
		if err != nil && !errors.Is(err, ErrBadMark) {
			return err
		}
		if ok {
			m.Through = max(m.Through, cur.Through)
			m.ThroughMs = max(m.ThroughMs, cur.ThroughMs)
			if m == cur {
				return nil
			}
		}
		wrote, err := writeRetentionMark(fsys, dir, m, unique)
		if err != nil || wrote {
			return err
		}
	}
}

// writeRetentionMark writes m to a temporary file and renames it to the
// mark of dir unless the mark there now is later than m in a field
// (wrote false: the caller merges it in and writes again).
func writeRetentionMark(fsys dfs.FS, dir string, m RetentionMark, unique string) (wrote bool, err error) {
	data, err := json.Marshal(m)
	if err != nil {
		return false, err
	}
	p := dir + "/" + RetentionMarkName
	tmp := p + "." + unique + TempSuffix
	if err := fsys.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("remove stale %s: %w", tmp, err)
	}
	f, err := fsys.Create(tmp)
	if err != nil {
		return false, fmt.Errorf("create %s: %w", tmp, err)
	}
	// On failure the temporary file is removed best effort: a leftover is
	// hidden, and the next write replaces it.
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		_ = fsys.Remove(tmp)
		return false, fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		_ = fsys.Remove(tmp)
		return false, fmt.Errorf("close %s: %w", tmp, err)
	}
	if cur, ok, err := ReadRetentionMark(fsys, dir); err != nil && !errors.Is(err, ErrBadMark) {
		_ = fsys.Remove(tmp)
		return false, err
	} else if ok && (cur.Through > m.Through || cur.ThroughMs > m.ThroughMs) {
		_ = fsys.Remove(tmp)
		return false, nil
	}
	if err := fsys.Rename(tmp, p); err != nil {
		_ = fsys.Remove(tmp)
		return false, fmt.Errorf("publish %s: %w", p, err)
	}
	return true, nil
}
