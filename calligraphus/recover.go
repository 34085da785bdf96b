package calligraphus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/segment"
)

// ensureOwner takes the bucket's lease if this writer does not hold it.
func (w *bucketWriter) ensureOwner(ctx context.Context) error {
	if w.lease != nil {
		return nil
	}
	if w.c.now().Before(w.nextTry) {
		if w.takeErr != nil {
			// Until the next try, calls are refused for what failed the
			// last one (a full disk, the coordinator), not as if another
			// writer held the bucket.
			return w.takeErr
		}
		return errNotOwner
	}
	if w.prev != nil {
		// The bucket's previous writer of this process is still
		// publishing; it releases the lease when done.
		select {
		case <-w.prev:
			w.prev = nil
		case <-ctx.Done():
			return errStopping
		}
	}
	name := layout.WriterLease(w.id.category, w.id.bucket)
	lease, err := w.c.deps.Coord.Acquire(ctx, name, w.c.cfg.ID)
	if err != nil {
		w.nextTry = w.c.now().Add(time.Second)
		if errors.Is(err, coord.ErrHeld) {
			w.takeErr = fmt.Errorf("%w: %w", errNotOwner, err)
		} else {
			w.takeErr = fmt.Errorf("acquire %s: %w", name, err)
		}
		return w.takeErr
	}
	epoch, err := w.recover(lease.Epoch())
	if err != nil {
		_ = coord.Release(ctx, lease) // a lease not released ends with the coord session
		w.nextTry = w.c.now().Add(time.Second)
		if errors.Is(err, layout.ErrSuperseded) || errors.Is(err, fs.ErrExist) {
			w.takeErr = fmt.Errorf("%w: take bucket %s: %w", errNotOwner, w.dir, err)
		} else {
			w.takeErr = fmt.Errorf("recover bucket %s: %w", w.dir, err)
		}
		return w.takeErr
	}
	w.takeErr = nil
	w.hold(lease)
	w.epoch = epoch
	w.seq = 0
	w.left = false // salvaged by recover
	if w.epoch != lease.Epoch() {
		w.log.Warn("lease epoch below existing segments; using a higher one", "lease_epoch", lease.Epoch(), "epoch", w.epoch)
	}
	w.log.Info("bucket writer started", "epoch", w.epoch)
	return nil
}

// retake takes the bucket again for the salvage of a segment the writer
// left unpublished (left), without waiting for a batch. Another writer
// holding the bucket salvaged the segment as it took it: then nothing is
// left to do either. A lease held in this writer's own name is not that:
// a node of a session it gave up for lost, until the coordinator removes
// it. Otherwise (that, a newer owner's intent met at the storage, a dfs
// or coordinator failure) the run loop tries again at nextTry: the next
// try is at a newer epoch, or finds the newer owner holding the bucket.
func (w *bucketWriter) retake(ctx context.Context) {
	err := w.ensureOwner(ctx)
	switch {
	case err == nil:
		w.log.Info("bucket taken again to salvage a segment left unpublished")
	case errors.Is(err, coord.ErrHeld) && w.heldByOther(ctx):
		w.left = false
	default:
		w.c.rl.Warn("cannot retake", "cannot take the bucket again to salvage a segment left unpublished", "category", ratelog.Clip(w.id.category), "bucket", w.id.bucket, "err", err)
	}
}

// heldByOther reports whether a writer other than this one holds the
// bucket's lease.
func (w *bucketWriter) heldByOther(ctx context.Context) bool {
	holder, _, err := w.c.deps.Coord.Holder(ctx, layout.WriterLease(w.id.category, w.id.bucket))
	return err == nil && holder != "" && holder != w.c.cfg.ID
}

// recover takes the bucket at the storage and deals with what earlier
// writers left there; it returns the epoch this writer writes under: the
// lease's, or above every epoch found in the bucket. It first makes sure
// a long category's directory has its sidecar, so that the category can
// be listed. Then (layout/fence.go): the fence intent of the epoch,
// created exclusively, so that a stale writer publishing after it is
// fenced; the salvage of unpublished segments; and the seal, which
// decides for readers every older segment published before it.
func (w *bucketWriter) recover(leaseEpoch int64) (int64, error) {
	fsys := w.c.deps.FS
	if err := layout.WriteSidecar(fsys, w.id.category, strconv.FormatInt(leaseEpoch, 16)); err != nil {
		return 0, err
	}
	if err := fsys.MkdirAll(w.dir); err != nil {
		return 0, err
	}
	// Names alone, here and below (an lstat per entry where the dfs can
	// do without: a bucket on a local disk holds days of segments).
	names, err := dfs.ReadDirNames(fsys, w.dir)
	if err != nil {
		return 0, err
	}
	fence, err := layout.ReadFence(fsys, w.dir)
	if err != nil {
		return 0, err
	}
	maxEpoch := fence.Top
	for _, name := range names {
		if !dfs.Hidden(name) {
			if e, _, ok := layout.ParseSegmentName(name); ok {
				maxEpoch = max(maxEpoch, e)
			}
		} else if segName, ok := layout.ParseTempSegment(name); ok {
			e, _, _ := layout.ParseSegmentName(segName)
			maxEpoch = max(maxEpoch, e)
		}
	}
	epoch := max(leaseEpoch, maxEpoch+1)
	if err := layout.WriteIntent(fsys, w.dir, epoch); err != nil {
		return 0, err
	}
	// List again for the salvage: a stale writer's segment created and
	// synced after the first listing but before the intent was
	// acknowledged (its fence check saw no newer intent).
	if names, err = dfs.ReadDirNames(fsys, w.dir); err != nil {
		return 0, err
	}
	salvaged := false
	for _, name := range names {
		if !dfs.Hidden(name) {
			continue
		}
		if _, taker, ok := parseSalvageName(name); ok {
			if taker >= epoch {
				continue // a newer owner's salvage under way
			}
			// The copy of a salvage interrupted by a crash (its source is
			// still there), or of a taker this one supersedes.
			if err := removeGone(fsys, path.Join(w.dir, name)); err != nil {
				return 0, err
			}
			continue
		}
		if segName, ok := layout.ParseSalvageSegment(name); ok {
			if !olderEpoch(segName, epoch) {
				continue // a newer owner's salvage under way
			}
			// A salvage copy of the code before (one name for every
			// taker), interrupted by a crash; its source is still there.
			if err := removeGone(fsys, path.Join(w.dir, name)); err != nil {
				return 0, err
			}
			continue
		}
		segName, ok := layout.ParseTempSegment(name)
		if !ok || !olderEpoch(segName, epoch) {
			// Not a segment, or a newer owner's (this writer stalled after
			// its intent): that one is its writer's to publish.
			continue
		}
		p := path.Join(w.dir, name)
		if !fsys.SyncDurable() {
			// Only a publish acknowledges on this dfs: nothing in here was
			// acknowledged, and its senders retry it.
			w.log.Info("removing an unpublished segment of an earlier writer", "file", p)
			if err := fsys.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return 0, err
			}
			continue
		}
		if err := w.salvage(p, path.Join(w.dir, segName), epoch); err != nil {
			return 0, fmt.Errorf("salvage %s: %w", p, err)
		}
		salvaged = true
	}
	if _, err := layout.WriteSeal(fsys, w.dir, epoch, strconv.FormatInt(leaseEpoch, 16)); err != nil {
		return 0, err
	}
	if salvaged {
		// Published: readers here see them now, not at their next poll.
		w.notify()
	}
	return epoch, nil
}

// olderEpoch reports whether the segment name is of an epoch below epoch.
func olderEpoch(name string, epoch int64) bool {
	e, _, ok := layout.ParseSegmentName(name)
	return ok && e < epoch
}

// salvage publishes the valid blocks of an earlier writer's unpublished
// segment, which on a local disk hold acknowledged entries. It is safe to
// repeat after a crash at any step: the copy goes through a hidden name
// of its own, of the taker's epoch (two takers of the bucket, one
// superseding the other while both salvage, never write or remove each
// other's copy; the next taker removes a crashed one's), and a segment
// already published means only the leftover remains.
func (w *bucketWriter) salvage(tmp, final string, taker int64) error {
	fsys := w.c.deps.FS
	if _, err := fsys.Stat(final); err == nil {
		w.log.Info("removing the leftover of a segment already salvaged", "file", tmp)
		return removeGone(fsys, tmp)
	}
	data, err := dfs.ReadFile(fsys, tmp)
	if errors.Is(err, fs.ErrNotExist) {
		// Published meanwhile by its writer, still running; or removed
		// by it, holding nothing acknowledged (fenced as it wrote its
		// first batch, fencedWrite): nothing to salvage.
		return nil
	}
	if err != nil {
		return err
	}
	// Keep every valid block: in a v2 segment a damaged block in the
	// middle costs that block only; a torn tail (the crash) ends it. A
	// block is valid when its header and the CRC of its stored body
	// are: it is moved as stored, not decoded (decompressed), so that
	// one this version cannot decode (a later version's compression)
	// is kept for a reader that can.
	var out []byte
	blocks, damaged := 0, 0
	r, err := segment.NewReader(bytes.NewReader(data), 0)
	if err == nil {
		out = r.Header()
		for {
			start := r.Offset()
			_, err := r.Skip()
			if errors.Is(err, io.EOF) {
				break
			}
			var de *segment.DamageError
			if errors.As(err, &de) {
				if de.Resumed {
					damaged++
					w.log.Error("damaged block in an unpublished segment; salvaging the others", "file", tmp, "offset", de.Offset, "err", de.Err)
					continue
				}
				w.log.Warn("salvaged segment ends in a torn block", "file", tmp, "offset", de.Offset, "err", de.Err)
				break
			}
			if err != nil {
				return err
			}
			blocks++
			out = append(out, data[start:r.Offset()]...)
		}
	}
	if blocks == 0 {
		if damaged == 0 && !errors.Is(err, segment.ErrCorrupt) {
			// A header, perhaps the torn block of a crash: nothing in
			// it was acknowledged.
			w.log.Info("removing an unpublished segment without a valid block", "file", tmp)
			return removeGone(fsys, tmp)
		}
		// Damaged where the reader cannot find a block again (the file
		// header and the first block's, as one bad sector does): the
		// blocks after may hold acknowledged entries. Kept aside for an
		// operator, never deleted.
		return w.quarantine(tmp, final, len(data))
	}
	copyName := salvageName(final, taker)
	if err := removeGone(fsys, copyName); err != nil {
		return err
	}
	f, err := fsys.Create(copyName)
	if err != nil {
		return err
	}
	if _, err := f.Write(out); err != nil {
		_ = f.Close()                  // the write error is the one to report
		_ = removeGone(fsys, copyName) // else the next taker removes it
		return err
	}
	if err := f.Close(); err != nil {
		_ = removeGone(fsys, copyName) // else the next taker removes it
		return err
	}
	if err := fsys.Rename(copyName, final); err != nil {
		_ = removeGone(fsys, copyName) // else the next taker removes it
		if _, serr := fsys.Stat(final); serr == nil {
			// Published meanwhile by the taker this one supersedes, from
			// the same source: the same blocks.
			w.log.Info("segment salvaged meanwhile by an earlier taker", "segment", final)
			return removeGone(fsys, tmp)
		}
		return err
	}
	w.c.m.salvaged.Inc()
	w.log.Warn("salvaged an unpublished segment (a crashed writer's, or left by a failed write or publish): its valid blocks published", "segment", final, "blocks", blocks, "damaged_blocks", damaged, "bytes", len(out))
	return removeGone(fsys, tmp)
}

// quarantine moves an unpublished segment whose blocks cannot be read
// out of the salvage's way, to a hidden name that nothing lists or
// removes (damagedName), and says so: it may hold acknowledged entries.
func (w *bucketWriter) quarantine(tmp, final string, size int) error {
	to := damagedName(final)
	if err := w.c.deps.FS.Rename(tmp, to); err != nil {
		return fmt.Errorf("set aside damaged segment %s: %w", tmp, err)
	}
	w.c.m.quarantined.Inc()
	w.log.Error("unpublished segment damaged where no block can be read; set aside, not published: its entries may be lost",
		"file", to, "bytes", size)
	return nil
}

// removeGone removes a salvaged segment's source, which a stale writer
// still running may have published (renamed away) meanwhile.
func removeGone(fsys dfs.FS, tmp string) error {
	if err := fsys.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// damagedName is the hidden name an unpublished segment whose blocks
// cannot be read is set aside under: ".<segment>.damaged", which no
// listing of segments, temporary segments or salvage copies takes.
func damagedName(final string) string {
	dir, base := path.Split(final)
	return dir + "." + base + damagedSuffix
}

const damagedSuffix = ".damaged"

// salvageName is the hidden name a salvaged segment is written under by
// the taker of epoch taker: ".<segment>.<taker, 16 hex digits>.salvage".
// The code before used layout.SalvageSegment, one name for every taker.
func salvageName(final string, taker int64) string {
	dir, base := path.Split(final)
	return fmt.Sprintf("%s.%s.%016x%s", dir, base, uint64(taker), layout.SalvageSuffix)
}

// parseSalvageName returns the segment and the taker's epoch of a name
// made by salvageName.
func parseSalvageName(name string) (segName string, taker int64, ok bool) {
	s, ok := strings.CutPrefix(name, ".")
	if !ok {
		return "", 0, false
	}
	if s, ok = strings.CutSuffix(s, layout.SalvageSuffix); !ok {
		return "", 0, false
	}
	dot := strings.LastIndexByte(s, '.')
	if dot < 0 || len(s)-dot-1 != 16 {
		return "", 0, false
	}
	e, err := strconv.ParseUint(s[dot+1:], 16, 64)
	if err != nil || e > 1<<63-1 {
		return "", 0, false
	}
	if _, _, ok := layout.ParseSegmentName(s[:dot]); !ok {
		return "", 0, false
	}
	return s[:dot], int64(e), true
}
