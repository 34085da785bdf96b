package copier

import (
	"sort"
	"time"

	"github.com/freeway-dev/freeway/internal/layout"
)

// CategoryLag is how far the copier is behind the writers in one
// category: what the status endpoint and freeway_copier_lag_* show.
type CategoryLag struct {
	Category string
	// Segments and Bytes are the published segments not yet copied (or,
	// when merging, not yet wholly in published period files, which
	// includes the period still open and MergeDelay after it).
	Segments int
	Bytes    int64
	// Oldest is when the oldest of them was published; zero when none.
	Oldest time.Time
}

// Age is how long the oldest segment not done has waited, at now; zero
// when there is none.
func (l CategoryLag) Age(now time.Time) time.Duration {
	if l.Oldest.IsZero() || now.Before(l.Oldest) {
		return 0
	}
	return now.Sub(l.Oldest)
}

// Lag returns the lag of every category the last pass listed, sorted by
// category; nil while the copier stands by (another one holds the lease)
// or before its first pass.
func (c *Copier) Lag() []CategoryLag {
	c.lagMu.Lock()
	defer c.lagMu.Unlock()
	return append([]CategoryLag(nil), c.lag...)
}

// Status is the copier's state for /api/v1/status: whether it holds the
// copier lease (the active one), and the lag per category as of its last
// pass (empty while it stands by: a standby does not know the lag).
type Status struct {
	Active     bool             `json:"active"`
	Merging    bool             `json:"merging"`
	Categories []CategoryStatus `json:"categories"`
}

// CategoryStatus is the lag of one category.
type CategoryStatus struct {
	Category string `json:"category"`
	// Segments and Bytes are the published segments not yet done.
	Segments int   `json:"segments"`
	Bytes    int64 `json:"bytes"`
	// LagSeconds is how long the oldest of them has waited (as
	// freeway_copier_lag_seconds); 0 when none.
	LagSeconds float64 `json:"lag_seconds"`
	// Oldest is when the oldest of them was published (RFC 3339, UTC);
	// empty when none.
	Oldest string `json:"oldest,omitempty"`
}

// Status reports the lease and the lag (cheap: copies of the last pass's
// figures).
func (c *Copier) Status() Status {
	c.mu.Lock()
	active := c.held != nil
	c.mu.Unlock()
	now := c.now()
	out := Status{Active: active, Merging: c.cfg.Merging(), Categories: []CategoryStatus{}}
	for _, l := range c.Lag() {
		cs := CategoryStatus{Category: l.Category, Segments: l.Segments, Bytes: l.Bytes, LagSeconds: l.Age(now).Seconds()}
		if !l.Oldest.IsZero() {
			cs.Oldest = l.Oldest.UTC().Format(time.RFC3339)
		}
		out.Categories = append(out.Categories, cs)
	}
	return out
}

// setLag computes the lag from the pass's jobs and sets the gauges.
func (c *Copier) setLag(ps *passState, jobs []*bucketJob) {
	ps.mu.Lock()
	byLabel := map[string]*CategoryLag{}
	for label, cat := range ps.categories {
		byLabel[label] = &CategoryLag{Category: cat}
	}
	for _, j := range jobs {
		l := byLabel[j.label]
		for i, fi := range j.segs[j.done:] {
			l.Segments++
			l.Bytes += fi.Size()
			if t := fi.ModTime(); i == 0 && (l.Oldest.IsZero() || t.Before(l.Oldest)) {
				l.Oldest = t
			}
		}
	}
	ps.mu.Unlock()
	out := make([]CategoryLag, 0, len(byLabel))
	now := c.now()
	c.m.lag.Reset()
	c.m.lagSeconds.Reset()
	for label, l := range byLabel {
		out = append(out, *l)
		c.m.lag.WithLabelValues(label).Set(float64(l.Segments))
		c.m.lagSeconds.WithLabelValues(label).Set(l.Age(now).Seconds())
	}
	sort.Slice(out, func(i, k int) bool { return out[i].Category < out[k].Category })
	c.lagMu.Lock()
	c.lag = out
	c.lagMu.Unlock()
}

func (c *Copier) clearLag() {
	c.m.lag.Reset()
	c.m.lagSeconds.Reset()
	c.lagMu.Lock()
	c.lag = nil
	c.lagMu.Unlock()
}

// checkRetained warns, once per lease grant, about a bucket without
// progress whose first segments retention deleted already: they were
// never copied (the copier was configured after they were deleted, or
// its progress was lost), and the copy starts after them.
func (c *Copier) checkRetained(j *bucketJob) {
	if j.mark.raw != nil || j.mark.mergeRaw != nil || c.retained[j.dir] {
		return
	}
	c.retained[j.dir] = true
	m, ok, err := layout.ReadRetentionMark(c.deps.Source, j.dir)
	if err != nil {
		c.log.Warn("cannot read the retention mark of a bucket", "bucket", j.dir, "err", err)
		return
	}
	if ok {
		c.log.Warn("retention deleted the first segments of a bucket before this copier copied them; copying from the first one left",
			"bucket", j.dir, "deleted_through", m.Through)
	}
}
