package freeway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/freeway-dev/freeway/calligraphus"
	"github.com/freeway-dev/freeway/copier"
	"github.com/freeway-dev/freeway/internal/admin"
	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/backends"
	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/httpsrv"
	"github.com/freeway-dev/freeway/internal/retention"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/internal/version"
	"github.com/freeway-dev/freeway/ptail"
	"github.com/freeway-dev/freeway/puma"
	"github.com/freeway-dev/freeway/scribe"
	"github.com/freeway-dev/freeway/serving"
)

// Targets a process can run.
const (
	All          = "all"
	Agent        = "agent"
	Calligraphus = "calligraphus"
	Copier       = "copier"
	Puma         = "puma"
	Serving      = "serving"
	Retention    = "retention"
)

// Targets lists every target with the modules it runs; they start in the
// order of their dependencies (moduleNeeds), list order where free.
func Targets() map[string][]string {
	return map[string][]string{
		All:          {Calligraphus, Agent, Puma, Copier, Retention, Serving},
		Agent:        {Agent},
		Calligraphus: {Calligraphus},
		Copier:       {Copier, Retention},
		Puma:         {Puma, Retention},
		Serving:      {Serving},
		Retention:    {Retention},
	}
}

// adminPorts: a process without the serving module exposes /metrics,
// /healthz and /readyz here unless admin_listen says otherwise.
var adminPorts = map[string]string{
	Agent:        "127.0.0.1:8461",
	Calligraphus: "127.0.0.1:8462",
	Copier:       "127.0.0.1:8463",
	Puma:         "127.0.0.1:8464",
	Retention:    "127.0.0.1:8465",
}

// modules maps each module to the function that builds it (binding its
// listeners, opening the backends it needs) and registers what to run.
func (p *Process) modules() map[string]func() error {
	return map[string]func() error{
		Calligraphus: p.initCalligraphus,
		Agent:        p.initAgent,
		Puma:         p.initPuma,
		Copier:       p.initCopier,
		Retention:    p.initRetention,
		Serving:      p.initServing,
	}
}

// Options are what the command line adds to the configuration.
type Options struct {
	// Version is what the components report (fb303 getVersion) and
	// freeway_build_info says; "" is version.Get().
	Version string
	Log     *slog.Logger
	// AdminListen overrides the admin address ("" keeps the target's
	// default, "off" disables it).
	AdminListen string
	// Reinitialize and Shutdown are what fb303's reinitialize and
	// shutdown calls and POST /admin/reload and /admin/shutdown do (nil:
	// they are answered as unsupported); they must return at once.
	Reinitialize func()
	Shutdown     func()
	// CheckReload validates what a reload would load; a reload it
	// refuses is answered with its error (nil: not checked).
	CheckReload func() error
	// Reloads, when set, is registered in the process's metrics: the
	// reloads of the command that builds the process (nil: not
	// exported).
	Reloads *Reloads
}

// Process is one running Freeway process.
type Process struct {
	cfg    Config
	target string
	opts   Options
	log    *slog.Logger
	reg    *prometheus.Registry
	coords *backends.Coords
	fs     dfs.FS
	// wfs is the writer's own dfs client where the process runs other
	// modules that use the dfs (writerDFS); nil otherwise.
	wfs     dfs.FS
	mods    []string // the modules of the target
	st      store.Store
	co      coord.Coord
	res     *Resolved   // the configuration as the modules consume it, derived once
	apps    []*apps.App // res.Apps
	runners []runner
	closers []func() error
	admin   *httpsrv.Server
	// published wakes this process's Puma shards when its writers publish
	// in their bucket (they still poll: a writer elsewhere tells nobody).
	published *ptail.Notifier
	// shared is what the components of the process share: the byte
	// budget of every Thrift call, the TLS (nil: off) of every listener
	// and client, the guard that applies the tokens, the control hooks.
	shared component.Shared

	// Components, when the target has them.
	Agent        *scribe.Agent
	Calligraphus *calligraphus.Calligraphus
	Puma         *puma.Puma
	Copier       *copier.Copier
	Retention    *retention.Retention
	Serving      *serving.Server
}

type runner struct {
	name string
	run  func(ctx context.Context) error
}

// New builds the process for target from cfg (validated and resolved),
// opening backends and binding every listener; Run runs it. On error,
// everything opened so far is closed.
func New(cfg Config, target string, opts Options) (*Process, error) {
	mods, ok := Targets()[target]
	if !ok {
		names := make([]string, 0)
		for t := range Targets() {
			names = append(names, t)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("unknown target %q (want one of %s)", target, strings.Join(names, ", "))
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	opts.Version = version.Or(opts.Version)
	reg.MustRegister(version.BuildInfo(opts.Version))
	if opts.Reloads != nil {
		reg.MustRegister(opts.Reloads)
	}
	p := &Process{cfg: cfg, target: target, opts: opts, log: opts.Log, reg: reg, coords: backends.NewCoords(opts.Log),
		published: ptail.NewNotifier(), mods: mods}
	order, err := startOrder(mods, moduleNeeds)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", target, err)
	}
	if p.res, err = cfg.Resolved(); err != nil {
		return nil, err
	}
	p.apps = p.res.Apps
	sh := component.Shared{Budget: thriftsrv.NewBudget(int64(cfg.MaxInflightBytes), reg), Advertise: cfg.Advertise}
	if sh.TLS, err = auth.NewTLS(cfg.TLS, opts.Log, reg); err != nil {
		return nil, fmt.Errorf("load tls: %w", err)
	}
	ac := cfg.Auth
	if cfg.Advertise != "" {
		// The name other processes reach this one by (serving's fan-out
		// asks puma.listen for it) is the operator's, not a web page's.
		ac.AllowedHosts = append(slices.Clone(ac.AllowedHosts), cfg.Advertise)
	}
	if sh.Auth, err = auth.NewGuard(ac, opts.Log, reg); err != nil {
		return nil, err
	}
	sh.Control = component.Control{Options: p.Options, Reinitialize: opts.Reinitialize, Shutdown: opts.Shutdown, CheckReload: opts.CheckReload,
		TokenRequired: sh.Auth.AdminToken()}
	p.shared = sh
	table := p.modules()
	for _, name := range order {
		if err := table[name](); err != nil {
			p.release()
			_ = p.Close() // the start error is the one to report
			if flags := listenFlags[name]; flags != "" && errors.Is(err, syscall.EADDRINUSE) {
				// The usual first stumble: a second freeway, or another
				// server, on a default port.
				return nil, fmt.Errorf("start %s: %w (another process has the address, another freeway perhaps: set %s)", name, err, flags)
			}
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
	}
	if err := p.initAdmin(mods); err != nil {
		p.release()
		_ = p.Close() // the admin error is the one to report
		return nil, err
	}
	p.warnExposed()
	return p, nil
}

// warnExposed says which listeners are open beyond the local host without
// TLS, or (HTTP and query ports) without tokens: configured so, but
// worth a line.
func (p *Process) warnExposed() {
	type port struct {
		name, addr string
		tokens     bool // needs a token (query or admin) to be safe
	}
	var ports []port
	if p.Agent != nil {
		ports = append(ports, port{"agent", p.Agent.Addr(), false})
	}
	if p.Calligraphus != nil {
		ports = append(ports, port{"calligraphus", p.Calligraphus.Addr(), false})
	}
	if p.Serving != nil {
		ports = append(ports, port{"serving", p.Serving.Addr(), true})
		if a := p.Serving.ThriftAddr(); a != "" {
			ports = append(ports, port{"serving.thrift", a, true})
		}
	}
	if p.admin != nil {
		ports = append(ports, port{"admin", p.admin.Addr(), true})
	}
	for _, pt := range ports {
		if !exposed(pt.addr) {
			continue
		}
		tls := p.shared.TLS != nil && (pt.name != "agent" || p.cfg.Agent.TLS)
		switch {
		case !tls:
			p.log.Warn("listener open beyond the local host without tls (set tls.cert_file)", "listener", pt.name, "addr", pt.addr)
		case pt.tokens && !p.shared.Auth.QueryTokens() && !p.shared.Auth.AdminToken() && !p.cfg.TLS.ClientAuth:
			p.log.Warn("listener open beyond the local host without tokens or client certificates (set auth.* or tls.client_auth)",
				"listener", pt.name, "addr", pt.addr)
		}
	}
}

// exposed reports whether a bound address accepts connections from other
// hosts.
func exposed(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsLoopback()
}

// shared opens a backend the first time a module asks for it; the
// modules of a process share it, and the process closes it.
func shared[T io.Closer](p *Process, held *T, open func() (T, error)) (T, error) {
	if any(*held) == nil {
		v, err := open()
		if err != nil {
			return v, err
		}
		*held = v
		p.closers = append(p.closers, v.Close)
	}
	return *held, nil
}

func (p *Process) dfs() (dfs.FS, error) {
	return shared(p, &p.fs, func() (dfs.FS, error) { return backends.OpenDFS(p.cfg.DFS) })
}

// writerDFS is the dfs the writer (calligraphus) uses: a client of its
// own where the process also runs a module that reads or deletes in the
// dfs (Puma, the copier, retention), else the process's. On HDFS a client
// holds a NameNode connection for each call's round trip (namenode_
// connections of them): shared, a writer's create, complete, rename and
// fence listing, each on an acknowledgement's path, queued behind Puma's
// listings, stats and opens of the segments it reads.
func (p *Process) writerDFS() (dfs.FS, error) {
	for _, m := range p.mods {
		if m == Puma || m == Copier || m == Retention {
			return shared(p, &p.wfs, func() (dfs.FS, error) { return backends.OpenDFS(p.cfg.DFS) })
		}
	}
	return p.dfs()
}

func (p *Process) store() (store.Store, error) {
	return shared(p, &p.st, func() (store.Store, error) { return backends.OpenStore(p.cfg.Store, p.log, p.reg) })
}

func (p *Process) coord() (coord.Coord, error) {
	return shared(p, &p.co, func() (coord.Coord, error) { return p.coords.Open(p.cfg.Coord) })
}

// common is what every component of the process gets, built the same
// way for each.
func (p *Process) common() component.Common {
	return component.Common{Log: p.log, Metrics: p.reg, Version: p.opts.Version, Shared: p.shared}
}

func (p *Process) initCalligraphus() error {
	fs, err := p.writerDFS()
	if err != nil {
		return err
	}
	co, err := p.coord()
	if err != nil {
		return err
	}
	c, err := calligraphus.New(p.cfg.Calligraphus, calligraphus.Deps{Common: p.common(),
		FS: fs, Coord: co, Router: calligraphus.NewRouter(p.cfg.Buckets, p.res.Routes),
		Published: p.published.Published,
	})
	if err != nil {
		return err
	}
	p.Calligraphus = c
	p.runners = append(p.runners, runner{Calligraphus, c.Run})
	return nil
}

func (p *Process) initAgent() error {
	cfg := p.cfg.Agent
	// In one process, the agent ships to this process's writer, wherever
	// it listens, unless told otherwise.
	if p.Calligraphus != nil && slices.Equal(cfg.Upstream, scribe.DefaultConfig().Upstream) {
		cfg.Upstream = []string{p.Calligraphus.Addr()}
		p.cfg.Agent.Upstream = cfg.Upstream // what getOptions reports
	}
	deps := scribe.Deps{Common: p.common()}
	if url, ok := scribe.CoordUpstream(cfg.Upstream); ok {
		// The writers' coordinator: the process's own when it is the same.
		var err error
		if url == p.cfg.Coord {
			deps.Writers, err = p.coord()
		} else if deps.Writers, err = p.coords.Open(url); err == nil {
			p.closers = append(p.closers, deps.Writers.Close)
		}
		if err != nil {
			return fmt.Errorf("open agent.upstream: %w", err)
		}
	}
	a, err := scribe.New(cfg, deps)
	if err != nil {
		return err
	}
	p.Agent = a
	p.runners = append(p.runners, runner{Agent, a.Run})
	return nil
}

func (p *Process) initPuma() error {
	fs, err := p.dfs()
	if err != nil {
		return err
	}
	if err := p.res.CheckBuckets(fs); err != nil {
		return err
	}
	st, err := p.store()
	if err != nil {
		return err
	}
	co, err := p.coord()
	if err != nil {
		return err
	}
	srv, advertise, partial, err := p.pumaListener()
	if err != nil {
		return err
	}
	pm, err := puma.New(p.cfg.Puma, puma.Deps{Common: p.common(),
		FS: fs, Store: st, Coord: co, Apps: p.apps, Buckets: p.res.BucketsOf, Advertise: advertise,
		Published: p.published,
	})
	if err != nil {
		if srv != nil {
			_ = srv.Listener().Close() // the puma error is the one to report
		}
		return err
	}
	p.Puma = pm
	p.runners = append(p.runners, runner{Puma, pm.Run})
	if srv != nil {
		partial.Store(pm.Handler())
		p.runners = append(p.runners, runner{"puma.listen", srv.Serve})
	}
	return nil
}

func (p *Process) initCopier() error {
	if p.cfg.Copier.Destination == "" {
		if p.target == Copier {
			return errors.New("copier.destination is not set: nothing to copy to")
		}
		return nil // optional in `all`
	}
	fs, err := p.dfs()
	if err != nil {
		return err
	}
	dest, err := backends.OpenDFS(p.cfg.Copier.Destination)
	if err != nil {
		return err
	}
	p.closers = append(p.closers, dest.Close)
	st, err := p.store()
	if err != nil {
		return err
	}
	co, err := p.coord()
	if err != nil {
		return err
	}
	c, err := copier.New(p.cfg.Copier, copier.Deps{Common: p.common(),
		Source: fs, Dest: dest, Store: st, Coord: co,
	})
	if err != nil {
		return err
	}
	p.Copier = c
	p.runners = append(p.runners, runner{Copier, c.Run})
	return nil
}

// initRetention starts segment retention (dfs_retention > 0) with the
// consumers the configuration has: Puma for the categories of its apps,
// the copier for the categories it copies. The processes that run it
// stand by for one another on its lease.
func (p *Process) initRetention() error {
	after := p.cfg.DFSRetention.D()
	if after == 0 {
		return nil
	}
	fs, err := p.dfs()
	if err != nil {
		return err
	}
	co, err := p.coord()
	if err != nil {
		return err
	}
	// Retention deletes the segments of buckets Puma does not read
	// without waiting for it.
	if err := p.res.CheckBuckets(fs); err != nil {
		return err
	}
	var consumers []retention.Consumer
	if len(p.apps) > 0 || p.cfg.Copier.Enabled() {
		st, err := p.store()
		if err != nil {
			return err
		}
		consumers = p.consumers(st)
	}
	r, err := retention.New(retention.Config{After: after, Interval: retention.IntervalFor(after)},
		retention.Deps{Common: p.common(), FS: fs, Coord: co, Consumers: consumers})
	if err != nil {
		return err
	}
	p.Retention = r
	p.runners = append(p.runners, runner{Retention, r.Run})
	return nil
}

// consumers are the readers whose progress holds segments back.
func (p *Process) consumers(st store.Store) []retention.Consumer {
	var out []retention.Consumer
	if len(p.apps) > 0 {
		res, cfg := p.res, p.cfg
		out = append(out, retention.Consumer{
			Name:  Puma,
			Reads: func(cat string, b int) bool { return len(res.Consumers[cat]) > 0 && b < res.BucketsOf(cat) },
			Mark: func(ctx context.Context, cat string, b int) (retention.Mark, error) {
				pos, _, err := puma.CommittedPosition(ctx, st, cfg.Puma.Table, cat, b)
				// The committed segment itself is still being read.
				return retention.Mark{Segment: pos.Segment, Inclusive: pos.Offset < 0}, err
			},
		})
	}
	// The copier holds segments back even where this process does not run
	// it (the retention lease may go to a Puma node whose configuration
	// has no copier.destination): a bucket it has recorded progress in,
	// in the store's copier table, is held at that progress.
	c := p.cfg.Copier
	here := c.Enabled()
	out = append(out, retention.Consumer{
		Name: Copier,
		Reads: func(cat string, _ int) bool {
			return !here || len(c.Categories) == 0 || slices.Contains(c.Categories, cat)
		},
		Mark: func(ctx context.Context, cat string, b int) (retention.Mark, error) {
			// Recorded progress holds the bucket even with no segment
			// done yet (a merge inside its first segment).
			last, recorded, err := copier.BucketProgress(ctx, st, c.Table, cat, b)
			if err == nil && !here && !recorded {
				return retention.Mark{None: true}, nil
			}
			return retention.Mark{Segment: last, Inclusive: true}, err
		},
	})
	return out
}

func (p *Process) initServing() error {
	deps := serving.Deps{Common: p.common(), Gatherer: p.reg}
	// The components started before serving (the last module of a target).
	for name, on := range map[string]bool{Agent: p.Agent != nil, Calligraphus: p.Calligraphus != nil, Puma: p.Puma != nil, Copier: p.Copier != nil, Retention: p.Retention != nil} {
		if on {
			deps.Components = append(deps.Components, name)
		}
	}
	sort.Strings(deps.Components)
	deps.Components = append(deps.Components, Serving)
	st, err := p.store()
	if err != nil {
		return err
	}
	committed := puma.NewCommitted(st, p.cfg.Puma.Table, p.apps, p.res.BucketsOf).WithMaxRows(p.cfg.Puma.MaxPartialRows)
	switch {
	case p.Puma != nil:
		deps.Source, deps.Committed = p.Puma, committed
		deps.Ready = p.Puma.Readiness
	case !strings.HasPrefix(p.cfg.Coord, "inproc:"):
		// A split deployment: fresh answers from the Puma nodes.
		fo, err := p.fanout(committed)
		if err != nil {
			return err
		}
		deps.Source, deps.Committed = fo, committed
	default:
		deps.Source = committed
	}
	if a := p.Agent; a != nil {
		deps.Status = append(deps.Status, serving.StatusProvider{Name: Agent, Report: func(context.Context) any { return a.Status() }})
	}
	if c := p.Calligraphus; c != nil {
		deps.Status = append(deps.Status, serving.StatusProvider{Name: Calligraphus, Report: func(context.Context) any { return c.Status() }})
	}
	if c := p.Copier; c != nil {
		deps.Status = append(deps.Status, serving.StatusProvider{Name: Copier, Report: func(context.Context) any { return c.Status() }})
	}
	s, err := serving.New(p.cfg.Serving, deps)
	if err != nil {
		return err
	}
	p.Serving = s
	p.runners = append(p.runners, runner{Serving, s.Run})
	return nil
}

// initAdmin binds the operator endpoints of internal/admin (/metrics,
// /healthz, /readyz, POST /admin/reload and /admin/shutdown) for
// processes without the serving module, which mounts the same ones.
func (p *Process) initAdmin(mods []string) error {
	if p.Serving != nil || p.opts.AdminListen == "off" {
		return nil
	}
	addr := p.opts.AdminListen
	if addr == "" {
		addr = adminPorts[mods[0]]
	}
	mux := http.NewServeMux()
	rt := admin.Routes{Gatherer: p.reg, Auth: p.shared.Auth, Control: p.shared.Control}
	var ready []func() (bool, string)
	if pm := p.Puma; pm != nil {
		ready = append(ready, func() (bool, string) {
			rd := pm.Readiness()
			return rd.Ready, rd.String()
		})
	}
	if a := p.Agent; a != nil {
		ready = append(ready, a.Readiness)
	}
	if len(ready) > 0 {
		rt.Ready = func() (bool, string) {
			text := "ready\n"
			for _, r := range ready {
				ok, why := r()
				if !ok {
					return false, strings.TrimSuffix(why, "\n") + "\n"
				}
				if why != "" {
					text = why
				}
			}
			return true, text
		}
	}
	rt.Mount(mux)
	mux.HandleFunc("/", admin.Fallback(nil, ""))
	// A scrape is quick: a small cap and short timeouts.
	h, tc := p.shared.TLS.HTTPServer(mux)
	srv, err := httpsrv.Listen(addr, h, httpsrv.Options{Name: "admin", Log: p.log.With("component", "admin"), Metrics: p.reg,
		Limits: httpsrv.Limits{MaxConnections: 64, WriteTimeout: 30 * time.Second}, TLS: tc})
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w (set --admin-listen)", addr, err)
	}
	p.admin = srv
	p.runners = append(p.runners, runner{"admin", srv.Serve})
	return nil
}

// listenFlags names, per module, the flags of the addresses it binds.
var listenFlags = map[string]string{
	Agent:        "--agent.listen",
	Calligraphus: "--calligraphus.listen",
	Puma:         "--puma.listen",
	Serving:      "--serving.listen or --serving.thrift-listen",
}

// AdminAddr is the bound admin address, or "".
func (p *Process) AdminAddr() string {
	if p.admin == nil {
		return ""
	}
	return p.admin.Addr()
}

// AdminURL is the base URL of the admin port (https:// with TLS), or "".
func (p *Process) AdminURL() string {
	if p.admin == nil {
		return ""
	}
	return p.admin.URL()
}

// Registry is the process's metrics registry.
func (p *Process) Registry() *prometheus.Registry { return p.reg }

// Run runs every component until ctx ends or one of them fails, then
// stops them all (in reverse start order, so that the agent drains into
// the writer before the writer stops) and closes the backends.
func (p *Process) Run(ctx context.Context) error {
	defer func() {
		if err := p.Close(); err != nil {
			p.log.Error("cannot close the backends", "err", err)
		}
	}()
	n := len(p.runners)
	ctxs := make([]context.Context, n)
	cancels := make([]context.CancelFunc, n)
	for i := range p.runners {
		ctxs[i], cancels[i] = context.WithCancel(context.Background())
	}
	errs := make([]error, n)
	done := make([]chan struct{}, n)
	failed := make(chan int, n)
	var wg sync.WaitGroup
	for i, r := range p.runners {
		done[i] = make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done[i])
			errs[i] = r.run(ctxs[i])
			if errs[i] != nil {
				failed <- i
			}
		}()
	}
	select {
	case <-ctx.Done():
	case i := <-failed:
		p.log.Error("component failed; stopping the process", "component", p.runners[i].name, "err", errs[i])
	}
	for i := n - 1; i >= 0; i-- {
		cancels[i]()
		<-done[i]
	}
	wg.Wait()
	var all []error
	for i, err := range errs {
		if err != nil {
			all = append(all, fmt.Errorf("%s: %w", p.runners[i].name, err))
		}
	}
	return errors.Join(all...)
}

// release ends the components built before one that failed to build:
// each holds what its New took (listeners, the agent's queue lock) until
// its Run returns, which a Run with an ended context does at once.
// Without it a reload whose configuration fails to build (an address
// in use) left the previous configuration unable to start again beside
// them, and the process ended.
func (p *Process) release() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := len(p.runners) - 1; i >= 0; i-- {
		_ = p.runners[i].run(ctx) // never ran: the build error is the one to report
	}
	p.runners = nil
}

// Close releases the backends; Run calls it.
func (p *Process) Close() error {
	var errs []error
	for i := len(p.closers) - 1; i >= 0; i-- {
		if err := p.closers[i](); err != nil {
			errs = append(errs, err)
		}
	}
	p.closers = nil
	if p.admin != nil {
		_ = p.admin.Listener().Close() // the admin server may have closed it already
	}
	return errors.Join(errs...)
}
