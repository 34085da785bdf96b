package layout

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/freeway-dev/freeway/internal/dfs"
)

// Fencing of writers at the storage. A coord lease is a belief that can
// end at any moment, and a writer stalled past its session (a GC pause,
// SIGSTOP) may wake up and publish a segment after a newer writer took
// its bucket. The dfs has no compare-and-set, but its namespace (create
// exclusive, rename, list) is linearizable, and that is enough:
//
//  1. A writer that takes a bucket at epoch E first creates the fence
//     intent IntentName(E) in the bucket's FenceDir (exclusively: two
//     writers never share an epoch), then salvages and lists the bucket,
//     then writes the seal SealName(E): for every older epoch, the last
//     segment of it that counts (what it listed; for epochs below the
//     previous seal, what that seal said).
//  2. Readers (Published: ptail, so Puma; the copier; retention) list the
//     bucket, then the fence directory, in that order, and decide each
//     segment with Fence.Verdict: a segment of epoch e counts if no intent
//     of a higher epoch exists; if the highest intent is above e and
//     sealed, it counts if that seal covers it, and never otherwise; if
//     the highest intent is above e and not sealed yet, it is undecided
//     and readers wait before it.
//  3. A writer answers OK for a published segment only once the same
//     verdict, read after its rename, says it counts: with no higher
//     intent, any later intent was created after the rename, so that
//     owner's listing sees the segment and its seal covers it. Fenced: it
//     answers TRY_LATER (the sender retries through the new owner).
//
// Seals are cumulative, so only the highest one matters, and a stale
// owner's late seal (a lower epoch) changes nothing. Once a segment
// counts for one reader it counts for all, forever: every later seal was
// computed from a listing made after the segment was seen.
//
// An owner that crashes between its intent and its seal leaves readers
// waiting before the older segments until the next owner of the bucket
// seals (the next entry for the bucket starts one).

// FenceDirName is the hidden directory of a bucket holding the fence
// intents and seals of its writers; hidden, so listings of segments pass
// it over.
const FenceDirName = ".fence"

// FenceDir is the fence directory of the bucket directory dir.
func FenceDir(dir string) string { return dir + "/" + FenceDirName }

const (
	intentExt = ".intent"
	sealExt   = ".seal"
)

// IntentName is the fence intent of a writer's epoch: an empty file.
func IntentName(epoch int64) string { return fmt.Sprintf("%016x%s", uint64(epoch), intentExt) }

// SealName is the seal of a writer's epoch: JSON Seal.
func SealName(epoch int64) string { return fmt.Sprintf("%016x%s", uint64(epoch), sealExt) }

// parseFenceName parses an intent or seal name.
func parseFenceName(name string) (epoch int64, seal, ok bool) {
	base, isSeal := strings.CutSuffix(name, sealExt)
	if !isSeal {
		var isIntent bool
		if base, isIntent = strings.CutSuffix(name, intentExt); !isIntent {
			return 0, false, false
		}
	}
	if len(base) != 16 {
		return 0, false, false
	}
	e, err := strconv.ParseUint(base, 16, 64)
	if err != nil || e > 1<<63-1 {
		return 0, false, false
	}
	return int64(e), isSeal, true
}

// Seal is what the owner of a bucket at Epoch found when it took the
// bucket: the last published segment of each older epoch that counts.
type Seal struct {
	Epoch int64 `json:"epoch"`
	// Last holds segment names, one per older epoch that has segments.
	Last []string `json:"last"`
}

// covers reports whether the segment (epoch, seq) is at or before the
// seal's last segment of that epoch.
func (s *Seal) covers(epoch int64, seq uint64) bool {
	for _, name := range s.Last {
		if e, q, ok := ParseSegmentName(name); ok && e == epoch {
			return seq <= q
		}
	}
	return false
}

// Fence is the fence state of a bucket, as read by ReadFence.
type Fence struct {
	// Top is the highest epoch with an intent or a seal (0: none).
	Top int64
	// Seal is the highest seal, nil if none.
	Seal *Seal
}

// Verdict is what a Fence says of one segment.
type Verdict int

const (
	// Counted: readers count the segment.
	Counted Verdict = iota
	// Fenced: readers never count it (a newer owner's seal leaves it out).
	Fenced
	// Undecided: a newer owner has not sealed yet; readers wait.
	Undecided
)

func (v Verdict) String() string {
	switch v {
	case Counted:
		return "counted"
	case Fenced:
		return "fenced"
	}
	return "undecided"
}

// Verdict decides the segment name (a segment name; anything else is
// Fenced).
func (f Fence) Verdict(name string) Verdict {
	e, s, ok := ParseSegmentName(name)
	switch {
	case !ok:
		return Fenced
	case f.Top <= e:
		return Counted
	case f.Seal == nil || f.Seal.Epoch < f.Top:
		return Undecided
	case f.Seal.covers(e, s):
		return Counted
	}
	return Fenced
}

// ErrBadSeal means a seal is there but does not decode.
var ErrBadSeal = errors.New("damaged fence seal")

// ReadFence reads the fence state of the bucket directory dir. A bucket
// without a fence directory has none (Top 0: every segment counts).
func ReadFence(fsys dfs.FS, dir string) (Fence, error) {
	fdir := FenceDir(dir)
	for attempt := 0; ; attempt++ {
		infos, err := fsys.ReadDir(fdir)
		if errors.Is(err, fs.ErrNotExist) {
			return Fence{}, nil
		}
		if err != nil {
			return Fence{}, fmt.Errorf("list fence %s: %w", fdir, err)
		}
		var f Fence
		var sealEpoch int64 = -1
		for _, fi := range infos {
			e, seal, ok := parseFenceName(fi.Name())
			if !ok {
				continue
			}
			f.Top = max(f.Top, e)
			if seal && e > sealEpoch {
				sealEpoch = e
			}
		}
		if sealEpoch < 0 {
			return f, nil
		}
		p := fdir + "/" + SealName(sealEpoch)
		data, err := dfs.ReadFile(fsys, p)
		if errors.Is(err, fs.ErrNotExist) && attempt < 3 {
			continue // pruned by a newer owner after it sealed: list again
		}
		if err != nil {
			return Fence{}, fmt.Errorf("read seal %s: %w", p, err)
		}
		var s Seal
		if err := json.Unmarshal(data, &s); err != nil || s.Epoch != sealEpoch {
			return Fence{}, fmt.Errorf("decode seal %s: %w", p, ErrBadSeal)
		}
		f.Seal = &s
		return f, nil
	}
}

// FenceTop returns the highest epoch with a fence intent or seal in the
// bucket directory dir (0: none): one listing of the small fence
// directory, what a writer checks after each write (a Top at or below its
// epoch means its segments count, Fence.Verdict). It needs the names
// alone (dfs.ReadDirNames: no stat per entry where the file system can
// do without).
func FenceTop(fsys dfs.FS, dir string) (int64, error) {
	fdir := FenceDir(dir)
	names, err := dfs.ReadDirNames(fsys, fdir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list fence %s: %w", fdir, err)
	}
	var top int64
	for _, name := range names {
		if e, _, ok := parseFenceName(name); ok {
			top = max(top, e)
		}
	}
	return top, nil
}

// ErrSuperseded means a newer owner has fenced the bucket already: the
// writer that tried to take it at a lower epoch must not write.
var ErrSuperseded = errors.New("bucket fenced by a newer owner")

// WriteIntent creates the fence intent of epoch in the bucket directory
// dir, exclusively: fs.ErrExist means another writer took the epoch.
func WriteIntent(fsys dfs.FS, dir string, epoch int64) error {
	p := FenceDir(dir) + "/" + IntentName(epoch)
	f, err := fsys.Create(p)
	if err != nil {
		return fmt.Errorf("create fence intent %s: %w", p, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close fence intent %s: %w", p, err)
	}
	return nil
}

// WriteSeal seals the bucket directory dir for the owner at epoch, whose
// intent exists: it lists the bucket (after the intent: whatever is
// published later is not covered), computes the seal from the listing and
// the previous seal, publishes it (a hidden temporary file, unique names
// it, and a rename) and removes the older intents and seals. It fails
// with ErrSuperseded when a newer owner's intent is there already, or
// comes meanwhile (its seal removes this one's temporary file).
func WriteSeal(fsys dfs.FS, dir string, epoch int64, unique string) (Seal, error) {
	last, err := lastOfEpochs(fsys, dir, epoch)
	if err != nil {
		return Seal{}, err
	}
	// The epochs the listing holds segments of, before the previous
	// seal's say below.
	listed := make(map[int64]bool, len(last))
	for e := range last {
		listed[e] = true
	}
	prev, err := ReadFence(fsys, dir)
	if err != nil {
		return Seal{}, err
	}
	if prev.Top > epoch {
		return Seal{}, fmt.Errorf("seal %s at epoch %d: %w (epoch %d)", dir, epoch, ErrSuperseded, prev.Top)
	}
	if prev.Seal != nil {
		// Below the previous seal, what it said counts and nothing else;
		// an epoch without segments any more (retention) is dropped.
		for e := range last {
			if e < prev.Seal.Epoch {
				delete(last, e)
			}
		}
		for _, name := range prev.Seal.Last {
			e, s, ok := ParseSegmentName(name)
			if !ok || e >= prev.Seal.Epoch || !listed[e] {
				continue
			}
			last[e] = s
		}
	}
	seal := Seal{Epoch: epoch, Last: []string{}}
	for e, s := range last {
		seal.Last = append(seal.Last, SegmentName(e, s))
	}
	slices.Sort(seal.Last)
	data, err := json.Marshal(seal)
	if err != nil {
		return Seal{}, err
	}
	fdir := FenceDir(dir)
	p := fdir + "/" + SealName(epoch)
	tmp := fdir + "/." + SealName(epoch) + "." + unique + TempSuffix
	if err := fsys.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Seal{}, fmt.Errorf("remove stale %s: %w", tmp, err)
	}
	f, err := fsys.Create(tmp)
	if err != nil {
		return Seal{}, fmt.Errorf("create %s: %w", tmp, err)
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		_ = fsys.Remove(tmp) // the write error is the one to report
		return Seal{}, fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		_ = fsys.Remove(tmp) // the close error is the one to report
		return Seal{}, fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := fsys.Rename(tmp, p); err != nil {
		_ = fsys.Remove(tmp) // the rename error is the one to report
		if top, terr := FenceTop(fsys, dir); terr == nil && top > epoch {
			// A newer owner sealed meanwhile, and removed the
			// temporary seal with the older intents (pruneFence).
			return Seal{}, fmt.Errorf("publish seal %s: %w (epoch %d): %w", p, ErrSuperseded, top, err)
		}
		return Seal{}, fmt.Errorf("publish seal %s: %w", p, err)
	}
	pruneFence(fsys, fdir, epoch)
	return seal, nil
}

// lastOfEpochs lists the bucket directory dir and returns, for each epoch
// below epoch with segments in it, the last segment's sequence number.
// It lists names alone (an lstat per entry where the dfs can do without:
// a bucket on a local disk holds days of segments, millions of names)
// and looks (Stat) only at the last name of each epoch: a directory
// named like a segment is no segment, and the name before it is looked
// at instead.
func lastOfEpochs(fsys dfs.FS, dir string, epoch int64) (map[int64]uint64, error) {
	names, err := dfs.ReadDirNames(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("list bucket %s: %w", dir, err)
	}
	// below is the greatest sequence number of epoch e below than in the
	// listing; ok false if there is none.
	below := func(e int64, than uint64) (last uint64, ok bool) {
		for _, name := range names {
			if dfs.Hidden(name) {
				continue
			}
			if ne, s, isSeg := ParseSegmentName(name); isSeg && ne == e && s < than && (!ok || s > last) {
				last, ok = s, true
			}
		}
		return last, ok
	}
	last := map[int64]uint64{}
	for _, name := range names {
		if dfs.Hidden(name) {
			continue
		}
		if e, s, ok := ParseSegmentName(name); ok && e < epoch {
			if q, seen := last[e]; !seen || s > q {
				last[e] = s
			}
		}
	}
	for e, s := range last {
		for {
			p := dir + "/" + SegmentName(e, s)
			fi, err := fsys.Stat(p)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("look at %s: %w", p, err)
			}
			// Removed since the listing (retention, oldest first): it
			// was a segment, as the listing says.
			if err != nil || !fi.IsDir() {
				last[e] = s
				break
			}
			var ok bool
			if s, ok = below(e, s); !ok {
				delete(last, e)
				break
			}
		}
	}
	return last, nil
}

// pruneFence removes the intents and seals below epoch, best effort: the
// highest seal alone decides, and a leftover is removed by the next owner.
func pruneFence(fsys dfs.FS, fdir string, epoch int64) {
	infos, err := fsys.ReadDir(fdir)
	if err != nil {
		return
	}
	for _, fi := range infos {
		name := fi.Name()
		if tmp, ok := strings.CutSuffix(name, TempSuffix); ok && strings.HasPrefix(tmp, ".") && len(tmp) > 17 {
			// A seal being written, left by a writer that died: its
			// epoch is the first 16 hex digits.
			name = tmp[1:17] + sealExt
		}
		if e, _, ok := parseFenceName(name); ok && e < epoch {
			_ = fsys.Remove(path.Join(fdir, fi.Name())) // best effort, see above
		}
	}
}
