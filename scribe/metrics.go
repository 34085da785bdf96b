package scribe

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/diskqueue"
	"github.com/freeway-dev/freeway/internal/scribeapi"
)

// Reasons an entry from an app is rejected (dropped and counted): only
// an empty category, which stock Scribe drops too.
const reasonEmptyCategory = "empty_category"

var rejectReasons = []string{reasonEmptyCategory}

// Reasons a call is answered TRY_LATER.
const (
	tryLaterQueueFull  = "queue_full"  // max_queue_bytes reached
	tryLaterWriteError = "write_error" // the disk is full or failing
	tryLaterClosed     = "closed"      // the agent is stopping
	tryLaterTooLarge   = "too_large"   // an entry too large to ship within max_call_bytes, or a record over the queue's limit
)

var tryLaterReasons = []string{tryLaterQueueFull, tryLaterWriteError, tryLaterClosed, tryLaterTooLarge}

// counters are the agent's counts, which its Prometheus metrics read
// (and fb303's getCounters through them).
type counters struct {
	receivedScribe atomic.Int64 // entries from apps made durable in the queue
	receivedTail   atomic.Int64 // tailed lines made durable in the queue
	rejected       map[string]*atomic.Int64
	tryLater       map[string]*atomic.Int64 // calls answered TRY_LATER, by reason
	shipped        atomic.Int64             // entries acknowledged by upstream
	batches        atomic.Int64             // batches acknowledged by upstream
	shipErrors     atomic.Int64             // failed connects and calls upstream
	tryLaterRecv   atomic.Int64             // TRY_LATER answers from upstream
	inFlight       atomic.Int64             // batches sent and not yet answered
	seqsInFlight   atomic.Int64             // sequence numbers from the oldest batch in flight to the end of the newest
	queueErrors    atomic.Int64             // failed queue reads and acknowledgements (retried)
	// shipSeconds is each batch's time from its first send to its OK.
	shipSeconds prometheus.Histogram
}

func newCounters() *counters {
	c := &counters{rejected: map[string]*atomic.Int64{}, tryLater: map[string]*atomic.Int64{},
		shipSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "freeway_agent_ship_seconds",
			Help:    "Time from a batch's first send upstream to its OK (retries included): with the in-flight bound, what one agent's rate is bounded by.",
			Buckets: []float64{.005, .01, .025, .05, .1, .15, .2, .25, .3, .4, .5, .6, .75, 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 30}})}
	for _, r := range rejectReasons {
		c.rejected[r] = new(atomic.Int64)
	}
	for _, r := range tryLaterReasons {
		c.tryLater[r] = new(atomic.Int64)
	}
	return c
}

// fb303Counters are what getCounters answers, read from the metrics:
// Freeway's names, and the names stock Scribe's scribe_ctrl reported, for
// monitors written against it.
var fb303Counters = []scribeapi.Counter{
	{Name: "agent.received", Metric: "freeway_agent_entries_received_total", Labels: prometheus.Labels{"source": "scribe"}},
	{Name: "agent.received_tail", Metric: "freeway_agent_entries_received_total", Labels: prometheus.Labels{"source": "tail"}},
	{Name: "agent.rejected", Metric: "freeway_agent_entries_rejected_total"},
	{Name: "agent.rejected", Metric: "freeway_agent_entries_rejected_total", By: "reason"},
	{Name: "agent.try_later_sent", Metric: "freeway_agent_try_later_sent_total"},
	{Name: "agent.try_later_sent", Metric: "freeway_agent_try_later_sent_total", By: "reason"},
	{Name: "agent.queue_entries", Metric: "freeway_agent_queue_entries"},
	{Name: "agent.queue_bytes", Metric: "freeway_agent_queue_bytes"},
	{Name: "agent.queue_lost", Metric: "freeway_agent_queue_lost_entries_total"},
	{Name: "agent.queue_write_errors", Metric: "freeway_agent_queue_write_errors_total"},
	{Name: "agent.shipped", Metric: "freeway_agent_entries_shipped_total"},
	{Name: "agent.ship_errors", Metric: "freeway_agent_ship_errors_total"},
	{Name: "agent.try_later_received", Metric: "freeway_agent_try_later_received_total"},
	{Name: "agent.batches_in_flight", Metric: "freeway_agent_batches_in_flight"},
	{Name: "received good", Metric: "freeway_agent_entries_received_total", Labels: prometheus.Labels{"source": "scribe"}},
	{Name: "received bad", Metric: "freeway_agent_entries_rejected_total"},
	{Name: "received blank category", Metric: "freeway_agent_entries_rejected_total", Labels: prometheus.Labels{"reason": reasonEmptyCategory}},
	{Name: "denied for queue size", Metric: "freeway_agent_try_later_sent_total", Labels: prometheus.Labels{"reason": tryLaterQueueFull}},
	{Name: "sent", Metric: "freeway_agent_entries_shipped_total"},
}

// metrics registers the counters, the queue's depth and per-file tail
// counts with reg.
func registerMetrics(reg prometheus.Registerer, c *counters, q *diskqueue.Queue, tails []*tailer) error {
	counter := func(name, help string, labels prometheus.Labels, v *atomic.Int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(v.Load()) })
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	const received = "Entries made durable in the agent's queue, by source (scribe: Log calls, tail: tailed lines)."
	cs := []prometheus.Collector{
		counter("freeway_agent_entries_received_total", received, prometheus.Labels{"source": "scribe"}, &c.receivedScribe),
		counter("freeway_agent_entries_received_total", received, prometheus.Labels{"source": "tail"}, &c.receivedTail),
		counter("freeway_agent_entries_shipped_total", "Entries acknowledged OK by calligraphus.", nil, &c.shipped),
		counter("freeway_agent_batches_shipped_total", "Batches acknowledged OK by calligraphus.", nil, &c.batches),
		counter("freeway_agent_ship_errors_total", "Failed connections and calls to calligraphus (each is retried).", nil, &c.shipErrors),
		counter("freeway_agent_try_later_received_total", "TRY_LATER answers from calligraphus (each is retried).", nil, &c.tryLaterRecv),
		gauge("freeway_agent_batches_in_flight", "Batches sent upstream and not yet answered.", func() float64 { return float64(c.inFlight.Load()) }),
		gauge("freeway_agent_seqs_in_flight", "Sequence numbers from the first of the oldest batch not yet acknowledged to the end of the newest sent: at most agent.seq_window (default 65536) beyond one batch.",
			func() float64 { return float64(c.seqsInFlight.Load()) }),
		c.shipSeconds,
		gauge("freeway_agent_queue_entries", "Entries in the disk queue not yet acknowledged upstream.", func() float64 { return float64(q.Stats().Entries) }),
		gauge("freeway_agent_queue_bytes", "Bytes on disk (records as written, compressed with agent.queue_compress) in the disk queue not yet acknowledged upstream: what agent.max_queue_bytes bounds.", func() float64 { return float64(q.Stats().Bytes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "freeway_agent_queue_syncs_total", Help: "Fsyncs of appended queue data; each covers every Log call waiting (group commit)."},
			func() float64 { return float64(q.Stats().Syncs) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "freeway_agent_queue_lost_entries_total", Help: "Entries skipped because their records in the queue were damaged on disk."},
			func() float64 { return float64(q.Stats().Lost) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "freeway_agent_queue_write_errors_total", Help: "Group commits to the queue that failed (disk full or failing); their calls were answered TRY_LATER and rolled back."},
			func() float64 { return float64(q.Stats().WriteErrors) }),
		gauge("freeway_agent_queue_unavailable", "1 while the queue refuses appends until its files are repaired after a failed rollback.", func() float64 {
			if q.Stats().Unavailable {
				return 1
			}
			return 0
		}),
		counter("freeway_agent_queue_errors_total", "Failed reads and acknowledgements of the queue by the shipper (each is retried).", nil, &c.queueErrors),
	}
	for _, r := range tryLaterReasons {
		cs = append(cs, counter("freeway_agent_try_later_sent_total", "Calls answered TRY_LATER, by reason (queue_full, write_error: disk full or failing, closed, too_large).", prometheus.Labels{"reason": r}, c.tryLater[r]))
	}
	for _, r := range rejectReasons {
		cs = append(cs, counter("freeway_agent_entries_rejected_total", "Entries from apps dropped, by reason (empty_category, as stock Scribe drops them).", prometheus.Labels{"reason": r}, c.rejected[r]))
	}
	for _, t := range tails {
		l := prometheus.Labels{"path": t.path}
		cs = append(cs,
			counter("freeway_agent_tail_lines_total", "Lines read from a tailed file and made durable in the queue.", l, &t.lines),
			counter("freeway_agent_tail_lines_split_total", "Lines longer than max_message_bytes, split into several entries.", l, &t.splits),
			counter("freeway_agent_tail_rotations_total", "Rotations (the path now names another file) followed.", l, &t.rotations),
			counter("freeway_agent_tail_truncations_total", "Truncations (the file shrank) after which reading restarted at 0.", l, &t.truncations),
		)
	}
	for _, col := range cs {
		if err := reg.Register(col); err != nil {
			return err
		}
	}
	return nil
}
