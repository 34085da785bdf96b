package copier

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/ptail"
)

// Deps are what a copier needs from the wiring: the common ones, and
// its backends.
type Deps struct {
	component.Common
	// Source is the pipeline's dfs, Dest the second root
	// (Config.Destination opened by the wiring).
	Source, Dest dfs.FS
	// Store keeps progress, in table Config.Table.
	Store store.Store
	// Coord holds the lease that makes one copier active at a time.
	Coord coord.Coord
}

// Stats describes one copy pass.
type Stats struct {
	Buckets  int   // bucket directories listed in the source
	Seen     int   // published segments found after the buckets' progress marks
	Copied   int   // segments written to the destination (Replaced included)
	Merged   int   // period files written to the destination (Replaced included)
	Lines    int64 // lines in the period files written
	Bytes    int64 // bytes written to the destination (of lines, uncompressed, when merging)
	Replaced int   // segments (period files) found at the destination with other contents, written over
	Skipped  int   // segments (period files) found at the destination already, identical
	Vanished int   // segments gone from the source before they could be copied (merged)
	// Conflicts counts period files found published with other lines than
	// the merge would write, when no progress said they were written:
	// kept, and logged as errors.
	Conflicts int
	Errors    int // failures (each stops its bucket until the next pass)
	// Lag counts the segments seen and not done at the end: errors,
	// cancellation, and when merging the periods not closed yet.
	Lag      int
	Duration time.Duration
}

// Copier copies published segments from Source to Dest.
type Copier struct {
	cfg       Config
	deps      Deps
	log       *slog.Logger
	now       func() time.Time
	m         *metrics
	leaseName string

	mu   sync.Mutex
	held coord.Lease // the lease Run holds while active, nil otherwise

	// passMu serializes passes and guards what passes keep between them.
	passMu     sync.Mutex
	marks      map[string]mark     // bucket dir → progress; loaded once per lease grant
	marksEpoch int64               // the grant marks was loaded under
	swept      map[string]bool     // destination bucket dirs cleared of stale temporary files
	copiesSeen map[string]bool     // bucket dirs whose merge looked for a segment copied and not recorded (skipCopied)
	retained   map[string]bool     // bucket dirs checked for segments retention deleted uncopied
	listings   map[string]*listing // bucket dir → its last listing (listBucket), under the grant of marks

	// tail counts the damage the merge's readers skip.
	tail *ptail.Metrics
	// heads caches, per bucket dir, the head of a bucket whose period is
	// not closed yet (a head), so that passes do not read it again.
	heads sync.Map

	lagMu sync.Mutex
	lag   []CategoryLag // as of the last pass; nil while standing by
}

// New validates cfg and returns a copier; Run or CopyOnce copies. It
// refuses a destination that is its source, or inside it, or the other
// way round, however their URLs spell them (see distinct): it writes a
// hidden probe file at the destination root for that, and removes it.
func New(cfg Config, deps Deps) (*Copier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	switch {
	case deps.Source == nil || deps.Dest == nil:
		return nil, errors.New("copier needs a source and a destination dfs")
	case deps.Store == nil:
		return nil, errors.New("copier needs a store for its progress")
	case deps.Coord == nil:
		return nil, errors.New("copier needs a coordinator for its lease")
	case deps.Source.String() == deps.Dest.String():
		return nil, fmt.Errorf("copier destination %s is its source", deps.Dest)
	}
	if err := distinct(deps.Source, deps.Dest); err != nil {
		return nil, err
	}
	if cfg.ID == "" {
		cfg.ID = component.ID()
	}
	deps.Common = deps.Defaults()
	c := &Copier{
		cfg:       cfg,
		deps:      deps,
		log:       deps.Logger("copier"),
		now:       deps.Now,
		m:         newMetrics(deps.Metrics),
		leaseName: cfg.Table,
	}
	if cfg.Merging() {
		c.tail = ptail.NewMetrics(deps.Metrics)
	}
	return c, nil
}

// Run copies until ctx ends. It waits for the copier lease, then makes a
// pass every Interval for as long as it holds it; a copier that loses the
// lease stops copying and waits for it again. It returns nil when ctx
// ends, an error only if the coordinator is closed under it.
func (c *Copier) Run(ctx context.Context) error {
	c.log.Info("copier running", "source", c.deps.Source.String(), "destination", c.deps.Dest.String(),
		"store", c.deps.Store.String(), "coord", c.deps.Coord.String(), "id", c.cfg.ID)
	defer c.log.Info("copier stopped")
	return coord.Campaign(ctx, c.deps.Coord, c.leaseName, c.cfg.ID, c.cfg.Interval.D(), c.log,
		func(error) { c.m.errors.WithLabelValues("lease").Inc() }, c.lead)
}

// lead makes passes while lease is held and ctx lasts.
func (c *Copier) lead(ctx context.Context, lease coord.Lease) {
	c.mu.Lock()
	c.held = lease
	c.mu.Unlock()
	c.m.active.Set(1)
	c.log.Info("copier lease acquired; copying", "epoch", lease.Epoch())
	defer func() {
		c.mu.Lock()
		c.held = nil
		c.mu.Unlock()
		c.m.active.Set(0)
		c.clearLag() // a standby does not know the lag
	}()
	for {
		st, err := c.pass(ctx, lease, nil, false)
		switch {
		case isLost(lease) || errors.Is(err, errFenced): // before ctx: Campaign ends ctx when the lease is lost
			c.log.Warn("copier lease lost; standing by", "epoch", lease.Epoch(), "err", err)
			return
		case ctx.Err() != nil:
			return
		case err != nil:
			c.log.Warn("copy pass incomplete; retrying next pass", "err", err, "copied", st.Copied, "errors", st.Errors, "lag", st.Lag)
		}
		t := time.NewTimer(c.cfg.Interval.D())
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-lease.Lost():
			t.Stop()
			c.log.Warn("copier lease lost; standing by", "epoch", lease.Epoch())
			return
		case <-t.C:
		}
	}
}

// CopyOnce makes one full pass: every published segment not yet copied
// is copied, or found already there, or found gone. It holds the copier
// lease for the pass (the one Run holds, if Run is active in this copier)
// and fails with an error wrapping coord.ErrHeld if another copier holds
// it. The error reports the first failure of the pass, if any; failed
// buckets are retried from where they stopped by the next pass.
func (c *Copier) CopyOnce(ctx context.Context) (Stats, error) {
	return c.Backfill(ctx, nil)
}

// Backfill is CopyOnce reporting its progress to report (nil: none) as
// source segments are done: `freeway copier --backfill` shows it. It can
// be interrupted (ctx) at any point; what it did is recorded, and the
// next pass (or Backfill) goes on from there.
func (c *Copier) Backfill(ctx context.Context, report func(Progress)) (Stats, error) {
	c.mu.Lock()
	lease := c.held
	c.mu.Unlock()
	if lease == nil {
		l, err := c.deps.Coord.Acquire(ctx, c.leaseName, c.cfg.ID)
		if err != nil {
			return Stats{}, fmt.Errorf("acquire copier lease: %w", err)
		}
		defer func() {
			if err := coord.Release(ctx, l); err != nil {
				c.log.Warn("cannot release copier lease", "err", err)
			}
		}()
		lease = l
	}
	return c.pass(ctx, lease, report, true)
}

// probePrefix starts the name of the hidden file distinct writes.
const probePrefix = "_freeway-copier-probe-"

// probeMaxAge is older than any probe a copier is still using.
const probeMaxAge = time.Hour

// distinct fails if dst is src under another name (a symbolic link,
// localhost for 127.0.0.1) or if one is inside the other: the copier's
// removal of stale temporary files at the destination would delete the
// writers' files in progress, it would copy segments onto themselves, and
// the source's listing would take the destination's directories for its
// own. The URLs cannot tell, so it writes a probe file at the destination
// and looks for it in the source: at the root and, where both roots have
// a path (dfs.Rooted) and the destination's is under the source's, at
// that path. A source under the destination's path is probed from there.
func distinct(src, dst dfs.FS) error {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	probe := probePrefix + hex.EncodeToString(b[:])

	// seen writes name at dst and returns the first of names at which
	// src shows it, -1 if none. written is when dst wrote it, by its
	// clock, if it says.
	var written time.Time
	seen := func(name string, names ...string) (int, error) {
		f, err := dst.Create(name)
		if err != nil {
			return -1, fmt.Errorf("copier: write probe %s at destination %s: %w", name, dst, err)
		}
		// A hidden empty file: what the source shows is the answer.
		defer func() { _ = dst.Remove(name) }()
		if err := f.Close(); err != nil {
			return -1, fmt.Errorf("copier: write probe %s at destination %s: %w", name, dst, err)
		}
		if fi, err := dst.Stat(name); err == nil {
			written = fi.ModTime()
		}
		for i, n := range names {
			_, err := src.Stat(n)
			if err == nil {
				return i, nil
			}
			if !errors.Is(err, fs.ErrNotExist) {
				return -1, fmt.Errorf("copier: look for probe %s in source %s: %w", n, src, err)
			}
		}
		return -1, nil
	}

	look := []string{probe}
	var srcUnder string // the source root's path under the destination's, if it is
	if sr, ok := src.(dfs.Rooted); ok {
		if dr, ok := dst.(dfs.Rooted); ok {
			sp, err := sr.RootPath()
			if err != nil {
				return fmt.Errorf("copier: source %s: %w", src, err)
			}
			dp, err := dr.RootPath()
			if err != nil {
				return fmt.Errorf("copier: destination %s: %w", dst, err)
			}
			if rel, ok := under(dp, sp); ok {
				look = append(look, path.Join(rel, probe))
			}
			if rel, ok := under(sp, dp); ok {
				srcUnder = rel
			}
		}
	}
	switch i, err := seen(probe, look...); {
	case err != nil:
		return err
	case i == 0:
		return fmt.Errorf("copier destination %s is its source %s under another name", dst, src)
	case i > 0:
		return fmt.Errorf("copier destination %s is inside its source %s", dst, src)
	}
	if !written.IsZero() {
		removeStaleProbes(dst, written)
	}
	if srcUnder != "" {
		// Only where the destination has that directory: a probe made
		// elsewhere would leave directories behind.
		if fi, err := dst.Stat(srcUnder); err == nil && fi.IsDir() {
			i, err := seen(path.Join(srcUnder, probe), probe)
			if err != nil {
				return err
			}
			if i == 0 {
				return fmt.Errorf("copier source %s is inside its destination %s", src, dst)
			}
		}
	}
	return nil
}

// removeStaleProbes removes the probes at the root of dst that are older
// than any probe still in use can be: left by copiers that crashed
// between writing and removing them, which would stay for ever. Their
// age is by dst's clock (now is when it wrote this copier's probe): a
// copier's own may be off. Best effort: a probe left is an empty hidden
// file, which readers pass over.
func removeStaleProbes(dst dfs.FS, now time.Time) {
	infos, err := dst.ReadDir("")
	if err != nil {
		return
	}
	for _, fi := range infos {
		if !fi.IsDir() && strings.HasPrefix(fi.Name(), probePrefix) && fi.ModTime().Before(now.Add(-probeMaxAge)) {
			_ = dst.Remove(fi.Name())
		}
	}
}

// under reports whether the slash-separated path p is strictly under
// root, and where.
func under(p, root string) (string, bool) {
	if root == "/" {
		return strings.TrimPrefix(p, "/"), p != "/"
	}
	rel, ok := strings.CutPrefix(p, root+"/")
	return rel, ok && rel != ""
}

func isLost(l coord.Lease) bool {
	select {
	case <-l.Lost():
		return true
	default:
		return false
	}
}

// sleep waits d or until ctx ends; false if ctx ended.
