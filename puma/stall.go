package puma

import (
	"errors"
	"io/fs"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/dfs"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/ptail"
)

// Stalled reading. A dfs error while a shard (or one of its backfills)
// reads its bucket, a NameNode restarting, a DataNode unreachable, a
// block whose every replica fails its checksum, is retried from the same
// position with a back-off (100 ms doubling to 10 s): a published
// segment is immutable and the error is the dfs's, not the data's, so
// nothing is skipped. Some such errors last: a checksum error
// (dfs.ErrChecksum) until the dfs repairs the block from a good replica,
// a permission error until someone fixes it. The shard then stays where
// it is, and that is shown for as long as it lasts, never silent:
//
//   - in the log: the first failure of a run (a warning; an error when
//     it is a checksum or permission error, which retrying rarely cures),
//     then an error at most once per stallLogEvery while the run lasts,
//     each naming the segment, the offset, the kind, how long and how
//     many failures; and an info line when reading resumes (a listing or
//     a read that succeeds, even with nothing new: an idle bucket is not
//     shown stuck until its next block);
//   - in metrics: freeway_puma_read_stalled_seconds{category,bucket} (how
//     long the shard's reading, or a backfill's, has failed in a row; 0
//     while it reads), freeway_puma_shards_read_stalled (how many shards
//     here have a reading failing now), and freeway_puma_read_errors_total
//     (every failure);
//   - in Status.ReadStalls (GET /api/v1/status: shards[].read_stalled),
//     and on puma.listen (AppsPath: ShardReadStalls) for a standalone
//     serving's /api/v1/status.

// stallLogEvery bounds how often a run of read failures is logged.
const stallLogEvery = time.Minute

// Kinds of read failure (ReadStall.Kind).
const (
	stallChecksum   = "checksum"   // the dfs found the bytes damaged (dfs.ErrChecksum)
	stallPermission = "permission" // fs.ErrPermission
	stallIO         = "io"         // anything else: the dfs unreachable, a timeout
)

// ReadStall is a run of failed reads of a shard's bucket: the shard's
// own reading, or a backfill's.
type ReadStall struct {
	// Reader is "live" (the shard's reading) or "backfill:<app>".
	Reader string
	// Since is when the run began; Failures counts its failed attempts.
	Since    time.Time
	Failures int
	// Segment and Offset: where the reader is stuck (the segment's path;
	// for a listing that fails, the bucket directory).
	Segment string
	Offset  int64
	// Kind is checksum, permission or io; Error the last error.
	Kind  string
	Error string
}

// stall tracks the run of read failures of one reader.
type stall struct {
	failing atomic.Bool // a run is under way (read without the lock)

	mu     sync.Mutex
	cur    ReadStall
	logged time.Time // when the run was last logged
}

// stallKind classifies a read error.
func stallKind(err error) string {
	switch {
	case errors.Is(err, dfs.ErrChecksum):
		return stallChecksum
	case errors.Is(err, fs.ErrPermission):
		return stallPermission
	}
	return stallIO
}

// fail records a failed read at now by the reader at pos and returns the
// run as it stands, whether it began here, and whether to log it now.
func (st *stall) fail(now time.Time, reader string, pos ptail.Position, err error) (rs ReadStall, first, log bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	first = !st.failing.Load()
	if first {
		st.cur = ReadStall{Reader: reader, Since: now}
		st.logged = now
		st.failing.Store(true)
	}
	st.cur.Failures++
	st.cur.Segment, st.cur.Offset = pos.Segment, pos.Offset
	var re *ptail.ReadError
	if errors.As(err, &re) {
		st.cur.Segment, st.cur.Offset = re.Segment, re.Offset
	}
	st.cur.Kind, st.cur.Error = stallKind(err), clipError(err.Error())
	log = first || now.Sub(st.logged) >= stallLogEvery
	if log {
		st.logged = now
	}
	return st.cur, first, log
}

// ok ends a run of failures, if there is one, and returns it.
func (st *stall) ok() (ReadStall, bool) {
	if !st.failing.Load() {
		return ReadStall{}, false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.failing.Store(false)
	return st.cur, true
}

// get returns the run under way, if any.
func (st *stall) get() (ReadStall, bool) {
	if !st.failing.Load() {
		return ReadStall{}, false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.cur, st.failing.Load()
}

// readFailed records and logs (see above) a failed read of the shard's
// bucket by the reader tracked by st, which retries after wait.
func (s *shard) readFailed(st *stall, reader string, pos ptail.Position, err error, wait time.Duration) {
	s.p.m.readErrors.Inc()
	now := s.p.now()
	rs, first, log := st.fail(now, reader, pos, err)
	if !log {
		return
	}
	args := []any{"reader", reader, "segment", rs.Segment, "offset", rs.Offset, "kind", rs.Kind, "failures", rs.Failures,
		"since", rs.Since.UTC().Format(time.RFC3339), "stalled", now.Sub(rs.Since).Round(time.Millisecond).String(), "retry_in", wait, "err", err}
	switch {
	case first && rs.Kind == stallIO:
		s.log.Warn("cannot read bucket; retrying", args...)
	case first:
		s.log.Error("cannot read bucket: the dfs refuses the segment's bytes; retrying until it can, nothing is skipped", args...)
	default:
		s.log.Error("bucket still unreadable; retrying, nothing is skipped", args...)
	}
}

// readResumed ends the run of failures of the reader tracked by st, if
// there is one, and says so.
func (s *shard) readResumed(st *stall) {
	rs, was := st.ok()
	if !was {
		return
	}
	s.log.Info("bucket readable again", "reader", rs.Reader, "segment", rs.Segment, "offset", rs.Offset, "failures", rs.Failures,
		"stalled", s.p.now().Sub(rs.Since).Round(time.Millisecond).String())
}

// readStalls lists the shard's readings that are failing now: its own
// and its backfills'.
func (s *shard) readStalls() []ReadStall {
	var out []ReadStall
	if rs, ok := s.readStall.get(); ok {
		out = append(out, rs)
	}
	s.mu.RLock()
	bfs := s.backfills
	s.mu.RUnlock()
	for _, bf := range bfs {
		if rs, ok := bf.stall.get(); ok {
			out = append(out, rs)
		}
	}
	return out
}

var (
	descStalledSeconds = prometheus.NewDesc("freeway_puma_read_stalled_seconds", "How long reading the shard's bucket (its own reading or a backfill's) has failed in a row, by shard running here; 0 while it reads. A lasting one is a segment the dfs cannot deliver (kind and file in /api/v1/status and the log).", []string{"category", "bucket"}, nil)
	descStalledShards  = prometheus.NewDesc("freeway_puma_shards_read_stalled", "Shards running here whose reading of their bucket (or a backfill's) is failing now, retried from the same position.", nil, nil)
)

// stallCollector reports the shards' read stalls at scrape time.
type stallCollector struct{ p *Puma }

func (c *stallCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descStalledSeconds
	ch <- descStalledShards
}

func (c *stallCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.p.now()
	stalled := 0
	for _, s := range c.p.readyShards() {
		var secs float64
		stalls := s.readStalls()
		for _, rs := range stalls {
			secs = max(secs, now.Sub(rs.Since).Seconds())
		}
		if len(stalls) > 0 {
			stalled++
		}
		ch <- prometheus.MustNewConstMetric(descStalledSeconds, prometheus.GaugeValue, secs, names.Label(s.category), strconv.Itoa(s.bucket))
	}
	ch <- prometheus.MustNewConstMetric(descStalledShards, prometheus.GaugeValue, float64(stalled))
}
