package scribe

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/diskqueue"
)

// Reasons an entry from an app is rejected (dropped and counted).
const (
	reasonEmptyCategory   = "empty_category"
	reasonInvalidCategory = "invalid_category"
	reasonTooLarge        = "too_large"
)

var rejectReasons = []string{reasonEmptyCategory, reasonInvalidCategory, reasonTooLarge}

// counters are the agent's counts, kept as atomics so that Prometheus
// and fb303 getCounters read the same numbers.
type counters struct {
	receivedScribe atomic.Int64 // entries from apps made durable in the queue
	receivedTail   atomic.Int64 // tailed lines made durable in the queue
	rejected       map[string]*atomic.Int64
	tryLaterSent   atomic.Int64 // Log calls answered TRY_LATER
	tryLaterFull   atomic.Int64 // of which because the queue was full
	shipped        atomic.Int64 // entries acknowledged by upstream
	batches        atomic.Int64 // batches acknowledged by upstream
	shipErrors     atomic.Int64 // failed connects and calls upstream
	tryLaterRecv   atomic.Int64 // TRY_LATER answers from upstream
	inFlight       atomic.Int64 // batches sent and not yet answered
}

func newCounters() *counters {
	c := &counters{rejected: map[string]*atomic.Int64{}}
	for _, r := range rejectReasons {
		c.rejected[r] = new(atomic.Int64)
	}
	return c
}

func (c *counters) rejectedTotal() int64 {
	var n int64
	for _, v := range c.rejected {
		n += v.Load()
	}
	return n
}

// fb303 returns what getCounters answers: Freeway's names, and the names
// stock Scribe's scribe_ctrl reported, for monitors written against it.
func (c *counters) fb303(q *diskqueue.Queue) map[string]int64 {
	st := q.Stats()
	m := map[string]int64{
		"agent.received":           c.receivedScribe.Load(),
		"agent.received_tail":      c.receivedTail.Load(),
		"agent.rejected":           c.rejectedTotal(),
		"agent.try_later_sent":     c.tryLaterSent.Load(),
		"agent.queue_entries":      st.Entries,
		"agent.queue_bytes":        st.Bytes,
		"agent.shipped":            c.shipped.Load(),
		"agent.ship_errors":        c.shipErrors.Load(),
		"agent.try_later_received": c.tryLaterRecv.Load(),
		"agent.batches_in_flight":  c.inFlight.Load(),
		"received good":            c.receivedScribe.Load(),
		"received bad":             c.rejectedTotal(),
		"denied for queue size":    c.tryLaterFull.Load(),
		"sent":                     c.shipped.Load(),
	}
	for r, v := range c.rejected {
		m["agent.rejected."+r] = v.Load()
	}
	return m
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
		counter("freeway_agent_try_later_sent_total", "Log calls answered TRY_LATER (queue full or failing).", nil, &c.tryLaterSent),
		counter("freeway_agent_entries_shipped_total", "Entries acknowledged OK by calligraphus.", nil, &c.shipped),
		counter("freeway_agent_batches_shipped_total", "Batches acknowledged OK by calligraphus.", nil, &c.batches),
		counter("freeway_agent_ship_errors_total", "Failed connections and calls to calligraphus (each is retried).", nil, &c.shipErrors),
		counter("freeway_agent_try_later_received_total", "TRY_LATER answers from calligraphus (each is retried).", nil, &c.tryLaterRecv),
		gauge("freeway_agent_batches_in_flight", "Batches sent upstream and not yet answered.", func() float64 { return float64(c.inFlight.Load()) }),
		gauge("freeway_agent_queue_entries", "Entries in the disk queue not yet acknowledged upstream.", func() float64 { return float64(q.Stats().Entries) }),
		gauge("freeway_agent_queue_bytes", "Record bytes in the disk queue not yet acknowledged upstream.", func() float64 { return float64(q.Stats().Bytes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "freeway_agent_queue_syncs_total", Help: "Fsyncs of appended queue data; each covers every Log call waiting (group commit)."},
			func() float64 { return float64(q.Stats().Syncs) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "freeway_agent_queue_lost_entries_total", Help: "Entries skipped because their queue segment was corrupt on disk."},
			func() float64 { return float64(q.Stats().Lost) }),
	}
	for _, r := range rejectReasons {
		cs = append(cs, counter("freeway_agent_entries_rejected_total", "Entries from apps dropped as invalid, by reason.", prometheus.Labels{"reason": r}, c.rejected[r]))
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
