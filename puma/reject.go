package puma

import (
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/ratelog"
)

// Why a line was not aggregated by an app (the reason label of
// freeway_puma_records_dropped_total).
const (
	reasonLate     = iota // older than the watermark minus allowed_lateness
	reasonParse           // does not fit the app's format
	reasonBadTime         // no event time, or not a time after 1970 in int64 ms
	reasonFuture          // more than max_future ahead of its arrival
	reasonBadValue        // a numeric aggregate's input is not a number (the line is counted)
	reasonMaxCells        // would create a cell beyond puma.max_cells, puma.memory_limit or the app's max_cells
	reasonFiltered        // the where filter: not an error, neither sampled nor logged
	nReasons
)

var reasonNames = [nReasons]string{"late", "parse_error", "bad_time", "future", "bad_value", "max_cells", "filtered"}

// SamplesPerReason is how many of the last rejected lines a shard keeps per
// app and reason.
const SamplesPerReason = 5

// sample is a rejected line as a table keeps it.
type sample struct {
	why  why
	line string // clipped
	atMs int64  // when the shard read it
}

// why says why a line was rejected: the error for parse_error and
// bad_time, numbers for the other reasons. Their text is made only when
// someone reads it: building it for every rejected line would make a
// flood of them slow.
type why struct {
	reason  int
	err     error
	a, b, c int64
}

func (w why) Error() string {
	switch w.reason {
	case reasonFuture:
		return fmt.Sprintf("event time %s is %v ahead of its arrival %s, more than max_future %v",
			fmtMs(w.a), time.Duration(w.a-w.b)*time.Millisecond, fmtMs(w.b), time.Duration(w.c)*time.Millisecond)
	case reasonLate:
		return fmt.Sprintf("event time %s is more than allowed_lateness %v behind the watermark %s",
			fmtMs(w.a), time.Duration(w.c)*time.Millisecond, fmtMs(w.b))
	case reasonBadValue:
		return fmt.Sprintf("%d aggregate input(s) not a finite number, skipped (the line is counted)", w.a)
	case reasonMaxCells:
		switch w.b {
		case boundNodeBytes:
			return fmt.Sprintf("a new cell would exceed puma.memory_limit (%s of cells and agents' dedup state in memory on this node)", config.ByteSize(w.a))
		case boundAppCells:
			return fmt.Sprintf("a new cell would exceed the app's max_cells (%d cells of the app in memory on this node)", w.a)
		}
		return fmt.Sprintf("a new cell would exceed puma.max_cells (%d cells in memory on this node)", w.a)
	}
	if w.err == nil {
		return reasonNames[w.reason]
	}
	return w.err.Error()
}

// LogValue formats the reason only if the line is written: most rejected
// lines are held back by the limiter.
func (w why) LogValue() slog.Value { return slog.StringValue(ratelog.Clip(w.Error())) }

// sampleRing keeps the last SamplesPerReason samples.
type sampleRing struct {
	s    [SamplesPerReason]sample
	next int
	n    int
}

func (r *sampleRing) add(s sample) {
	r.s[r.next] = s
	r.next = (r.next + 1) % len(r.s)
	r.n = min(r.n+1, len(r.s))
}

// each calls fn with the samples, newest first.
func (r *sampleRing) each(fn func(sample)) {
	for i := 1; i <= r.n; i++ {
		fn(r.s[(r.next-i+len(r.s))%len(r.s)])
	}
}

func fmtMs(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano) }

// reject counts n records the table did not aggregate (or, for
// bad_value, inputs it skipped), keeps the line as a sample and logs it,
// rate-limited: at most one attempt a second per table and reason reaches
// the node's limiter, which lets a few a minute through per app and
// reason.
func (t *table) reject(n uint64, w why, line []byte, bt blockTime) {
	t.drops[w.reason] += n
	if w.reason == reasonFiltered {
		return
	}
	clipped := ratelog.ClipBytes(line)
	t.samples[w.reason].add(sample{why: w, line: clipped, atMs: bt.nowMs})
	if t.deps.limiter != nil && bt.nowMs >= t.nextLog[w.reason] {
		t.nextLog[w.reason] = bt.nowMs + 1000
		// A bad value leaves the line counted (only that input is
		// skipped), and is routine in real logs (Apache's "-" for no
		// bytes): a debug line, where the rest are warnings.
		level, msg := slog.LevelWarn, "line not aggregated"
		if w.reason == reasonBadValue {
			level, msg = slog.LevelDebug, "aggregate input skipped"
		}
		t.deps.limiter.Log(level, t.logKeys[w.reason], msg, "app", t.app.Name(), "reason", reasonNames[w.reason],
			"err", w, "line", clipped, "category", t.deps.category, "bucket", t.deps.bucket)
	}
}

// Rejected is a line an app did not aggregate, kept as a sample.
type Rejected struct {
	Reason string // parse_error, bad_time, future, late, bad_value, max_cells
	Error  string
	// Line is the line, clipped to ratelog.MaxClip bytes with a note of
	// its length.
	Line   string
	Bucket int
	At     time.Time // when the shard read it
}

// Rejections is what an app did not aggregate on this node since its
// shards started here.
type Rejections struct {
	// Dropped counts records by reason (those of
	// freeway_puma_records_dropped_total; bad_value counts inputs).
	Dropped map[string]uint64
	// Samples are the last SamplesPerReason lines of each reason, newest
	// first within a reason, reasons in the order of Dropped's names.
	Samples []Rejected
}

// Rejections returns what app did not aggregate in the shards running on
// this node, and false if there is no such app. Samples live in memory
// only: a restart or a shard moving to another node starts them afresh.
func (p *Puma) Rejections(app string) (Rejections, bool) {
	if _, ok := p.apps[app]; !ok {
		return Rejections{}, false
	}
	out := Rejections{Dropped: map[string]uint64{}}
	for _, name := range reasonNames {
		out.Dropped[name] = 0
	}
	var per [nReasons][]Rejected
	for _, s := range p.readyShards() {
		s.mu.RLock()
		for _, t := range s.tables {
			if t.app.Name() != app {
				continue
			}
			for r := range nReasons {
				out.Dropped[reasonNames[r]] += t.drops[r]
				t.samples[r].each(func(sm sample) {
					per[r] = append(per[r], Rejected{Reason: reasonNames[r], Error: ratelog.Clip(sm.why.Error()), Line: sm.line, Bucket: s.bucket, At: time.UnixMilli(sm.atMs)})
				})
			}
		}
		s.mu.RUnlock()
	}
	for r := range per {
		sort.SliceStable(per[r], func(i, j int) bool { return per[r][i].At.After(per[r][j].At) })
		out.Samples = append(out.Samples, per[r][:min(len(per[r]), SamplesPerReason)]...)
	}
	return out, true
}

// readyShards lists the shards running here that have recovered.
func (p *Puma) readyShards() []*shard {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make([]*shard, 0, len(p.shards))
	for _, s := range p.shards {
		select {
		case <-s.ready:
			out = append(out, s)
		default:
		}
	}
	return out
}
