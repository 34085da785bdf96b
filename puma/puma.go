package puma

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/backoff"
	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/ptail"
)

// Config configures a Puma node.
type Config struct {
	// ID names this node in leases; default host-pid.
	ID string `yaml:"id"`
	// CheckpointInterval: how often each shard commits its changes.
	CheckpointInterval config.Duration `yaml:"checkpoint_interval"`
	// PollInterval: how often an idle shard looks for new segments.
	PollInterval config.Duration `yaml:"poll_interval"`
	// Table is the store table holding checkpoints.
	Table string `yaml:"table"`
	// MaxCells bounds the cells (window × group key) this node holds in
	// memory, over all its shards and apps. Near it, closed windows are
	// evicted to the store (evict.go); once reached with nothing left to
	// evict, a line that would create a new cell is refused (counted as
	// max_cells); existing cells keep aggregating.
	MaxCells int `yaml:"max_cells"`
	// MemoryLimit bounds the approximate bytes of the cells this node
	// holds in memory (freeway_puma_cell_bytes summed) and of its shards'
	// agent dedup state (freeway_puma_dedup_bytes, never refused): closed windows
	// are evicted, then a line that would create a new cell is refused
	// (counted as max_cells), as for MaxCells. 0, the default: no bound but MaxCells.
	MemoryLimit config.ByteSize `yaml:"memory_limit"`
	// DedupHorizon: an agent key (agent id and incarnation) not seen for
	// this long, in arrival time, is forgotten; an entry it re-sends
	// after that is counted again.
	DedupHorizon config.Duration `yaml:"dedup_horizon"`
	// MaxAgentsPerShard bounds the agent keys (agent id and incarnation)
	// a shard keeps, and each of its backfills, each up to 165 bytes of
	// every commit row;
	// beyond it the least recently seen are forgotten. At most
	// MaxAgentsLimit.
	MaxAgentsPerShard int `yaml:"max_agents_per_shard"`
	// Listen is the address of the node's query listener, which serves
	// the partial states of the shards it runs to serving's fan-out; ""
	// (the default): none. A node with a listener joins the Puma members
	// with its advertised address and balances the shards with them.
	Listen string `yaml:"listen"`
	// TakeoverGrace: a node takes a shard it is not preferred for once
	// its lease has been held by nobody for this long.
	TakeoverGrace config.Duration `yaml:"takeover_grace"`
	// MaxPartialRows bounds the rows of a partial state this node builds
	// for serving's fan-out (toolarge.go); a query over it is refused
	// with a TooLargeError. 0: DefaultMaxPartialRows.
	MaxPartialRows int `yaml:"max_partial_rows"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		CheckpointInterval: config.Duration(5 * time.Second),
		PollInterval:       config.Duration(200 * time.Millisecond),
		Table:              "puma",
		MaxCells:           2_000_000,
		DedupHorizon:       config.Duration(7 * 24 * time.Hour),
		MaxAgentsPerShard:  2048,
		TakeoverGrace:      config.Duration(5 * time.Second),
		MaxPartialRows:     DefaultMaxPartialRows,
	}
}

// MaxAgentsLimit is the largest max_agents_per_shard. A key costs up to
// commitKeyBytes (165) of each high-water map of the commit row (at most
// 128 for the key itself), and a commit is a CheckAndPut carrying the
// previous row and the new one: at 4096 keys that is about 1.3 MiB,
// within the 2 MB frames of an HBase Thrift gateway as it is configured
// by default, but for a shard with a backfill running, whose high waters
// are a map as large (commitSizeNote names such a commit when it fails).
const MaxAgentsLimit = 4096

// Validate checks the configuration; errors are config.FieldErrors at
// paths relative to the node's section (the wiring places them under
// "puma", config.Under).
func (c *Config) Validate() error {
	switch {
	case c.CheckpointInterval.D() < 100*time.Millisecond:
		return config.Errorf("checkpoint_interval", "must be at least 100ms")
	case c.PollInterval.D() < time.Millisecond:
		return config.Errorf("poll_interval", "must be at least 1ms")
	case !store.ValidTable(c.Table):
		return config.Errorf("table", "%q is not a valid table name", c.Table)
	case c.MaxCells < 1:
		return config.Errorf("max_cells", "must be at least 1")
	case c.MemoryLimit < 0:
		return config.Errorf("memory_limit", "must not be negative")
	case c.DedupHorizon.D() < time.Minute:
		return config.Errorf("dedup_horizon", "must be at least 1m")
	case c.MaxAgentsPerShard < 1 || c.MaxAgentsPerShard > MaxAgentsLimit:
		return config.Errorf("max_agents_per_shard", "must be between 1 and %d", MaxAgentsLimit)
	case c.TakeoverGrace < 0:
		return config.Errorf("takeover_grace", "must not be negative")
	case c.MaxPartialRows < 0:
		return config.Errorf("max_partial_rows", "must not be negative")
	}
	return nil
}

// Deps are what a node needs from the wiring: the common ones, and its
// backends and apps.
type Deps struct {
	component.Common
	FS    dfs.FS
	Store store.Store
	Coord coord.Coord
	Apps  []*apps.App
	// Buckets returns the bucket count of a category.
	Buckets func(category string) int
	// Advertise is the address of the node's query listener as other
	// processes reach it ("host:port"); "" when it has none. A node with
	// one joins layout.PumaMembers with it and balances its shards with
	// the other members (balance.go).
	Advertise string
	// Published, if not nil, wakes a shard's reader when a writer of this
	// process publishes in its bucket; shards poll all the same.
	Published *ptail.Notifier
}

// Puma is a running node.
type Puma struct {
	cfg        Config
	deps       Deps
	log        *slog.Logger
	now        func() time.Time
	m          *metrics
	apps       map[string]*apps.App
	byCategory map[string][]*apps.App
	categories []string

	// tailMetrics counts the damage the shards' readers skip.
	tailMetrics *ptail.Metrics

	// running: Run has made its first pass over the shards and not ended.
	running atomic.Bool
	// cells bounds the cells in memory (puma.max_cells, puma.memory_limit).
	cells cellBudget
	// dedupBytes: the part of cells' bytes that is agents' dedup state
	// (dedup.go), freeway_puma_dedup_bytes.
	dedupBytes atomic.Int64
	// appCells bounds each app's cells (its max_cells), by app name: only
	// apps with a bound.
	appCells map[string]*cellBudget
	// rejectLog rate-limits what bad input makes the shards log.
	rejectLog *ratelog.Limiter
	// afterMark, when set (tests), is called by a checkpoint once its
	// attempt marker is written, before its cells: a stalled writer.
	afterMark func(category string, bucket int)
	// inRecovery, when set (tests), is called by a recovery at stage
	// "claimed" (its claim written) and "purge" (about to purge what
	// attempts left): a recovery stalled there.
	inRecovery func(stage string)
	// releaseMemory returns the heap's free pages to the OS after a
	// checkpoint of at least releaseCells cells (debug.FreeOSMemory, at
	// most once every releaseEvery for the process's shards together;
	// tests count the calls).
	releaseMemory func()

	mu     sync.RWMutex
	shards map[shardID]*shard // taken here: recovering or running
	// tries records, for each shard tried, the outcome of the last try:
	// when the node took it, or why it does not run it (failed, held
	// elsewhere).
	tries map[shardID]*try
	// members are the live Puma members' ids (balance.go); unheld, for a
	// shard this node stands by for, since when its lease is held by
	// nobody; wants, the node's memberships of layout.PumaWants for the
	// shards it asks another node for.
	members []string
	unheld  map[shardID]time.Time
	wants   map[shardID]coord.Membership
	bm      *balanceMetrics
}

// try is the outcome of a node's last attempt to take a shard.
type try struct {
	state    ShardState // "" while the shard is taken here, else StateFailed or StateElsewhere
	since    time.Time  // when the shard entered its state (taken: when it was taken)
	last     time.Time  // the last attempt
	err      error      // failed: why; taken: why the previous attempt failed
	failures int        // consecutive failed attempts
	retryAt  time.Time  // failed: not tried again before
	// broke: the shard failed here (could not be created, or its run
	// failed) and has not run to a clean stop here since. The node does
	// not ask another holder for it (balance.go): it would likely fail
	// again, and the shard go unread in between.
	broke bool
}

type shardID struct {
	category string
	bucket   int
}

// lease is the name of the shard's ownership lease.
func (id shardID) lease() string { return names.ShardLease(id.category, id.bucket) }

// New returns a node for the apps in deps.
func New(cfg Config, deps Deps) (*Puma, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ID == "" {
		cfg.ID = component.ID()
	}
	deps.Common = deps.Defaults()
	p := &Puma{
		cfg:        cfg,
		deps:       deps,
		log:        deps.Logger("puma"),
		now:        deps.Now,
		apps:       map[string]*apps.App{},
		byCategory: map[string][]*apps.App{},
		shards:     map[shardID]*shard{},
		tries:      map[shardID]*try{},
		unheld:     map[shardID]time.Time{},
		wants:      map[shardID]coord.Membership{},
	}
	p.releaseMemory = (&memoryRelease{every: releaseEvery, free: debug.FreeOSMemory, now: p.now}).release
	for _, a := range deps.Apps {
		if _, dup := p.apps[a.Name()]; dup {
			return nil, fmt.Errorf("app %s declared twice", a.Name())
		}
		if _, err := newLayout(a); err != nil {
			return nil, err
		}
		p.apps[a.Name()] = a
		if len(p.byCategory[a.Spec.Category]) == 0 {
			p.categories = append(p.categories, a.Spec.Category)
		}
		p.byCategory[a.Spec.Category] = append(p.byCategory[a.Spec.Category], a)
	}
	sort.Strings(p.categories)
	p.cells.max = int64(cfg.MaxCells)
	p.cells.maxBytes = int64(cfg.MemoryLimit)
	p.appCells = map[string]*cellBudget{}
	for name, a := range p.apps {
		if a.Spec.MaxCells > 0 {
			p.appCells[name] = &cellBudget{max: int64(a.Spec.MaxCells)}
		}
	}
	p.rejectLog = ratelog.New(p.log, time.Minute, 5)
	p.m = newMetrics(deps.Metrics, p)
	p.bm = newBalanceMetrics(deps.Metrics, p)
	p.tailMetrics = ptail.NewMetrics(deps.Metrics)
	return p, nil
}

// Run takes the shards it can and runs them until ctx ends; it retries
// shards held elsewhere and shards that fail, so that a node picks up the
// buckets of a node that died.
func (p *Puma) Run(ctx context.Context) error {
	p.log.Info("puma running", "apps", len(p.apps), "categories", len(p.categories), "store", p.deps.Store.String())
	var wg sync.WaitGroup
	changed := make(chan struct{}, 1)
	if p.deps.Advertise != "" {
		if m := p.join(ctx); m != nil {
			// After every shard stopped (deferred calls run last first).
			defer p.leave(ctx, m)
		}
		// After every shard stopped, too: the node asks for nothing more.
		defer p.withdrawAll(ctx)
		mctx, mcancel := context.WithCancel(ctx)
		defer mcancel()
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.watchMembers(mctx, changed)
		}()
		// The members first: without them every shard looks like this
		// node's to take.
		select {
		case <-changed:
		case <-ctx.Done():
			wg.Wait()
			return nil
		}
	}
	defer wg.Wait()
	defer p.running.Store(false)
	retry := time.NewTicker(2 * time.Second)
	defer retry.Stop()
	for {
		pref := p.preferences()
		for _, cat := range p.categories {
			for b := 0; b < p.deps.Buckets(cat); b++ {
				p.tryStart(ctx, &wg, shardID{cat, b}, pref)
			}
		}
		p.running.Store(ctx.Err() == nil)
		select {
		case <-ctx.Done():
			return nil
		case <-retry.C:
		case <-changed:
		}
	}
}

// Failed shards are tried again after a delay that doubles with each
// failure in a row, from retryMin to retryMax, so that a shard that cannot
// recover (a damaged row, say) logs a line a minute, not every pass.
const (
	retryMin = 2 * time.Second
	retryMax = time.Minute
)

func (p *Puma) tryStart(ctx context.Context, wg *sync.WaitGroup, id shardID, pref map[string]string) {
	now := p.now()
	p.mu.RLock()
	_, running := p.shards[id]
	tr := p.tries[id]
	waiting := tr != nil && tr.state == StateFailed && now.Before(tr.retryAt)
	broke := tr != nil && tr.broke
	p.mu.RUnlock()
	name := id.lease()
	preferred := pref[name]
	elsewhere := preferred != "" && preferred != p.cfg.ID
	if running && elsewhere {
		p.handOff(ctx, id, preferred)
	}
	// Asked for only while preferred here and held by another node (see
	// the ErrHeld case below).
	if preferred != p.cfg.ID || running || broke {
		p.want(ctx, id, false)
	}
	if running || waiting || ctx.Err() != nil {
		return
	}
	if elsewhere && p.standBy(ctx, id) {
		p.record(id, StateElsewhere, nil, false)
		return
	}
	lease, err := p.deps.Coord.Acquire(ctx, name, p.cfg.ID)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, coord.ErrHeld) {
			p.record(id, StateElsewhere, nil, false)
			if preferred == p.cfg.ID && !broke {
				p.want(ctx, id, true)
			}
			return
		}
		p.log.Warn("cannot acquire shard", "shard", name, "err", err)
		p.record(id, StateFailed, fmt.Errorf("acquire lease %s: %w", name, err), false)
		return
	}
	s, err := newShard(p, id.category, id.bucket, lease)
	if err != nil {
		_ = lease.Release(ctx) // a lease not released ends with the coord session
		p.log.Error("cannot create shard", "shard", name, "err", err)
		p.record(id, StateFailed, fmt.Errorf("create shard %s/%d: %w", id.category, id.bucket, err), false)
		p.markBroke(id)
		return
	}
	p.mu.Lock()
	p.shards[id] = s
	// Held from now on: should the lease be free again (a hand-off to
	// the preferred node), the grace counts from then, not from when it
	// was free before this node took it over (it would be taken back at
	// once, ahead of the node it was handed to).
	delete(p.unheld, id)
	p.mu.Unlock()
	p.record(id, "", nil, false)
	p.want(ctx, id, false)
	sctx, stop := context.WithCancel(ctx)
	s.stop = stop
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer stop()
		err := s.run(sctx)
		if err != nil {
			p.log.Error("shard stopped", "shard", name, "err", err)
		}
		_ = lease.Release(context.Background()) // a lease not released ends with the coord session
		p.mu.Lock()
		delete(p.shards, id)
		p.mu.Unlock()
		switch {
		case err != nil:
			// A shard that ran well before it failed starts its count of
			// failures afresh.
			p.record(id, StateFailed, err, isReady(s))
			p.markBroke(id)
		default:
			// Stopped, or its lease was lost: tried again at the next pass.
			p.mu.Lock()
			delete(p.tries, id)
			p.mu.Unlock()
		}
	}()
}

// record notes the outcome of an attempt to take shard id: state "" when
// it was taken here. afresh says that failures start a new count.
func (p *Puma) record(id shardID, state ShardState, err error, afresh bool) {
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	tr := p.tries[id]
	if tr == nil {
		tr = &try{}
		p.tries[id] = tr
	}
	if tr.state != state || state == "" {
		tr.since = now
	}
	tr.state, tr.last = state, now
	switch state {
	case StateFailed:
		if afresh {
			tr.failures = 0
		}
		tr.err = err
		tr.failures++
		tr.retryAt = now.Add(backoff.Delay(retryMin, retryMax, tr.failures))
	case StateElsewhere:
		tr.err, tr.failures = nil, 0
	}
}

// markBroke notes that shard id failed here (try.broke).
func (p *Puma) markBroke(id shardID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if tr := p.tries[id]; tr != nil {
		tr.broke = true
	}
}

func isReady(s *shard) bool {
	select {
	case <-s.ready:
		return true
	default:
		return false
	}
}

// App returns the app called name.
func (p *Puma) App(name string) (*apps.App, bool) {
	a, ok := p.apps[name]
	return a, ok
}

// Apps lists the apps, sorted by name.
func (p *Puma) Apps() []*apps.App {
	out := make([]*apps.App, 0, len(p.apps))
	for _, a := range p.apps {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

// ShardState is where a shard a node is responsible for stands on that
// node.
type ShardState string

const (
	// StateRecovering: taken here and loading its committed state, or not
	// tried yet.
	StateRecovering ShardState = "recovering"
	// StateRunning: recovered here; its data is in this node's answers.
	StateRunning ShardState = "running"
	// StateFailed: the last attempt to take or run it here failed; Run
	// tries again after a delay.
	StateFailed ShardState = "failed"
	// StateElsewhere: another node holds its lease.
	StateElsewhere ShardState = "elsewhere"
	// StateIncomplete is not a state of the shard but of its data in an
	// answer (MissingShard): the shard runs and answers, but segments it
	// never read are missing from it (Status.Incomplete says which).
	StateIncomplete ShardState = "incomplete"
)

// Status is a shard's state and progress, for operators and tests.
type Status struct {
	Category string
	Bucket   int
	State    ShardState
	// Since is when the shard entered its state (recovering, running:
	// when this node took it). Zero for a shard not tried yet.
	Since time.Time
	// LastAttempt is when the node last tried to take the shard.
	LastAttempt time.Time
	// Error: failed, why; recovering after failures, why the last
	// attempt failed.
	Error string
	// Failures counts the failed attempts in a row.
	Failures int
	// RetryAt: failed, when Run tries again.
	RetryAt time.Time

	// Progress, for a shard taken here.
	Position  string
	Entries   uint64 // entries applied since start
	Dups      uint64 // duplicates skipped since start
	Epoch     int64  // last committed epoch
	Committed string // position of the last commit
	// Incomplete, when set, says which lines the shard's state lacks:
	// segments deleted or gone before it read them (answers over their
	// time list the shard as incomplete).
	Incomplete string

	// Owner is the node that holds the shard: this node's ID while it is
	// taken here; for a shard held elsewhere ShardStatuses asks the
	// coordinator (Statuses does not); from the store (Committed), the
	// node of the last commit.
	Owner string
	// LagSegments counts the bucket's published segments not yet read
	// (running here).
	LagSegments int64
	// LastCommit is when the shard last committed (running here: or
	// recovered).
	LastCommit time.Time
	// Watermarks is the highest event time aggregated (Unix ms), by app
	// (running here; from the store, as committed).
	Watermarks map[string]int64
	// ReadStalls are the shard's readings (its own, its backfills') that
	// fail now, retried where they are (running here; see stall.go).
	ReadStalls []ReadStall
}

// maxErrorText bounds the error text of a status, which goes into
// /readyz and into answers: a store's error may be long (a Java
// exception), and row keys in it carry bytes from the logs.
const maxErrorText = 1024

func clipError(s string) string {
	if len(s) <= maxErrorText {
		return s
	}
	cut := maxErrorText
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d bytes)", s[:cut], len(s))
}

func (s Status) shard() string { return s.Category + "/" + strconv.Itoa(s.Bucket) }

// status is the state of shard id; p.mu is held.
func (p *Puma) status(id shardID) Status {
	st := Status{Category: id.category, Bucket: id.bucket, State: StateRecovering}
	tr := p.tries[id]
	if tr != nil {
		st.Since, st.LastAttempt, st.Failures = tr.since, tr.last, tr.failures
		if tr.err != nil {
			st.Error = clipError(tr.err.Error())
		}
		if tr.state != "" {
			st.State = tr.state
		}
		if tr.state == StateFailed {
			st.RetryAt = tr.retryAt
		}
	}
	s, ok := p.shards[id]
	if !ok {
		return st
	}
	st.State, st.Owner = StateRecovering, p.cfg.ID
	if isReady(s) {
		st.State, st.Error, st.Failures = StateRunning, "", 0
		st.LagSegments, st.LastCommit = s.lag.Load(), s.lastCommitted()
		st.ReadStalls = s.readStalls()
		s.mu.RLock()
		st.Position, st.Entries, st.Dups = s.pos.String(), s.entries, s.dups
		st.Epoch, st.Committed = s.committedEpoch, s.committedPos.String()
		if s.gap != nil {
			st.Incomplete = clipError(s.gap.String())
		}
		st.Watermarks = make(map[string]int64, len(s.tables))
		for _, t := range s.tables {
			if t.watermark > 0 {
				st.Watermarks[t.app.Name()] = t.watermark
			}
		}
		s.mu.RUnlock()
	}
	return st
}

// ID is the node's identity in leases (puma.id, default host-pid).
func (p *Puma) ID() string { return p.cfg.ID }

// ShardStatuses is Statuses with the owner of each shard held elsewhere,
// asked of the coordinator (a shard whose holder cannot be asked keeps
// an empty Owner).
func (p *Puma) ShardStatuses(ctx context.Context) []Status {
	out := p.Statuses()
	for i, st := range out {
		if st.State != StateElsewhere {
			continue
		}
		owner, _, err := p.deps.Coord.Holder(ctx, shardID{st.Category, st.Bucket}.lease())
		if err == nil {
			out[i].Owner = owner
		}
	}
	return out
}

// Statuses lists every shard of the node's apps, sorted by category and
// bucket, with its state here.
func (p *Puma) Statuses() []Status {
	p.mu.RLock()
	defer p.mu.RUnlock()
	var out []Status
	for _, cat := range p.categories {
		for b := 0; b < p.deps.Buckets(cat); b++ {
			out = append(out, p.status(shardID{cat, b}))
		}
	}
	return out
}

// Readiness is whether a node is ready to answer queries, and if not why.
type Readiness struct {
	Ready bool
	// Reason is one line saying why not ("" when ready).
	Reason string
	// Shards lists the shards that keep the node from being ready.
	Shards []Status
}

// String is the readiness as text: "ready", or a line with the reason
// and one line per shard in the way.
func (r Readiness) String() string {
	if r.Ready {
		return "ready\n"
	}
	var b strings.Builder
	b.WriteString("not ready: " + r.Reason + "\n")
	for _, s := range r.Shards {
		fmt.Fprintf(&b, "%s: %s", s.shard(), s.State)
		switch s.State {
		case StateFailed:
			fmt.Fprintf(&b, " at %s (%d in a row, next try at %s): %s", s.LastAttempt.UTC().Format(time.RFC3339), s.Failures, s.RetryAt.UTC().Format(time.RFC3339), s.Error)
		case StateRecovering:
			if !s.Since.IsZero() {
				fmt.Fprintf(&b, " since %s", s.Since.UTC().Format(time.RFC3339))
			} else {
				b.WriteString(" (not tried yet)")
			}
			if s.Error != "" {
				fmt.Fprintf(&b, " after %d failures; last: %s", s.Failures, s.Error)
			}
		case StateElsewhere:
			if s.Error != "" {
				b.WriteString(": " + s.Error)
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// Readiness reports whether Run has tried every shard once and each shard
// is either running here or held by another node, and names the shards
// that are not. With one node (`freeway all`) that is every shard
// recovered here; a node of a cluster that owns few shards or none is
// ready too. A failed shard keeps the node not ready until it recovers.
func (p *Puma) Readiness() Readiness {
	if !p.running.Load() {
		return Readiness{Reason: "puma is not running"}
	}
	var down, elsewhere []Status
	total := 0
	for _, st := range p.Statuses() {
		total++
		switch st.State {
		case StateRecovering, StateFailed:
			down = append(down, st)
		case StateElsewhere:
			elsewhere = append(elsewhere, st)
		}
	}
	// A shard held elsewhere must have a live holder other than this
	// node: one whose holder died waits for the next pass to be taken.
	if len(elsewhere) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, st := range elsewhere {
			owner, _, err := p.deps.Coord.Holder(ctx, shardID{st.Category, st.Bucket}.lease())
			switch {
			case err != nil:
				st.Error = fmt.Sprintf("cannot ask who holds it: %v", err)
			case owner == "":
				st.Error = "no node holds it now"
			case owner == p.cfg.ID:
				st.Error = "held by this node's id, but not run here"
			default:
				continue
			}
			down = append(down, st)
		}
	}
	if len(down) == 0 {
		return Readiness{Ready: true}
	}
	sort.Slice(down, func(i, j int) bool {
		if down[i].Category != down[j].Category {
			return down[i].Category < down[j].Category
		}
		return down[i].Bucket < down[j].Bucket
	})
	n := map[ShardState]int{}
	for _, st := range down {
		n[st.State]++
	}
	var parts []string
	for _, s := range []ShardState{StateFailed, StateRecovering, StateElsewhere} {
		if n[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[s], s))
		}
	}
	return Readiness{
		Reason: fmt.Sprintf("%d of %d shards are not running here (%s)", len(down), total, strings.Join(parts, ", ")),
		Shards: down,
	}
}

// Cells returns the cells this node holds in memory (what puma.max_cells
// bounds) and the approximate bytes puma.memory_limit bounds: a fixed
// overhead per cell and key, the stored size of each cell's sketches at
// its last checkpoint, and the agents' dedup state (DedupBytes).
func (p *Puma) Cells() (cells, bytes int64) { return p.cells.n.Load(), p.cells.bytes.Load() }

// DedupBytes returns the approximate bytes of the agents' dedup state
// (keys and seen-windows) this node's shards keep, part of Cells' bytes.
func (p *Puma) DedupBytes() int64 { return p.dedupBytes.Load() }

// Ready is Readiness().Ready.
func (p *Puma) Ready() bool { return p.Readiness().Ready }

type metrics struct {
	entries           prometheus.Counter
	duplicates        prometheus.Counter
	belowWindow       prometheus.Counter
	checkpoints       prometheus.Counter
	checkpointErrors  prometheus.Counter
	readErrors        prometheus.Counter
	checkpointCells   prometheus.Counter
	checkpointSeconds prometheus.Histogram
	segmentLag        *prometheus.GaugeVec
	regressions       prometheus.Counter
	forgottenHorizon  prometheus.Counter
	forgottenCap      prometheus.Counter
	segmentsLost      prometheus.Counter
	evictions         prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, p *Puma) *metrics {
	m := &metrics{
		entries:           prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_puma_entries_total", Help: "Entries applied to the aggregation tables."}),
		duplicates:        prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_puma_duplicates_total", Help: "Re-sent agent entries skipped because they were counted already."}),
		belowWindow:       prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_puma_dedup_below_window_total", Help: "Agent entries skipped as re-sends because their sequence number was too far below the highest seen (segment.SeqWindow) to be checked: zero unless an agent broke its in-flight bound (then they were entries lost). Also in freeway_puma_duplicates_total."}),
		checkpoints:       prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_puma_checkpoints_total", Help: "Checkpoints committed."}),
		checkpointErrors:  prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_puma_checkpoint_errors_total", Help: "Checkpoints that failed (retried)."}),
		readErrors:        prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_puma_read_errors_total", Help: "Errors reading bucket files (retried)."}),
		checkpointCells:   prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_puma_checkpoint_cells_total", Help: "Cells written by checkpoints."}),
		checkpointSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "freeway_puma_checkpoint_seconds", Help: "Checkpoint duration.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		segmentLag:        prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "freeway_puma_segment_lag", Help: "Published segments not yet read, by shard."}, []string{"category", "bucket"}),
		regressions:       prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_puma_sequence_regressions_total", Help: "New agent incarnations whose first entry was at or below another incarnation's high water (a queue restored or copied); their entries are counted."}),
		segmentsLost:      prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_puma_segments_lost_total", Help: "Segments gone from the dfs before a shard read them (answers over their time say partial)."}),
		evictions:         prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_puma_evictions_total", Help: "Times a shard dropped closed windows from memory to make room (they are answered from the store)."}),
	}
	forgotten := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_puma_dedup_keys_forgotten_total", Help: "Agent keys whose high water was forgotten, by reason (horizon: not seen for puma.dedup_horizon; max_agents: over puma.max_agents_per_shard); entries they re-send are counted again."}, []string{"reason"})
	m.forgottenHorizon, m.forgottenCap = forgotten.WithLabelValues("horizon"), forgotten.WithLabelValues("max_agents")
	if reg == nil {
		return m
	}
	reg.MustRegister(m.entries, m.duplicates, m.belowWindow, m.checkpoints, m.checkpointErrors, m.readErrors, m.checkpointCells, m.checkpointSeconds, m.segmentLag, m.regressions, forgotten, m.segmentsLost)
	reg.MustRegister(&tableCollector{p: p}, &evictCollector{p: p}, &stallCollector{p: p}, m.evictions)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "freeway_puma_dedup_bytes", Help: "Approximate memory of the agents' dedup state (keys and seen-windows) of this node's shards; charged to puma.memory_limit with the cells' bytes."},
		func() float64 { return float64(p.dedupBytes.Load()) }))
	return m
}

// tableCollector reports per-app figures read from the shards at scrape
// time: cells in memory, late, unparseable and filtered records,
// checkpoint age.
type tableCollector struct{ p *Puma }

var (
	descCells     = prometheus.NewDesc("freeway_puma_cells", "Cells (window × group) in memory, by app.", []string{"app"}, nil)
	descCellBytes = prometheus.NewDesc("freeway_puma_cell_bytes", "Approximate memory of the cells in memory, by app: a fixed overhead per cell and key, and the stored size of its sketches at their last checkpoint.", []string{"app"}, nil)
	descDropped   = prometheus.NewDesc("freeway_puma_records_dropped_total", "Records not aggregated, by app and reason (late, parse_error, bad_time, future, max_cells, filtered); bad_value counts numeric aggregates' inputs that were not numbers, skipped in records otherwise aggregated.", []string{"app", "reason"}, nil)
	descCkptAge   = prometheus.NewDesc("freeway_puma_checkpoint_age_seconds", "Time since the oldest shard's last commit.", nil, nil)
	descWatermark = prometheus.NewDesc("freeway_puma_watermark_seconds", "Highest event time seen, by app (Unix seconds).", []string{"app"}, nil)
	descShards    = prometheus.NewDesc("freeway_puma_shards", "Shards of this node's apps, by state here (recovering, running, failed, elsewhere).", []string{"state"}, nil)
	descUncommit  = prometheus.NewDesc("freeway_puma_shards_uncommitted", "Running shards that have read past their last commit (0: every read block is checkpointed).", nil, nil)
)

func (c *tableCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descCells
	ch <- descCellBytes
	ch <- descDropped
	ch <- descCkptAge
	ch <- descWatermark
	ch <- descShards
	ch <- descUncommit
}

func (c *tableCollector) Collect(ch chan<- prometheus.Metric) {
	p := c.p
	p.mu.RLock()
	shards := make([]*shard, 0, len(p.shards))
	for _, s := range p.shards {
		shards = append(shards, s)
	}
	p.mu.RUnlock()
	type agg struct {
		cells, bytes float64
		drops        [nReasons]uint64
		watermark    int64
	}
	per := map[string]*agg{}
	for _, a := range p.apps {
		per[a.Name()] = &agg{watermark: -1 << 62}
	}
	var oldest time.Time
	uncommitted := 0
	for _, s := range shards {
		select {
		case <-s.ready:
		default:
			continue
		}
		s.mu.RLock()
		if s.pos != s.committedPos {
			uncommitted++
		}
		for _, t := range s.tables {
			a := per[t.app.Name()]
			a.cells += float64(t.ncells)
			a.bytes += float64(t.bytes)
			for r, n := range t.drops {
				a.drops[r] += n
			}
			a.watermark = max(a.watermark, t.watermark)
		}
		for _, bf := range s.backfills { // in memory and in the budget too
			a := per[bf.live.app.Name()]
			a.cells += float64(bf.t.ncells)
			a.bytes += float64(bf.t.bytes)
		}
		s.mu.RUnlock()
		lc := s.lastCommitted()
		if !lc.IsZero() && (oldest.IsZero() || lc.Before(oldest)) {
			oldest = lc
		}
	}
	for name, a := range per {
		ch <- prometheus.MustNewConstMetric(descCells, prometheus.GaugeValue, a.cells, name)
		ch <- prometheus.MustNewConstMetric(descCellBytes, prometheus.GaugeValue, a.bytes, name)
		for r, n := range a.drops {
			ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(n), name, reasonNames[r])
		}
		if a.watermark > -1<<62 {
			ch <- prometheus.MustNewConstMetric(descWatermark, prometheus.GaugeValue, float64(a.watermark)/1000, name)
		}
	}
	if !oldest.IsZero() {
		ch <- prometheus.MustNewConstMetric(descCkptAge, prometheus.GaugeValue, c.p.now().Sub(oldest).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(descUncommit, prometheus.GaugeValue, float64(uncommitted))
	states := map[ShardState]float64{StateRecovering: 0, StateRunning: 0, StateFailed: 0, StateElsewhere: 0}
	for _, st := range p.Statuses() {
		states[st.State]++
	}
	for state, n := range states {
		ch <- prometheus.MustNewConstMetric(descShards, prometheus.GaugeValue, n, string(state))
	}
}

// releaseEvery is the least time between two releases of memory to the
// OS (memoryRelease): each is a garbage collection and the release of
// every free page, which the heap then faults in again as it grows back,
// so a node whose shards each checkpoint hundreds of thousands of
// changed cells every checkpoint_interval does not pay it per shard and
// interval.
const releaseEvery = 30 * time.Second

// memoryRelease calls free at most once every every.
type memoryRelease struct {
	every time.Duration
	free  func()
	now   func() time.Time

	mu   sync.Mutex
	last time.Time // of the last call of free (zero: none yet)
}

func (r *memoryRelease) release() {
	r.mu.Lock()
	now := r.now()
	if !r.last.IsZero() && now.Sub(r.last) < r.every {
		r.mu.Unlock()
		return
	}
	r.last = now
	r.mu.Unlock()
	r.free()
}
