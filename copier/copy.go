package copier

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
)

// copyBufferSize is each worker's copy buffer: large enough that a copy
// to HDFS writes whole packets, small enough to keep per worker.
const copyBufferSize = 1 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errMismatch means a copy does not match its source: it is not published.
var errMismatch = errors.New("copy does not match the source")

type outcome int

const (
	copied outcome = iota
	replaced
	skipped
	vanished
	conflict  // a period file there differs, and is kept
	inPeriods // a segment whose lines merging put in period files: not copied
)

// copySegment brings the published segment name (size bytes in the
// listing) to the destination, unless it is there already: all of it, or
// with from > 0 only its blocks from that offset on (openPart).
func (c *Copier) copySegment(ctx context.Context, name string, size, from int64, buf []byte) (outcome, int64, error) {
	replacing := false
	switch dst, err := c.deps.Dest.Stat(name); {
	case err == nil:
		same, err := c.sameAsSource(ctx, name, size, from, dst, buf)
		if errors.Is(err, fs.ErrNotExist) {
			// Copied by an earlier run that stopped before recording it,
			// then removed from the source by retention.
			return skipped, 0, nil
		}
		if err != nil {
			return 0, 0, err
		}
		if same {
			return skipped, 0, nil
		}
		c.log.Warn("destination segment differs from the source; copying it again", "segment", name,
			"source_bytes", size, "destination_bytes", dst.Size())
		replacing = true
	case !errors.Is(err, fs.ErrNotExist):
		return 0, 0, fmt.Errorf("stat %s in %s: %w", name, c.deps.Dest, err)
	}

	src, want, closer, err := c.openPart(name, size, from)
	if errors.Is(err, fs.ErrNotExist) {
		c.log.Warn("segment removed from the source before it was copied", "segment", name)
		return vanished, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	defer closer.Close() //nolint:errcheck // opened for reading

	tmp := c.tempName(name)
	f, err := c.deps.Dest.Create(tmp)
	if errors.Is(err, fs.ErrExist) {
		// Left by a copy under this lease that was interrupted.
		if err := c.deps.Dest.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return 0, 0, fmt.Errorf("remove stale %s in %s: %w", tmp, c.deps.Dest, err)
		}
		c.m.tempsGone.Inc()
		c.log.Info("removed a temporary file left by an interrupted copy", "file", tmp)
		f, err = c.deps.Dest.Create(tmp)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("create %s in %s: %w", tmp, c.deps.Dest, err)
	}
	h := crc32.New(castagnoli)
	n, err := io.CopyBuffer(io.MultiWriter(f, h), ctxReader{ctx, src}, buf)
	if err != nil {
		_ = f.Close() // the copy error is the one to report; the temporary file goes
		c.removeTemp(tmp)
		if _, serr := c.deps.Source.Stat(name); errors.Is(serr, fs.ErrNotExist) {
			c.log.Warn("segment removed from the source while it was copied", "segment", name)
			return vanished, 0, nil
		}
		return 0, 0, fmt.Errorf("copy %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		c.removeTemp(tmp)
		return 0, 0, fmt.Errorf("close %s in %s: %w", tmp, c.deps.Dest, err)
	}
	if err := c.verify(ctx, tmp, n, want, h.Sum32(), buf); err != nil {
		c.removeTemp(tmp)
		return 0, 0, fmt.Errorf("verify copy of %s: %w", name, err)
	}
	// Publish only while still the active copier.
	if err := ctx.Err(); err != nil {
		c.removeTemp(tmp)
		return 0, 0, err
	}
	if err := c.deps.Dest.Rename(tmp, name); err != nil {
		c.removeTemp(tmp)
		return 0, 0, fmt.Errorf("publish %s in %s: %w", name, c.deps.Dest, err)
	}
	if replacing {
		return replaced, n, nil
	}
	return copied, n, nil
}

// openPart opens what of the source segment name (size bytes in the
// listing) goes to the destination, and says how many bytes that is: all
// of it when from is 0; else its file header followed by its blocks from
// offset from on, a segment of its own, when merging (before merge_period
// was removed) stopped inside it with the blocks before in a period file.
func (c *Copier) openPart(name string, size, from int64) (io.Reader, int64, io.Closer, error) {
	src, err := c.deps.Source.Open(name)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("open %s in %s: %w", name, c.deps.Source, err)
	}
	if from <= 0 {
		return src, size, src, nil
	}
	sr, err := segment.NewReader(src, 0)
	if err != nil {
		_ = src.Close() // opened for reading
		return nil, 0, nil, fmt.Errorf("read the header of %s in %s: %w", name, c.deps.Source, err)
	}
	if from <= sr.HeaderSize() {
		return src, size, src, nil
	}
	hdr := sr.Header()
	return io.MultiReader(bytes.NewReader(hdr), io.NewSectionReader(src, from, size-from)), int64(len(hdr)) + size - from, src, nil
}

// verify checks the closed temporary copy tmp: n bytes were written, the
// source (its part) has size, and (VerifyChecksum) reading it back gives sum.
func (c *Copier) verify(ctx context.Context, tmp string, n, size int64, sum uint32, buf []byte) error {
	if n != size {
		return fmt.Errorf("%w: read %d bytes from the source, its listing said %d", errMismatch, n, size)
	}
	fi, err := c.deps.Dest.Stat(tmp)
	if err != nil {
		return fmt.Errorf("stat %s: %w", tmp, err)
	}
	if fi.Size() != n {
		return fmt.Errorf("%w: %s holds %d bytes, %d were written", errMismatch, tmp, fi.Size(), n)
	}
	if c.cfg.Verify != VerifyChecksum {
		return nil
	}
	_, got, err := checksum(ctx, c.deps.Dest, tmp, buf)
	if err != nil {
		return err
	}
	if got != sum {
		return fmt.Errorf("%w: %s reads back with CRC-32C %08x, %08x was written", errMismatch, tmp, got, sum)
	}
	return nil
}

// sameAsSource reports whether the destination's name (described by dst)
// is the source's, or its part from from (openPart): same size and, with
// VerifyChecksum, same contents.
func (c *Copier) sameAsSource(ctx context.Context, name string, size, from int64, dst fs.FileInfo, buf []byte) (bool, error) {
	if from <= 0 && dst.Size() != size {
		return false, nil
	}
	if from <= 0 && c.cfg.Verify != VerifyChecksum {
		return true, nil
	}
	src, partSize, closer, err := c.openPart(name, size, from)
	if err != nil {
		return false, err
	}
	defer closer.Close() //nolint:errcheck // opened for reading
	if dst.Size() != partSize {
		return false, nil
	}
	if c.cfg.Verify != VerifyChecksum {
		return true, nil
	}
	h := crc32.New(castagnoli)
	if _, err := io.CopyBuffer(h, ctxReader{ctx, src}, buf); err != nil {
		return false, fmt.Errorf("read %s in %s: %w", name, c.deps.Source, err)
	}
	want := h.Sum32()
	_, got, err := checksum(ctx, c.deps.Dest, name, buf)
	if errors.Is(err, fs.ErrNotExist) {
		// Removed from the destination since it was found there: not
		// the source gone (which the caller takes for done), a copy to make.
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return got == want, nil
}

// checksum reads name from fsys and returns its size and CRC-32C.
func checksum(ctx context.Context, fsys dfs.FS, name string, buf []byte) (int64, uint32, error) {
	r, err := fsys.Open(name)
	if err != nil {
		return 0, 0, fmt.Errorf("open %s in %s: %w", name, fsys, err)
	}
	defer r.Close() //nolint:errcheck // opened for reading
	h := crc32.New(castagnoli)
	n, err := io.CopyBuffer(h, ctxReader{ctx, r}, buf)
	if err != nil {
		return 0, 0, fmt.Errorf("read %s in %s: %w", name, fsys, err)
	}
	return n, h.Sum32(), nil
}

func (c *Copier) removeTemp(tmp string) {
	if err := c.deps.Dest.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.log.Warn("cannot remove temporary file; the next copy of the segment will", "file", tmp, "err", err)
	}
}

// sweep removes the temporary files that copies and merges under earlier
// lease epochs left at the destination for bucket j: the copier holding
// a later lease is not writing this bucket now, so every such file is a
// fenced or crashed writer's. Most would be replaced by the next copy of
// their segment, or write of their period file, anyway; but not those
// whose segment vanished from the source meanwhile, nor a period file's
// once the copier copies segments or merges with another merge_period or
// compression, which names it otherwise. A later epoch's file is the new
// holder's, when this copier is the one that lost its lease: it is left
// alone.
func (c *Copier) sweep(j *bucketJob) {
	c.removeOlderTemps(j.dir, func(of string) bool {
		_, _, ok := layout.ParseSegmentName(of)
		return ok
	})
	c.sweepPeriods(j)
}

// sweepPeriods removes the temporary files of j's period files from
// earlier epochs (see sweep). Those of a period recorded as pending go
// too: no copier renames another epoch's temporary file, it writes the
// period again under its own epoch's name if it is not published
// (pendingPublished removes the others first), and a copier copying
// segments, or merging after copying them (mergeState's pending passed
// over), never renames one. A merge writes no period before the one its
// progress has open (OpenMs, which copying segments keeps), so the
// periods' directories (layout.MergedFile) are listed from that one's day
// and hour on: what a crash left is found by the first grant after it,
// in a few listings when the copier keeps up; every day is listed for a
// bucket with no such period (never merged, or not past its first
// period file).
func (c *Copier) sweepPeriods(j *bucketJob) {
	from := int64(0)
	if j.mark.merge != nil {
		from = j.mark.merge.OpenMs
	}
	first := layout.MergedFile(j.category, j.bucket, time.UnixMilli(from), time.Hour, "")
	hourDir := path.Dir(first)
	dayDir := path.Dir(hourDir)
	catDir := path.Dir(dayDir)
	firstDay, firstHour := path.Base(dayDir), path.Base(hourDir)
	part := path.Base(first)
	isPart := func(of string) bool { return strings.TrimSuffix(of, ".gz") == part }
	for _, day := range c.removeOlderTemps(catDir, isPart) {
		if !strings.HasPrefix(day, "dt=") || day < firstDay {
			continue // a bucket directory, or a day before the first period
		}
		for _, hour := range c.removeOlderTemps(path.Join(catDir, day), isPart) {
			if day == firstDay && hour < firstHour {
				continue
			}
			for _, minute := range c.removeOlderTemps(path.Join(catDir, day, hour), isPart) {
				c.removeOlderTemps(path.Join(catDir, day, hour, minute), isPart)
			}
		}
	}
}

// removeOlderTemps removes from the destination directory dir the
// temporary files written under earlier lease epochs than this pass's
// (or none, as before epochs were in the names) of the files whose base
// names match accepts, and returns the names of dir's subdirectories.
// Left by a crash or a lost lease, they would stay for ever if no later
// run wrote under their names. One still being written by a copier that
// lost its lease without seeing it yet fails that copier's verification
// or rename: it publishes nothing. A later epoch's file is the new
// holder's, when this copier is the one that lost its lease: it is left
// alone.
func (c *Copier) removeOlderTemps(dir string, match func(string) bool) (subdirs []string) {
	infos, err := c.deps.Dest.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("cannot list a destination directory for stale temporary files", "dir", dir, "err", err)
		}
		return nil
	}
	for _, fi := range infos {
		if fi.IsDir() {
			subdirs = append(subdirs, fi.Name())
			continue
		}
		if of, epoch, ok := parseTemp(fi.Name()); !ok || epoch >= c.marksEpoch || !match(of) {
			continue
		}
		tmp := path.Join(dir, fi.Name())
		if err := c.deps.Dest.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("cannot remove stale temporary file", "file", tmp, "err", err)
			continue
		}
		c.m.tempsGone.Inc()
		c.log.Info("removed a temporary file left by an interrupted copy or merge", "file", tmp)
	}
	return subdirs
}

// removeOlderTempsOf removes the temporary files of the destination file
// name written under earlier epochs (removeOlderTemps).
func (c *Copier) removeOlderTempsOf(name string) {
	c.removeOlderTemps(path.Dir(name), func(of string) bool { return of == path.Base(name) })
}

// tempName is the hidden name under which a file (a segment, a period
// file) is written at the destination before it is renamed to name:
// dfs.TempName of name, carrying the epoch of the lease this pass holds.
// A copier that lost its lease without seeing it yet may still be
// writing the file the new holder writes: under one name for both, each
// would replace the other's file and rename it, publishing a file still
// being written, or one its writer then gave up half-written.
func (c *Copier) tempName(name string) string {
	return dfs.TempName(name + "." + strconv.FormatInt(c.marksEpoch, 16))
}

// parseTemp splits a base name made by tempName into the base name of
// the file it is written for and the epoch; one made by dfs.TempName, as
// before epochs were in the names, has epoch -1, earlier than any.
func parseTemp(base string) (of string, epoch int64, ok bool) {
	s, ok := strings.CutPrefix(base, ".")
	if !ok {
		return "", 0, false
	}
	if s, ok = strings.CutSuffix(s, layout.TempSuffix); !ok {
		return "", 0, false
	}
	if i := strings.LastIndexByte(s, '.'); i >= 0 {
		if epoch, err := strconv.ParseInt(s[i+1:], 16, 64); err == nil {
			return s[:i], epoch, true
		}
	}
	return s, -1, true
}

// ctxReader stops a copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
