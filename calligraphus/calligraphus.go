package calligraphus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// Config configures a writer.
type Config struct {
	// Listen is the Scribe address agents send to.
	Listen string `yaml:"listen"`
	// ID names this writer in leases and logs; default host-pid.
	ID string `yaml:"id"`
	// SegmentMaxAge: an open segment is published at the latest this
	// long after its first block: the bound on how stale ptail's view is.
	SegmentMaxAge config.Duration `yaml:"segment_max_age"`
	// SegmentMaxBytes: a segment is published once it holds this much.
	SegmentMaxBytes config.ByteSize `yaml:"segment_max_bytes"`
	// Linger: on a dfs where only closing makes bytes durable (HDFS),
	// every acknowledgement publishes a segment; batches arriving within
	// this long of the first share it, bounding segments per second.
	Linger config.Duration `yaml:"linger"`
	// MaxPendingBytes per bucket: beyond it senders get TRY_LATER.
	MaxPendingBytes config.ByteSize `yaml:"max_pending_bytes"`
	// The Scribe port's limits: max_call_bytes (which bounds a message
	// too), max_connections, idle_timeout, read_timeout.
	thriftsrv.PortConfig `yaml:",inline"`

	// Replaced keys, kept only to say so.
	OldMaxFrameBytes   *config.ByteSize `yaml:"max_frame_bytes,omitempty"`
	OldMaxMessageBytes *config.ByteSize `yaml:"max_message_bytes,omitempty"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Listen:          "127.0.0.1:1464",
		SegmentMaxAge:   config.Duration(time.Second),
		SegmentMaxBytes: 64 << 20,
		Linger:          config.Duration(100 * time.Millisecond),
		MaxPendingBytes: 64 << 20,
		PortConfig:      thriftsrv.DefaultPortConfig(),
	}
}

// Validate checks the configuration; paths are relative to the
// "calligraphus" key.
func (c *Config) Validate() error {
	switch {
	case c.Listen == "":
		return config.Errorf("$.calligraphus.listen", "must not be empty")
	case c.SegmentMaxAge.D() < 10*time.Millisecond:
		return config.Errorf("$.calligraphus.segment_max_age", "must be at least 10ms")
	case c.SegmentMaxBytes < 1<<10:
		return config.Errorf("$.calligraphus.segment_max_bytes", "must be at least 1KiB")
	case c.Linger < 0:
		return config.Errorf("$.calligraphus.linger", "must not be negative")
	case c.OldMaxFrameBytes != nil:
		return config.Errorf("$.calligraphus.max_frame_bytes", "replaced by calligraphus.max_call_bytes (the largest call served; a larger one is answered TRY_LATER)")
	case c.OldMaxMessageBytes != nil:
		return config.Errorf("$.calligraphus.max_message_bytes", "removed: a message is bounded by calligraphus.max_call_bytes")
	}
	if err := c.PortConfig.Validate("calligraphus"); err != nil {
		return err
	}
	if c.MaxPendingBytes < c.MaxCallBytes {
		return config.Errorf("$.calligraphus.max_pending_bytes", "must be at least max_call_bytes (%v)", c.MaxCallBytes)
	}
	return nil
}

// Deps are what a writer needs from the wiring.
type Deps struct {
	FS      dfs.FS
	Coord   coord.Coord
	Router  *Router
	Log     *slog.Logger
	Metrics prometheus.Registerer
	Version string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Shared are the process's in-flight byte budget and fb303 control
	// hooks (zero: a budget of the port's own, no control calls).
	Shared scribeapi.Shared
}

// Calligraphus is a running writer.
type Calligraphus struct {
	cfg    Config
	deps   Deps
	log    *slog.Logger
	now    func() time.Time
	m      *metrics
	server *scribeapi.Server

	mu      sync.Mutex
	writers map[bucketID]*bucketWriter
	ctx     context.Context // set by Run; writers live under it
	wg      sync.WaitGroup
}

type bucketID struct {
	category string
	bucket   int
}

// New validates cfg and binds the Scribe listener; Run serves.
func New(cfg Config, deps Deps) (*Calligraphus, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ID == "" {
		host, _ := os.Hostname()
		cfg.ID = host + "-" + strconv.Itoa(os.Getpid())
	}
	if deps.FS == nil || deps.Coord == nil {
		return nil, errors.New("start calligraphus: a dfs and a coordinator are required")
	}
	if deps.Router == nil {
		deps.Router = NewRouter(1, nil)
	}
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	c := &Calligraphus{
		cfg:     cfg,
		deps:    deps,
		log:     deps.Log.With("component", "calligraphus"),
		now:     deps.Now,
		m:       newMetrics(deps.Metrics),
		writers: map[bucketID]*bucketWriter{},
	}
	info := scribeapi.Info{Name: "freeway-calligraphus", Version: deps.Version, Counters: c.m.counters, Control: deps.Shared.Control, Metrics: deps.Metrics}
	srv, err := scribeapi.Listen(cfg.Listen, c, info, cfg.PortConfig.Limits(), deps.Log,
		thriftsrv.WithName("calligraphus"), thriftsrv.WithBudget(deps.Shared.Budget))
	if err != nil {
		return nil, fmt.Errorf("start calligraphus: %w", err)
	}
	c.server = srv
	return c, nil
}

// Addr is the bound Scribe address.
func (c *Calligraphus) Addr() string { return c.server.Addr() }

// Run serves until ctx ends, then publishes every open segment and returns.
func (c *Calligraphus) Run(ctx context.Context) error {
	wctx, cancelWriters := context.WithCancel(context.WithoutCancel(ctx))
	c.mu.Lock()
	c.ctx = wctx
	c.mu.Unlock()
	c.log.Info("calligraphus serving", "addr", c.Addr(), "dfs", c.deps.FS.String(), "coord", c.deps.Coord.String(), "id", c.cfg.ID)
	err := c.server.Serve(ctx)
	// The server has stopped taking batches; let writers publish and stop.
	cancelWriters()
	c.wg.Wait()
	c.log.Info("calligraphus stopped")
	return err
}

// Log implements the Scribe Log call for stock clients.
func (c *Calligraphus) Log(ctx context.Context, entries []*scribe.LogEntry) (scribe.ResultCode, error) {
	return c.ingest(ctx, "", 0, entries, c.now().UnixMilli()), nil
}

// LogBatch implements Freeway's extension for its agents.
func (c *Calligraphus) LogBatch(ctx context.Context, b *scribe.Batch) (scribe.ResultCode, error) {
	if b == nil {
		return scribe.ResultCode_OK, nil
	}
	agent := b.AgentID
	if b.FirstSeq <= 0 && agent != "" {
		// Refusing would wedge the sender, which retries TRY_LATER forever:
		// take the entries, without a sequence, as from a stock client
		// (at-least-once), and say so.
		c.m.unsequenced.Add(float64(len(b.Messages)))
		c.log.Warn("batch without a sequence number taken without deduplication", "agent", agent, "first_seq", b.FirstSeq)
		agent = ""
	}
	arrival := b.ReceivedAtMs
	if arrival <= 0 {
		arrival = c.now().UnixMilli()
	}
	return c.ingest(ctx, agent, uint64(b.FirstSeq), b.Messages, arrival), nil
}

func (c *Calligraphus) ingest(ctx context.Context, agent string, firstSeq uint64, entries []*scribe.LogEntry, arrivalMs int64) scribe.ResultCode {
	blocks := map[bucketID]*segment.Block{}
	var order []bucketID
	accepted := 0
	for i, e := range entries {
		if e == nil {
			continue
		}
		if !apps.ValidCategory(e.Category) {
			c.m.rejected.WithLabelValues("bad_category").Inc()
			c.log.Warn("entry with an invalid category dropped", "category", e.Category, "agent", agent)
			continue
		}
		bucket, ok := c.deps.Router.Bucket(e.Category, e.Message)
		if !ok {
			c.m.unroutable.WithLabelValues(e.Category).Inc()
		}
		id := bucketID{e.Category, bucket}
		blk := blocks[id]
		if blk == nil {
			blk = &segment.Block{Agent: agent, ArrivalMs: arrivalMs}
			if agent != "" {
				blk.Seqs = []uint64{}
			}
			blocks[id] = blk
			order = append(order, id)
		}
		blk.Messages = append(blk.Messages, e.Message)
		accepted++
		if agent != "" {
			blk.Seqs = append(blk.Seqs, firstSeq+uint64(i))
		}
	}
	if len(order) == 0 {
		return scribe.ResultCode_OK
	}
	reqs := make([]*appendReq, 0, len(order))
	result := scribe.ResultCode_OK
	for _, id := range order {
		w, err := c.writer(id)
		if err != nil {
			result = scribe.ResultCode_TRY_LATER
			c.m.tryLater.WithLabelValues("stopping").Inc()
			break
		}
		req := &appendReq{block: blocks[id], size: int64(segment.BlockSize(blocks[id])), done: make(chan error, 1)}
		if err := w.submit(req); err != nil {
			result = scribe.ResultCode_TRY_LATER
			c.m.tryLater.WithLabelValues(reason(err)).Inc()
			continue
		}
		reqs = append(reqs, req)
	}
	for _, req := range reqs {
		var err error
		select {
		case err = <-req.done:
		case <-ctx.Done():
			err = ctx.Err()
		}
		if err != nil {
			result = scribe.ResultCode_TRY_LATER
			c.m.tryLater.WithLabelValues(reason(err)).Inc()
		}
	}
	if result == scribe.ResultCode_OK {
		c.m.received.Add(float64(accepted))
	}
	return result
}

var (
	errBusy     = errors.New("bucket writer over max_pending_bytes")
	errNotOwner = errors.New("bucket owned by another writer")
	errStopping = errors.New("writer stopping")
)

func reason(err error) string {
	switch {
	case errors.Is(err, errBusy):
		return "busy"
	case errors.Is(err, errNotOwner):
		return "not_owner"
	case errors.Is(err, errStopping), errors.Is(err, context.Canceled):
		return "stopping"
	}
	return "write_error"
}

// writer returns the writer of a bucket, starting it if needed.
func (c *Calligraphus) writer(id bucketID) (*bucketWriter, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx == nil || c.ctx.Err() != nil {
		return nil, errStopping
	}
	if w, ok := c.writers[id]; ok {
		return w, nil
	}
	w := newBucketWriter(c, id)
	c.writers[id] = w
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		w.run(c.ctx)
		c.mu.Lock()
		if c.writers[id] == w {
			delete(c.writers, id)
		}
		c.mu.Unlock()
	}()
	return w, nil
}

type metrics struct {
	received    prometheus.Counter
	written     *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	segments    *prometheus.CounterVec
	rejected    *prometheus.CounterVec
	unroutable  *prometheus.CounterVec
	tryLater    *prometheus.CounterVec
	salvaged    prometheus.Counter
	unsequenced prometheus.Counter
	pending     *prometheus.GaugeVec
	commit      prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		received:    prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_calligraphus_entries_received_total", Help: "Entries acknowledged OK to senders."}),
		written:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_calligraphus_entries_written_total", Help: "Entries made durable in the dfs, by category."}, []string{"category"}),
		bytes:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_calligraphus_bytes_written_total", Help: "Segment bytes written, by category."}, []string{"category"}),
		segments:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_calligraphus_segments_published_total", Help: "Segments closed and published, by category."}, []string{"category"}),
		rejected:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_calligraphus_entries_rejected_total", Help: "Entries refused for good (bad category, too large), by reason."}, []string{"reason"}),
		unroutable:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_calligraphus_entries_unroutable_total", Help: "Entries whose shard key could not be read, written to bucket 0, by category."}, []string{"category"}),
		tryLater:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_calligraphus_try_later_total", Help: "TRY_LATER answers (per bucket request), by reason."}, []string{"reason"}),
		unsequenced: prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_calligraphus_entries_unsequenced_total", Help: "Entries of agent batches without a sequence number, taken without deduplication."}),
		salvaged:    prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_calligraphus_segments_salvaged_total", Help: "Unpublished segments of a crashed writer published by its successor."}),
		pending:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "freeway_calligraphus_pending_bytes", Help: "Bytes waiting to be made durable, by category."}, []string{"category"}),
		commit:      prometheus.NewHistogram(prometheus.HistogramOpts{Name: "freeway_calligraphus_commit_seconds", Help: "Time to make a group of batches durable (sync or publish).", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
	}
	if reg != nil {
		reg.MustRegister(m.received, m.written, m.bytes, m.segments, m.rejected, m.unroutable, m.tryLater, m.salvaged, m.unsequenced, m.pending, m.commit)
	}
	return m
}

// counters feeds fb303 getCounters.
func (m *metrics) counters() map[string]int64 {
	out := map[string]int64{}
	add := func(name string, c prometheus.Collector) {
		ch := make(chan prometheus.Metric, 64)
		go func() { c.Collect(ch); close(ch) }()
		var total float64
		for metric := range ch {
			total += metricValue(metric)
		}
		out[name] = int64(total)
	}
	add("entries_received", m.received)
	add("entries_written", m.written)
	add("entries_rejected", m.rejected)
	add("try_later_sent", m.tryLater)
	add("segments_published", m.segments)
	add("pending_bytes", m.pending)
	return out
}
