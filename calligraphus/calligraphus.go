package calligraphus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/scribewire"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// Config configures a writer.
type Config struct {
	// Listen is the Scribe address agents send to.
	Listen string `yaml:"listen"`
	// ID names this writer in leases and logs; default host-pid.
	ID string `yaml:"id"`
	// SegmentMaxAge: an open segment is published at the latest this
	// long after its first block: the bound on how stale ptail's view is.
	// 0 (the default): chosen by the dfs, SegmentMaxAgeFor.
	SegmentMaxAge config.Duration `yaml:"segment_max_age"`
	// SegmentMaxBytes: a segment is published once it holds this much.
	SegmentMaxBytes config.ByteSize `yaml:"segment_max_bytes"`
	// Compression of the segments' blocks: "s2", "none", or "auto" (the
	// default): chosen by the dfs, CompressionFor. Readers of every
	// version since it was added read both; an older Puma or copier
	// reads an s2 block as damaged and skips it.
	Compression string `yaml:"compression"`
	// Linger: on a dfs where only closing makes bytes durable (HDFS),
	// every acknowledgement publishes a segment; batches arriving within
	// this long of the first share it. 0 (the default): a segment takes
	// the batches waiting when it is written, and batches wait while the
	// bucket's maxClosing segments close, so segments grow with the load
	// without a timer adding to every acknowledgement.
	Linger config.Duration `yaml:"linger"`
	// MaxPendingBytes per bucket: beyond it senders get TRY_LATER.
	MaxPendingBytes config.ByteSize `yaml:"max_pending_bytes"`
	// The Scribe port's limits: max_call_bytes (which bounds a message
	// too), max_connections, idle_timeout, read_timeout.
	thriftsrv.PortConfig `yaml:",inline"`
	// IdleClose: a bucket writer that received nothing for this long
	// publishes its segment, releases its lease and ends.
	IdleClose config.Duration `yaml:"idle_close"`
	// MaxCategories bounds the categories with running bucket writers; a
	// call that needs a writer for one more gets TRY_LATER (counted as
	// max_categories) until idle writers end.
	MaxCategories int `yaml:"max_categories"`
	// ForwardTimeout bounds a forward of entries to the writer holding
	// their bucket: connecting, and waiting for its answer (which comes
	// once the entries are durable there).
	ForwardTimeout config.Duration `yaml:"forward_timeout"`

	// Replaced keys, kept only to say so.
	OldMaxFrameBytes   *config.ByteSize `yaml:"max_frame_bytes,omitempty"`
	OldMaxMessageBytes *config.ByteSize `yaml:"max_message_bytes,omitempty"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Listen:          "127.0.0.1:1464",
		SegmentMaxAge:   0, // per dfs: SegmentMaxAgeFor
		SegmentMaxBytes: 64 << 20,
		Compression:     "auto", // per dfs: CompressionFor
		Linger:          0,
		MaxPendingBytes: 64 << 20,
		PortConfig:      thriftsrv.DefaultPortConfig(),
		IdleClose:       config.Duration(time.Minute),
		MaxCategories:   10000,
		ForwardTimeout:  config.Duration(10 * time.Second),
	}
}

// Validate checks the configuration; errors are config.FieldErrors at
// paths relative to the writer's section (the wiring places them under
// "calligraphus", config.Under).
func (c *Config) Validate() error {
	switch {
	case c.Listen == "":
		return config.Errorf("listen", "must not be empty")
	case c.SegmentMaxAge != 0 && c.SegmentMaxAge.D() < 10*time.Millisecond:
		return config.Errorf("segment_max_age", "must be 0 (chosen by the dfs) or at least 10ms")
	case c.SegmentMaxBytes < 1<<10:
		return config.Errorf("segment_max_bytes", "must be at least 1KiB")
	case c.Linger < 0:
		return config.Errorf("linger", "must not be negative")
	case c.IdleClose.D() < 10*time.Millisecond:
		return config.Errorf("idle_close", "must be at least 10ms")
	case c.MaxCategories < 1:
		return config.Errorf("max_categories", "must be positive")
	case c.ForwardTimeout.D() < 100*time.Millisecond:
		return config.Errorf("forward_timeout", "must be at least 100ms")
	case c.OldMaxFrameBytes != nil:
		return config.Errorf("max_frame_bytes", "replaced by calligraphus.max_call_bytes (the largest call served; a larger one is answered TRY_LATER)")
	case c.OldMaxMessageBytes != nil:
		return config.Errorf("max_message_bytes", "removed: a message is bounded by calligraphus.max_call_bytes")
	}
	if _, err := segment.ParseCompression(c.Compression); err != nil && c.Compression != "auto" {
		return config.Errorf("compression", "%v, or auto (chosen by the dfs)", err)
	}
	if err := c.PortConfig.Validate(); err != nil {
		return err
	}
	if c.MaxPendingBytes < c.MaxCallBytes {
		return config.Errorf("max_pending_bytes", "must be at least max_call_bytes (%v)", c.MaxCallBytes)
	}
	return nil
}

// Segment ages chosen by the dfs (segment_max_age 0).
const (
	// LocalSegmentMaxAge: on a dfs where an fsync makes bytes durable (a
	// local disk), a segment's entries are acknowledged already; keeping
	// it open only keeps them from readers. An entry waits for its
	// segment's publish up to the whole age, so the age is the floor of
	// the freshness p99 (issue 10's goal: 300 ms at half the maximum
	// load, of which the Log call, the shipping, Puma's read and apply
	// and the query take 100-150 ms at p99 on a loaded two-core machine:
	// bench/PROFILE.md, "Freshness on a local disk"). What a short age
	// costs is files: ten segments a second per busy bucket.
	LocalSegmentMaxAge = 100 * time.Millisecond
	// ClosedSegmentMaxAge: where only a close makes bytes durable (HDFS),
	// every acknowledgement publishes its segment (after linger), so the
	// age does not hold entries back there.
	ClosedSegmentMaxAge = time.Second
)

// CompressionFor is the compression a writer on fsys uses when its
// compression is "auto": S2 where only a close makes bytes durable
// (HDFS), where every byte goes over the network to DataNodes that
// replicate it, and is read back from them (the end-to-end rate on the
// engines rose 8 to 31 %); none where an fsync does (a local disk),
// where each byte is written once, locally, and compressing and
// decompressing cost the end-to-end run about a tenth more CPU an entry
// (bench/PROFILE.md, "(s2seg)"). A local disk short of space for
// dfs_retention's days is the case for s2 there: about a fifth of the
// bytes.
func CompressionFor(fsys dfs.FS) segment.Compression {
	if fsys.SyncDurable() {
		return segment.Uncompressed
	}
	return segment.S2
}

// SegmentMaxAgeFor is the segment age a writer on fsys uses when
// segment_max_age is 0.
func SegmentMaxAgeFor(fsys dfs.FS) time.Duration {
	if fsys.SyncDurable() {
		return LocalSegmentMaxAge
	}
	return ClosedSegmentMaxAge
}

// Deps are what a writer needs from the wiring: the common ones (the
// process's TLS among them, Shared.TLS) and its dfs, coordinator and
// router.
type Deps struct {
	component.Common
	FS     dfs.FS
	Coord  coord.Coord
	Router *Router
	// Published, if not nil, is called with a bucket's directory after a
	// segment was published there (and, on HDFS, counts): readers in the
	// same process need not wait for their next poll.
	Published func(dir string)
}

// Calligraphus is a running writer.
type Calligraphus struct {
	cfg    Config
	deps   Deps
	comp   segment.Compression // cfg.Compression
	log    *slog.Logger
	now    func() time.Time
	m      *metrics
	server *scribeapi.Server

	// rl keeps what clients can trigger at will (refused calls, entries
	// without a category) from flooding the log.
	rl *ratelog.Limiter

	// Lock order: mu before a writer's mu.
	mu      sync.Mutex
	writers map[bucketID]*bucketWriter
	// closing holds the writers that ended for idleness and are still
	// publishing and releasing their lease: the next writer of the bucket
	// waits for them.
	closing map[bucketID]chan struct{}
	// live counts the running writers (closing ones too) per category:
	// its length is what max_categories bounds.
	live map[string]int
	ctx  context.Context // set by Run; writers live under it
	wg   sync.WaitGroup

	labelMu sync.Mutex
	labels  map[string]string // category → metric label, bounded

	reqs sync.Pool // *appendReq, see newReq

	// advertised is the Scribe address this writer publishes in the group
	// of live writers; members is the latest view of that group.
	advertised  string
	members     atomic.Pointer[view]
	rebalanceCh chan struct{}
	peers       *peers
	holderMu    sync.Mutex
	holderCache map[bucketID]cachedHolder
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
		cfg.ID = component.ID()
	}
	if deps.FS == nil || deps.Coord == nil {
		return nil, errors.New("start calligraphus: a dfs and a coordinator are required")
	}
	if deps.Router == nil {
		deps.Router = NewRouter(1, nil)
	}
	if cfg.SegmentMaxAge == 0 {
		cfg.SegmentMaxAge = config.Duration(SegmentMaxAgeFor(deps.FS))
	}
	deps.Common = deps.Defaults()
	own, reg := deps.OwnMetrics()
	comp, err := segment.ParseCompression(cfg.Compression)
	if err != nil { // "auto", as validated
		comp = CompressionFor(deps.FS)
	}
	c := &Calligraphus{
		cfg:     cfg,
		deps:    deps,
		comp:    comp,
		log:     deps.Logger("calligraphus"),
		now:     deps.Now,
		m:       newMetrics(reg),
		writers: map[bucketID]*bucketWriter{},
		closing: map[bucketID]chan struct{}{},
		live:    map[string]int{},
		labels:  map[string]string{},
	}
	c.rl = ratelog.New(c.log, time.Minute, 10)
	held := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "freeway_calligraphus_buckets_held", Help: "Buckets whose lease this writer holds, as far as it knows."},
		func() float64 { return float64(c.heldBuckets()) })
	age := prometheus.NewGauge(prometheus.GaugeOpts{Name: "freeway_calligraphus_segment_max_age_seconds", Help: "The segment age this writer publishes at (segment_max_age, or the dfs's default for 0)."})
	age.Set(cfg.SegmentMaxAge.D().Seconds())
	if reg != nil {
		reg.MustRegister(held, age)
	}
	// Refuse a listener other writers and agents could not be told how to
	// reach before binding it (the port does not matter here).
	if host, _, err := net.SplitHostPort(cfg.Listen); err == nil {
		if _, err := component.AdvertisedAddr(&net.TCPAddr{IP: net.ParseIP(host)}, deps.Shared.Advertise); err != nil && (host == "" || net.ParseIP(host) != nil) {
			return nil, fmt.Errorf("calligraphus.listen %s: %w", cfg.Listen, err)
		}
	}
	info := scribeapi.Info{Name: "freeway-calligraphus", Version: deps.Version, Counters: scribeapi.Counters(own, fb303Counters...), Control: deps.Control, Metrics: deps.Metrics, Now: deps.Now}
	srv, err := scribeapi.Listen(cfg.Listen, c, info, cfg.PortConfig.Limits(), deps.Log,
		thriftsrv.WithName("calligraphus"), thriftsrv.WithBudget(deps.Shared.Budget), thriftsrv.WithTLS(deps.Shared.TLS.ServerConfig()))
	if err != nil {
		return nil, err // "listen on <addr>: ...", under the caller's "start calligraphus"
	}
	c.server = srv
	bound, err := net.ResolveTCPAddr("tcp", srv.Addr())
	if err == nil {
		c.advertised, err = component.AdvertisedAddr(bound, deps.Shared.Advertise)
	}
	if err != nil {
		return nil, fmt.Errorf("start calligraphus: %w", err)
	}
	c.rebalanceCh = make(chan struct{}, 1)
	c.holderCache = map[bucketID]cachedHolder{}
	c.peers = c.newPeers()
	return c, nil
}

// Addr is the bound Scribe address.
func (c *Calligraphus) Addr() string { return c.server.Addr() }

// Status is the writer's state for /api/v1/status: its running bucket
// writers.
type Status struct {
	Buckets []BucketStatus `json:"buckets"`
}

// BucketStatus is one running bucket writer.
type BucketStatus struct {
	Category string `json:"category"`
	Bucket   int    `json:"bucket"`
	// HoldsLease: the writer holds the bucket's lease, as far as it knows.
	HoldsLease bool `json:"holds_lease"`
	// PendingBytes are accepted and not yet durable.
	PendingBytes int64 `json:"pending_bytes"`
}

// Status lists the running bucket writers, sorted (cheap: the writers'
// locks, one at a time).
func (c *Calligraphus) Status() Status {
	c.mu.Lock()
	ws := make([]*bucketWriter, 0, len(c.writers))
	for _, w := range c.writers {
		ws = append(ws, w)
	}
	c.mu.Unlock()
	out := Status{Buckets: make([]BucketStatus, 0, len(ws))}
	for _, w := range ws {
		w.mu.Lock()
		pending := w.pending
		w.mu.Unlock()
		out.Buckets = append(out.Buckets, BucketStatus{Category: w.id.category, Bucket: w.id.bucket, HoldsLease: w.owned.Load(), PendingBytes: pending})
	}
	sort.Slice(out.Buckets, func(i, j int) bool {
		a, b := out.Buckets[i], out.Buckets[j]
		if a.Category != b.Category {
			return a.Category < b.Category
		}
		return a.Bucket < b.Bucket
	})
	return out
}

// Run serves until ctx ends, then publishes every open segment and returns.
func (c *Calligraphus) Run(ctx context.Context) error {
	wctx, cancelWriters := context.WithCancel(context.WithoutCancel(ctx))
	c.mu.Lock()
	c.ctx = wctx
	c.mu.Unlock()
	c.log.Info("calligraphus serving", "addr", c.Addr(), "advertised", c.advertised, "dfs", c.deps.FS.String(), "coord", c.deps.Coord.String(), "id", c.cfg.ID,
		"segment_max_age", c.cfg.SegmentMaxAge.D(), "compression", c.comp)
	// The membership and the rebalance end with the server, whether ctx
	// ended or the server stopped on an error of its own.
	bgctx, cancelBg := context.WithCancel(ctx)
	var bg sync.WaitGroup
	bg.Add(2)
	go func() { defer bg.Done(); c.membership(bgctx) }()
	go func() { defer bg.Done(); c.rebalance(bgctx) }()
	err := c.server.Serve(ctx)
	// The server has stopped taking batches; leave the group (so that the
	// others stop forwarding here), then let writers publish and stop.
	cancelBg()
	bg.Wait()
	cancelWriters()
	c.wg.Wait()
	c.peers.close()
	c.log.Info("calligraphus stopped")
	return err
}

// Log implements the Scribe Log call for stock clients. Their entries
// arrive now, by this writer's clock. The port gives most calls to
// LogEntries (decoded without a struct per entry); Log gets those its
// fast path leaves to the generated code.
func (c *Calligraphus) Log(ctx context.Context, entries []*scribethrift.LogEntry) (scribethrift.ResultCode, error) {
	return c.LogEntries(ctx, wireEntries(entries))
}

// LogEntries is Log for entries decoded by the port's fast path.
func (c *Calligraphus) LogEntries(ctx context.Context, entries []scribewire.Entry) (scribethrift.ResultCode, error) {
	return c.ingest(ctx, callInfo{arrivalMs: c.now().UnixMilli()}, entries), nil
}

// LogBatch implements Freeway's extension for its agents.
func (c *Calligraphus) LogBatch(ctx context.Context, b *scribethrift.Batch) (scribethrift.ResultCode, error) {
	if b == nil {
		return scribethrift.ResultCode_OK, nil
	}
	return c.LogBatchEntries(ctx, &scribewire.Batch{AgentID: b.AgentID, FirstSeq: b.FirstSeq, ReceivedAtMs: b.ReceivedAtMs,
		Incarnation: b.Incarnation, Seqs: b.Seqs, Forwarded: b.Forwarded}, wireEntries(b.Messages))
}

// wireEntries views generated entries as the fast path's; a nil entry
// (never decoded, but a caller may pass one) has no category and is
// dropped as one.
func wireEntries(msgs []*scribethrift.LogEntry) []scribewire.Entry {
	es := make([]scribewire.Entry, len(msgs))
	var cat []byte // one copy per run of equal categories
	for i, m := range msgs {
		if m != nil {
			if string(cat) != m.Category || cat == nil {
				cat = []byte(m.Category)
			}
			es[i] = scribewire.Entry{Category: cat, Message: m.Message}
		}
	}
	return es
}

// LogBatchEntries is LogBatch for batches decoded by the port's fast
// path.
func (c *Calligraphus) LogBatchEntries(ctx context.Context, b *scribewire.Batch, entries []scribewire.Entry) (scribethrift.ResultCode, error) {
	if b == nil {
		return scribethrift.ResultCode_OK, nil
	}
	// The agent's arrival time, but never later than ours: a clock ahead
	// would make Puma take entries from the future as on time.
	now := c.now().UnixMilli()
	arrival := b.ReceivedAtMs
	if arrival <= 0 || arrival > now {
		arrival = now
	}
	if c.deps.Shared.TLS.VerifiesClients() && !auth.Verified(thriftsrv.TLSState(ctx)) {
		// With client certificates verified (tls.ca_file), only an agent
		// that showed one may speak for an agent id: anyone else's batch
		// could suppress that agent's entries downstream. Taken whole, as
		// from a stock client (at-least-once), and said.
		c.m.unverified.Add(float64(len(entries)))
		c.rl.Warn("unverified", "batch from a connection without a verified client certificate taken without agent id or sequence numbers",
			"agent", ratelog.Clip(b.AgentID), "remote", peer(ctx))
		// Marked forwarded, it is still never forwarded again: the mark
		// only restricts what this writer does with it.
		return c.ingest(ctx, callInfo{arrivalMs: now, forwarded: b.GetForwarded()}, entries), nil
	}
	info := callInfo{agentID: b.AgentID, arrivalMs: arrival, firstSeq: uint64(max(b.FirstSeq, 0)), forwarded: b.GetForwarded()}
	if b.AgentID != "" {
		// Sequence numbers restart with each incarnation of the agent's
		// queue: deduplicate per incarnation. The incarnation is a secret
		// of the agent's run, kept out of logs (info.agentID is logged).
		info.agent = b.AgentID
		info.incarnation = b.GetIncarnation()
		if info.incarnation != "" {
			info.agent += "/" + info.incarnation
		}
	}
	if b.IsSetSeqs() && b.AgentID != "" {
		// A forwarding writer's batch: each entry's own sequence number.
		if len(b.Seqs) == len(entries) && !slices.ContainsFunc(b.Seqs, func(q int64) bool { return q <= 0 }) {
			info.seqs = slices.Clone(b.Seqs) // the decoder reuses b's
			return c.ingest(ctx, info, entries), nil
		}
		c.m.unsequenced.Add(float64(len(entries)))
		c.rl.Warn("bad seqs", "batch with sequence numbers not one positive number per entry taken without deduplication", "agent", ratelog.Clip(b.AgentID), "entries", len(entries), "seqs", len(b.Seqs))
		info.agent = ""
		return c.ingest(ctx, info, entries), nil
	}
	if b.FirstSeq <= 0 && b.AgentID != "" {
		// Refusing would wedge the sender, which retries TRY_LATER forever:
		// take the entries, without a sequence, as from a stock client
		// (at-least-once), and say so.
		c.m.unsequenced.Add(float64(len(entries)))
		c.rl.Warn("unsequenced", "batch without a sequence number taken without deduplication", "agent", ratelog.Clip(b.AgentID), "first_seq", b.FirstSeq)
		info.agent = ""
	}
	return c.ingest(ctx, info, entries), nil
}

// callInfo is what a call says about all its entries.
type callInfo struct {
	agent       string // the block's Agent: dedup identity, "" for stock clients
	agentID     string // the agent's id alone, for logs
	incarnation string // of the agent's queue, forwarded with the entries
	firstSeq    uint64
	seqs        []int64 // each entry's sequence number, when forwarded
	arrivalMs   int64
	// forwarded: a writer sent these entries to this one as their
	// bucket's holder; they are never forwarded again.
	forwarded bool
}

// seq is the sequence number of entry i of the call.
func (info *callInfo) seq(i int) uint64 {
	if info.seqs != nil {
		return uint64(info.seqs[i])
	}
	return info.firstSeq + uint64(i)
}

// ingest writes a call's entries to their buckets and answers OK once all
// are durable. Either every bucket takes its share or, as far as this
// process can tell in advance, none does: capacity and ownership of every
// bucket are reserved before any is written, so a call answered TRY_LATER
// for a busy or foreign bucket (or too many categories) has written
// nothing, and the sender's retry does not write anything twice.
//
// What remains: a bucket whose write fails (a dfs error) or whose lease is
// lost after the check, while another bucket of the call was written, makes
// the call TRY_LATER with the other bucket's entries durable; the retry
// writes them again. Puma drops such repeats from Freeway's agents (by
// sequence); a stock client's are counted twice (at-least-once).
func (c *Calligraphus) ingest(ctx context.Context, info callInfo, entries []scribewire.Entry) scribethrift.ResultCode {
	// The call's requests, one per bucket, in the order first seen;
	// byCategory finds a category's by bucket. A call is usually one
	// category: the cursor looks it up, and checks it, once per run.
	var (
		order      []bucketID
		reqs       []*appendReq
		byCategory = map[string][]*appendReq{}
		cur        = routeCursor{router: c.deps.Router}
		started    bool
		category   string
		valid      bool
		buckets    []*appendReq // byCategory[category]
	)
	defer cur.release()
	recycle := func(rs []*appendReq) {
		for _, r := range rs {
			c.recycle(r)
		}
	}
	accepted, empty := 0, 0
	for i := range entries {
		e := &entries[i]
		if !started || string(e.Category) != category {
			started, category = true, string(e.Category)
			// Stock Scribe drops entries without a category too: there is
			// nowhere to put them.
			if valid = cur.use(category); valid {
				buckets = byCategory[category]
				if buckets == nil {
					buckets = make([]*appendReq, cur.buckets())
					byCategory[category] = buckets
				}
			}
		}
		if !valid {
			empty++
			continue
		}
		bucket, ok := cur.bucket(e.Message)
		if !ok {
			c.m.unroutable.WithLabelValues(c.label(category)).Inc()
		}
		req := buckets[bucket]
		if req == nil {
			req = c.newReq()
			buckets[bucket] = req
			order = append(order, bucketID{category, bucket})
			reqs = append(reqs, req)
		}
		if !req.add(info, e.Message, info.seq(i)) {
			recycle(reqs)
			c.m.tryLater.WithLabelValues("too_large").Inc()
			c.rl.Error("try_later too_large", "entry larger than a segment block; call refused", "category", ratelog.Clip(category), "bytes", len(e.Message), "agent", ratelog.Clip(info.agentID))
			return scribethrift.ResultCode_TRY_LATER
		}
		accepted++
	}
	if empty > 0 {
		c.m.rejected.WithLabelValues("empty_category").Add(float64(empty))
		c.rl.Warn("empty category", "entries without a category dropped", "entries", empty, "agent", ratelog.Clip(info.agentID))
	}
	if len(order) == 0 {
		return scribethrift.ResultCode_OK
	}

	// Where each bucket's entries go: here, or to the writer holding the
	// bucket (or preferred for it, when nobody holds it). Looking up a
	// holder is a coordinator round trip: all at once.
	routes := make([]destination, len(order))
	{
		errs := make([]error, len(order))
		var wg sync.WaitGroup
		for i, id := range order {
			if c.holds(id) {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				routes[i], errs[i] = c.routeOf(ctx, id, info.forwarded)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err == nil && routes[i].addr != "" {
				err = c.checkForwardable(info, order[i], reqs[i])
			}
			if err != nil {
				recycle(reqs)
				return c.tryLater(order[i], info, err)
			}
		}
	}

	// Reserve every local bucket's capacity, then make sure this process
	// owns every one; only then submit or forward anything.
	claimed := make([]*bucketWriter, len(order)) // nil: forwarded
	refuse := func(id bucketID, err error) scribethrift.ResultCode {
		for i, w := range claimed {
			if w != nil {
				w.unreserve(reqs[i].size)
			}
		}
		recycle(reqs)
		return c.tryLater(id, info, err)
	}
	for i, id := range order {
		if routes[i].addr != "" {
			continue
		}
		w, err := c.reserve(id, reqs[i].size)
		if err != nil {
			return refuse(id, err)
		}
		claimed[i] = w
	}
	// Taking a lease is a coordinator round trip and a look at the
	// bucket: for the buckets not owned yet, all at once.
	owned := make([]error, len(claimed))
	var wg sync.WaitGroup
	for i, w := range claimed {
		if w != nil && !w.owned.Load() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				owned[i] = w.own(ctx)
			}()
		}
	}
	wg.Wait()
	for i, err := range owned {
		if err != nil {
			return refuse(order[i], err)
		}
	}
	for i, w := range claimed {
		if w != nil {
			reqs[i].encode(c.comp) // here, while the call's bytes are there
			w.enqueue(reqs[i])
		}
	}
	// The other buckets' entries, one batch per holder.
	type forwardResult struct {
		id   bucketID
		reqs int
		err  error
	}
	byAddr := map[string][]int{}
	var addrs []string
	for i, r := range routes {
		if r.addr != "" {
			if byAddr[r.addr] == nil {
				addrs = append(addrs, r.addr)
			}
			byAddr[r.addr] = append(byAddr[r.addr], i)
		}
	}
	forwards := make(chan forwardResult, len(addrs))
	for _, addr := range addrs {
		idx := byAddr[addr]
		go func() {
			ids := make([]bucketID, len(idx))
			rs := make([]*appendReq, len(idx))
			for k, i := range idx {
				ids[k], rs[k] = order[i], reqs[i]
			}
			err := c.forward(ctx, addr, info, ids, rs)
			if err != nil {
				c.forgetHolders(ids)
				err = fmt.Errorf("%w: %s (holder %s): %w", errForward, addr, ratelog.Clip(routes[idx[0]].holder), err)
			}
			forwards <- forwardResult{ids[0], len(idx), err}
		}()
	}
	var firstErr error
	var firstID bucketID
	answered := 0
	for i, id := range order {
		if claimed[i] == nil {
			continue
		}
		var err error
		select {
		case err = <-reqs[i].done:
			answered++
		case <-ctx.Done():
			err = ctx.Err()
		}
		if err != nil && firstErr == nil {
			firstErr, firstID = err, id
		}
	}
	for range addrs {
		// A forward ends within forward_timeout, and its requests are
		// not recycled before.
		r := <-forwards
		answered += r.reqs
		if r.err != nil && firstErr == nil {
			firstErr, firstID = r.err, r.id
		}
	}
	if answered == len(reqs) {
		// No writer refers to them any more. (Requests left unanswered
		// when the call ended are left to the garbage collector.)
		recycle(reqs)
	}
	if firstErr != nil {
		return c.tryLater(firstID, info, firstErr)
	}
	if info.forwarded {
		c.m.forwarded.WithLabelValues("in").Add(float64(accepted))
	} else {
		c.m.received.Add(float64(accepted))
	}
	return scribethrift.ResultCode_OK
}

// heldBuckets counts the buckets whose lease this process holds.
func (c *Calligraphus) heldBuckets() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, w := range c.writers {
		if w.owned.Load() {
			n++
		}
	}
	return n
}

// holds reports whether this process's writer of bucket id holds its
// lease, as far as it knows.
func (c *Calligraphus) holds(id bucketID) bool {
	c.mu.Lock()
	w := c.writers[id]
	c.mu.Unlock()
	return w != nil && w.owned.Load()
}

// tryLater counts and logs (rate-limited) a call refused for err.
func (c *Calligraphus) tryLater(id bucketID, info callInfo, err error) scribethrift.ResultCode {
	r := reason(err)
	c.m.tryLater.WithLabelValues(r).Inc()
	level := slog.LevelWarn
	if r == "write_error" || r == "too_large" {
		level = slog.LevelError
	}
	c.rl.Log(level, "try_later "+r, "call answered TRY_LATER", "reason", r, "category", ratelog.Clip(id.category), "bucket", id.bucket, "agent", ratelog.Clip(info.agentID), "err", err)
	return scribethrift.ResultCode_TRY_LATER
}

var (
	errBusy        = errors.New("bucket writer over max_pending_bytes")
	errNotOwner    = errors.New("bucket owned by another writer")
	errStopping    = errors.New("writer stopping")
	errTooManyCats = errors.New("over max_categories categories with running writers")
	errRetired     = errors.New("writer ended for idleness")
	errFenced      = errors.New("bucket fenced at the storage by a newer writer")
	errUnsealed    = errors.New("a newer writer's intent is not sealed yet")
	errForward     = errors.New("forward to the bucket's writer failed")
)

func reason(err error) string {
	switch {
	case errors.Is(err, errBusy):
		return "busy"
	case errors.Is(err, errNotOwner):
		return "not_owner"
	case errors.Is(err, errFenced), errors.Is(err, errUnsealed):
		return "fenced"
	case errors.Is(err, errForwardTooLarge):
		return "too_large" // for good: said at error level
	case errors.Is(err, errForward):
		return "forward_error"
	case errors.Is(err, errTooManyCats):
		return "max_categories"
	case errors.Is(err, errStopping), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "stopping"
	}
	return "write_error"
}

// reserve reserves size bytes with the writer of a bucket, starting the
// writer if needed.
func (c *Calligraphus) reserve(id bucketID, size int64) (*bucketWriter, error) {
	for {
		w, err := c.writer(id)
		if err != nil {
			return nil, err
		}
		err = w.reserve(size)
		if errors.Is(err, errRetired) {
			continue // it has just left the map; the next one is new
		}
		return w, err
	}
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
	if c.live[id.category] == 0 && len(c.live) >= c.cfg.MaxCategories {
		return nil, errTooManyCats
	}
	w := newBucketWriter(c, id, c.closing[id])
	c.writers[id] = w
	c.live[id.category]++
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		w.run(c.ctx)
		close(w.done)
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.writers[id] == w {
			delete(c.writers, id)
		}
		if c.closing[id] == w.done {
			delete(c.closing, id)
		}
		if c.live[id.category]--; c.live[id.category] == 0 {
			delete(c.live, id.category)
		}
	}()
	return w, nil
}

// retire takes an idle writer out of service, unless a call has reserved
// room with it meanwhile; it reports whether the writer is to end.
func (c *Calligraphus) retire(w *bucketWriter) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.slots > 0 {
		return false
	}
	if c.writers[w.id] == w {
		delete(c.writers, w.id)
	}
	c.closing[w.id] = w.done
	w.closed, w.retired = true, true
	return true
}

// maxLabels bounds the categories with a metric series of their own;
// later ones share the label otherLabel. (An encoded category never starts
// with "_", so it cannot be mistaken for one.)
const (
	maxLabels  = 1024
	otherLabel = "_other"
)

// label is a category's metric label: its encoded name (bounded, ASCII),
// or otherLabel once maxLabels categories have one.
func (c *Calligraphus) label(category string) string {
	c.labelMu.Lock()
	defer c.labelMu.Unlock()
	if l, ok := c.labels[category]; ok {
		return l
	}
	if len(c.labels) >= maxLabels {
		return otherLabel
	}
	l := layout.Label(category)
	c.labels[category] = l
	return l
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
	quarantined prometheus.Counter
	fenced      prometheus.Counter
	aheadFailed prometheus.Counter
	forwarded   *prometheus.CounterVec
	handoffs    prometheus.Counter
	writers     prometheus.Gauge
	unsequenced prometheus.Counter
	unverified  prometheus.Counter
	pending     *prometheus.GaugeVec
	commit      prometheus.Histogram
	// steps splits a request's acknowledgement on a dfs where only a
	// close makes bytes durable (HDFS), one series a step (the step
	// constants below), resolved once: queueStep and the others.
	steps                                                 *prometheus.HistogramVec
	queueStep, closeStep, waitStep, renameStep, fenceStep prometheus.Observer
}

// The steps of freeway_calligraphus_publish_step_seconds: a request's
// wait in its bucket's queue (enqueued to taken by the run loop), then
// for each segment its close (on a goroutine of its own: the DataNodes'
// last acknowledgements and the NameNode's complete), its wait for the
// run loop once closed, its rename and the fence listing after it.
const (
	stepQueue  = "queue"
	stepClose  = "close"
	stepWait   = "wait"
	stepRename = "rename"
	stepFence  = "fence"
)

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		received:    prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_calligraphus_entries_received_total", Help: "Entries acknowledged OK to senders."}),
		written:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_calligraphus_entries_written_total", Help: "Entries made durable in the dfs, by category."}, []string{"category"}),
		bytes:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_calligraphus_bytes_written_total", Help: "Segment bytes written, as stored (compressed blocks compressed), by category."}, []string{"category"}),
		segments:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_calligraphus_segments_published_total", Help: "Segments closed and published, by category."}, []string{"category"}),
		rejected:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_calligraphus_entries_rejected_total", Help: "Entries dropped for good (empty category, as stock Scribe does), by reason."}, []string{"reason"}),
		unroutable:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_calligraphus_entries_unroutable_total", Help: "Entries whose shard key could not be read, written to bucket 0, by category."}, []string{"category"}),
		tryLater:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_calligraphus_try_later_total", Help: "Calls answered TRY_LATER, by reason: busy (max_pending_bytes), not_owner, fenced, max_categories, stopping, write_error, too_large, forward_error."}, []string{"reason"}),
		forwarded:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_calligraphus_entries_forwarded_total", Help: "Entries forwarded between writers and acknowledged: out, sent to the writer holding their bucket; in, taken from a forwarding writer (not in entries_received)."}, []string{"direction"}),
		handoffs:    prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_calligraphus_handoffs_total", Help: "Buckets handed off to the live writer preferred for them (segment published, lease released)."}),
		writers:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "freeway_calligraphus_live_writers", Help: "Writers in the group of live writers, as this writer last saw it."}),
		unsequenced: prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_calligraphus_entries_unsequenced_total", Help: "Entries of agent batches without a sequence number, taken without deduplication."}),
		unverified:  prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_calligraphus_entries_unverified_total", Help: "Entries of agent batches from connections without a verified client certificate while tls.ca_file is set, taken without agent id or sequence numbers (no deduplication)."}),
		salvaged:    prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_calligraphus_segments_salvaged_total", Help: "Unpublished segments left by a crashed writer, or by a failed write or publish, salvaged (their valid blocks published) by the bucket's next taker."}),
		quarantined: prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_calligraphus_segments_damaged_total", Help: "Unpublished segments whose blocks could not be read at their salvage, set aside as .<segment>.damaged in their bucket, not published: alert on it."}),
		fenced:      prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_calligraphus_fenced_total", Help: "Times this writer found at the storage that a newer writer had taken its bucket (its batch answered TRY_LATER, its segment not counted)."}),
		aheadFailed: prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_calligraphus_ahead_failures_total", Help: "Segments a writer could not create ahead (HDFS): the next batch created its own (the warning is rate-limited)."}),
		pending:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "freeway_calligraphus_pending_bytes", Help: "Bytes waiting to be made durable, by category."}, []string{"category"}),
		commit:      prometheus.NewHistogram(prometheus.HistogramOpts{Name: "freeway_calligraphus_commit_seconds", Help: "Time to make a group of batches durable (sync or publish).", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		steps: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "freeway_calligraphus_publish_step_seconds",
			Help:    "Where a batch's acknowledgement waits on a dfs where only a close makes bytes durable (HDFS), by step: queue (a request in its bucket's queue until the run loop takes it), close (a segment's close), wait (a closed segment until the run loop publishes it), rename, fence (the fence listing after the rename).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"step"}),
	}
	m.queueStep, m.closeStep, m.waitStep = m.steps.WithLabelValues(stepQueue), m.steps.WithLabelValues(stepClose), m.steps.WithLabelValues(stepWait)
	m.renameStep, m.fenceStep = m.steps.WithLabelValues(stepRename), m.steps.WithLabelValues(stepFence)
	if reg != nil {
		reg.MustRegister(m.received, m.written, m.bytes, m.segments, m.rejected, m.unroutable, m.tryLater, m.salvaged, m.quarantined, m.fenced, m.aheadFailed, m.forwarded, m.handoffs, m.writers, m.unsequenced, m.unverified, m.pending, m.commit, m.steps)
	}
	return m
}

// fb303Counters are what getCounters reports, read from the metrics.
var fb303Counters = []scribeapi.Counter{
	{Name: "entries_received", Metric: "freeway_calligraphus_entries_received_total"},
	{Name: "entries_written", Metric: "freeway_calligraphus_entries_written_total"},
	{Name: "entries_rejected", Metric: "freeway_calligraphus_entries_rejected_total"},
	{Name: "try_later_sent", Metric: "freeway_calligraphus_try_later_total"},
	{Name: "segments_published", Metric: "freeway_calligraphus_segments_published_total"},
	{Name: "pending_bytes", Metric: "freeway_calligraphus_pending_bytes"},
}

// peer is the address of the client whose call ctx belongs to, for logs.
func peer(ctx context.Context) string {
	if a, ok := thriftsrv.Peer(ctx); ok {
		return a.String()
	}
	return "unknown"
}
