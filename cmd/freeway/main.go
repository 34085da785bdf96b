// Command freeway runs Freeway: `freeway` (or `freeway all`) runs the whole
// pipeline in one process on embedded backends; `freeway agent`,
// `calligraphus`, `copier`, `puma` and `serving` run one component; `freeway
// config check FILE` validates a configuration; `freeway load` sends a
// load to an agent (internal/loadgen).
//
// SIGHUP (or fb303 reinitialize on a Scribe port, or POST /admin/reload
// on the HTTP port) reloads the configuration file and restarts the
// components with it when it validates (POST /admin/reload answers a
// file that does not with its error); SIGTERM, SIGINT, fb303 shutdown
// or POST /admin/shutdown stop them gracefully. `freeway copier
// --backfill` does not reload: on SIGHUP it logs so and goes on.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/freeway-dev/freeway/internal/backoff"
	"github.com/freeway-dev/freeway/internal/demo"
	"github.com/freeway-dev/freeway/internal/freeway"
	"github.com/freeway-dev/freeway/internal/version"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "freeway:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := targetCommand(freeway.All, "freeway", "Log aggregation: Scribe ingest, bucketed segment files, streaming aggregation, queries")
	root.Long = `Freeway is Facebook's Data Freeway + Puma, rebuilt in Go.

Without a subcommand it runs the whole pipeline (like "freeway all"):
an agent on 127.0.0.1:1463, a writer on 127.0.0.1:1464, Puma, and the query
API on http://127.0.0.1:8080, on embedded backends under --data-dir.`
	root.SilenceUsage = true
	root.CompletionOptions.DisableDefaultCmd = true
	names := make([]string, 0)
	for t := range freeway.Targets() {
		names = append(names, t)
	}
	sort.Strings(names)
	for _, t := range names {
		root.AddCommand(targetCommand(t, t, "Run "+describe(t)))
	}
	root.AddCommand(configCommand(), loadCommand(), &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			_, _ = fmt.Fprintln(cmd.OutOrStdout(), "freeway", version.Get())
		},
	})
	return root
}

func describe(target string) string {
	switch target {
	case freeway.All:
		return "every component in one process"
	case freeway.Agent:
		return "the Scribe agent (sidecar): durable local queue, ships to calligraphus"
	case freeway.Calligraphus:
		return "a writer: buckets categories into segment files in the dfs"
	case freeway.Copier:
		return "the copier: copies published segments to a second dfs, or merges them into hourly files"
	case freeway.Puma:
		return "a Puma node: aggregates buckets, checkpoints to the store"
	case freeway.Serving:
		return "the query API: fresh from the Puma nodes found in a shared coord (zk://), or committed from the store"
	case freeway.Retention:
		return "segment retention alone (it also runs in all, puma and copier): deletes what every consumer is past"
	}
	return target
}

func targetCommand(target, use, short string) *cobra.Command {
	var configFile, adminListen string
	var demoOn, backfill bool
	var demoRate int
	cmd := &cobra.Command{
		Use:           use,
		Short:         short,
		Args:          noArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	flags := freeway.RegisterFlags(cmd.Flags(), target)
	cmd.Flags().StringVar(&configFile, "config", "", "YAML configuration file (keys as in examples/freeway.yaml); flags override it")
	cmd.Flags().StringVar(&adminListen, "admin-listen", "", "address of /metrics, /healthz, /readyz for targets without serving (\"off\" disables; default per target, 127.0.0.1:846x)")
	if target == freeway.Copier {
		cmd.Flags().BoolVar(&backfill, "backfill", false, "copy (or merge) everything not done yet with a progress display, then exit; interrupted, run it again to resume")
	}
	if target == freeway.All {
		cmd.Flags().BoolVar(&demoOn, "demo", false, "send a built-in load (real Apache access-log lines, replayed in a loop at the present time) to the agent, in categories access and access_json (read by the apps of examples/freeway.yaml)")
		cmd.Flags().IntVar(&demoRate, "demo-rate", 200, "lines per second of the demo load")
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		load := func() (freeway.Config, error) { return loadConfig(configFile, flags.Apply) }
		cfg, err := load()
		if err != nil {
			return err
		}
		if !demoOn && cmd.Flags().Changed("demo-rate") {
			return errors.New("--demo-rate is the rate of --demo, which is not given")
		}
		if demoOn {
			if demoRate < 1 {
				// 0 is how the runner says "no demo": the load asked
				// for would silently not run.
				return fmt.Errorf("--demo-rate must be at least 1 line a second, not %d", demoRate)
			}
			if err := demoReadBy(cfg); err != nil {
				return err
			}
		}
		log := newLogger(cfg.Log)
		raiseFileLimit(log)
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if backfill {
			stopHUP := keepOnHUP(func() {
				log.Warn("SIGHUP: a copier --backfill run does not reload its configuration; it goes on with the one it started with (to apply a new one, stop it and run it again: it resumes)")
			})
			defer stopHUP()
			_, err := freeway.Backfill(ctx, cfg, freeway.Options{Version: version.Get(), Log: log}, os.Stdout, isTerminal(os.Stdout))
			return err
		}
		r := &runner{target: target, adminListen: adminListen, load: load, log: log}
		if demoOn {
			r.demoRate = demoRate
		}
		return r.run(ctx, cfg)
	}
	return cmd
}

// keepOnHUP makes a run that has nothing to reload (a copier --backfill,
// freeway load) go on through SIGHUP, calling warn for each one, until the
// returned stop. SIGHUP reloads the long-running targets, which register
// it; the others kept Go's default, so the SIGHUP operators send every
// freeway process (logrotate, configuration management, a `pkill -HUP
// freeway` meant for reloads) killed them mid-run.
func keepOnHUP(warn func()) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		for {
			select {
			case <-done:
				return
			case <-hup:
				warn()
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		close(done)
		<-exited
	}
}

// demoReadBy refuses a demo load that no app reads: "freeway --demo"
// without the example's configuration ran, answered every query with
// "unknown app" and said nothing of why.
func demoReadBy(cfg freeway.Config) error {
	for _, a := range cfg.Apps {
		if a.Category == demo.RawCategory || a.Category == demo.JSONCategory {
			return nil
		}
	}
	return fmt.Errorf("--demo sends categories %s and %s, which no app of the configuration reads: add --config examples/freeway.yaml (or an app of either category)", demo.RawCategory, demo.JSONCategory)
}

// loadConfig is the configuration a run starts (or reloads) with: the
// file's (none: the defaults), with the flags applied over it, validated
// and resolved.
func loadConfig(file string, applyFlags func(*freeway.Config)) (freeway.Config, error) {
	cfg := freeway.DefaultConfig()
	if file != "" {
		var err error
		if cfg, err = freeway.LoadFile(file); err != nil {
			return cfg, err
		}
	}
	applyFlags(&cfg)
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("invalid configuration: %w", err)
	}
	cfg.Resolve()
	return cfg, nil
}

// runner runs the process's components and restarts them with a
// reloaded configuration on SIGHUP or fb303 reinitialize.
type runner struct {
	target, adminListen string
	load                func() (freeway.Config, error)
	log                 *slog.Logger
	demoRate            int // 0: no demo load
	// reloads counts the reloads asked for, across the restarts they
	// make (freeway_config_reloads_total); run creates it.
	reloads *freeway.Reloads

	// inUseHook, when set (by a test), is called before each wait of a
	// reload that found an address in use (reloadInUseTries).
	inUseHook func()

	mu         sync.Mutex
	running    *freeway.Process // the components running, nil between two
	runningCfg freeway.Config   // their configuration
}

// run runs until ctx ends (SIGTERM, fb303 shutdown) or a component fails.
// A reload first reads and validates the file: a file that does not
// validate is logged (file:line:col) and the components keep running on
// the old one. A valid one stops them gracefully and starts them again
// with it; if they cannot start with it, they start again with the old
// one. Each reload's result is counted (freeway.Reloads): SIGHUP and
// fb303 reinitialize have no answer to carry a refusal.
func (r *runner) run(ctx context.Context, cfg freeway.Config) error {
	ctx, shutdown := context.WithCancel(ctx)
	defer shutdown()
	reload := make(chan struct{}, 1)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if r.reloads == nil {
		r.reloads = freeway.NewReloads()
	}
	opts := freeway.Options{
		Version: version.Get(), AdminListen: r.adminListen,
		Reinitialize: func() {
			select {
			case reload <- struct{}{}:
			default:
			}
		},
		// The file is read again when the reload happens; checking it
		// here lets POST /admin/reload answer that it is invalid, and
		// why, instead of accepting a reload that is then only refused
		// in the log.
		CheckReload: func() error {
			next, err := r.load()
			if err == nil {
				err = r.keeps(next)
			}
			if err != nil {
				r.reloads.Done(err)
			}
			return err
		},
		Shutdown: shutdown,
		Reloads:  r.reloads,
	}
	var prev *freeway.Config
	inUse := 0 // tries of the reloaded configuration that found an address in use
	for {
		opts.Log = r.log
		p, err := freeway.New(cfg, r.target, opts)
		if err != nil && prev != nil && errors.Is(err, syscall.EADDRINUSE) && inUse < reloadInUseTries {
			// The components just gave their addresses up; another
			// process binding a port of its own choosing (port 0) can
			// be given one of them meanwhile, for a moment.
			inUse++
			r.log.Warn("an address of the reloaded configuration is in use; trying again", "err", err, "try", inUse, "of", reloadInUseTries)
			if r.inUseHook != nil {
				r.inUseHook()
			}
			if !backoff.Sleep(ctx, reloadInUseWait) {
				return nil
			}
			continue
		}
		inUse = 0
		if err != nil && prev != nil {
			r.log.Error("components do not start with the reloaded configuration; starting them with the previous one", "err", err)
			r.reloads.Done(err)
			cfg, prev = *prev, nil
			continue
		}
		if err != nil {
			return err
		}
		if prev != nil {
			r.reloads.Done(nil) // started with the reloaded configuration
		}
		pctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(pctx) }()
		r.log.Info("freeway started", "target", r.target, "version", opts.Version, "data_dir", cfg.DataDir, "dfs", cfg.DFS, "store", cfg.Store, "coord", cfg.Coord)
		if p.Serving != nil {
			r.log.Info("query API", "url", p.Serving.URL()+"/")
		}
		if r.demoRate > 0 {
			if p.Agent == nil {
				stop()
				<-done //nolint:errcheck // stopped at once: its error is not the one to report
				return errors.New("--demo needs the agent")
			}
			go func() {
				if err := demo.Run(pctx, p.Agent.Addr(), p.Agent.ClientTLS(), r.demoRate, r.log); err != nil {
					r.log.Error("demo load failed", "err", err)
				}
			}()
		}
		r.setRunning(p, cfg)
		next, err := r.wait(ctx, done, reload, hup)
		r.setRunning(nil, cfg)
		stop()
		if next == nil {
			if e := <-done; err == nil {
				err = e
			}
			return err
		}
		if err := <-done; err != nil {
			r.log.Error("components stopped with an error for the reload", "err", err)
		}
		// A copy: &cfg would point at the reloaded configuration
		// once cfg is overwritten with it, and a reload that cannot
		// start would be started again instead of the previous one.
		old := cfg
		prev, cfg = &old, *next
		r.log = newLogger(cfg.Log)
		r.log.Info("configuration reloaded; starting the components again")
	}
}

// A reload whose components find an address in use tries again
// reloadInUseTries times, reloadInUseWait apart, before it starts the
// previous configuration.
const (
	reloadInUseTries = 5
	reloadInUseWait  = 200 * time.Millisecond
)

// wait waits for the end (nil config) or a valid reloaded configuration.
func (r *runner) wait(ctx context.Context, done chan error, reload chan struct{}, hup chan os.Signal) (*freeway.Config, error) {
	for {
		select {
		case <-ctx.Done():
			return nil, nil
		case err := <-done:
			done <- err // for run to read again
			return nil, nil
		case <-hup:
		case <-reload:
		}
		r.log.Info("reloading configuration")
		cfg, err := r.load()
		if err == nil {
			err = r.keeps(cfg)
		}
		if err != nil {
			r.log.Error("configuration not reloaded; running on the previous one", "err", err)
			r.reloads.Done(err)
			continue
		}
		return &cfg, nil
	}
}

// setRunning notes the components running (nil: none) and their
// configuration, for keeps.
func (r *runner) setRunning(p *freeway.Process, cfg freeway.Config) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.running, r.runningCfg = p, cfg
}

// keeps refuses a reload that would leave entries behind: the agent's
// queue moved (agent.queue_dir, or data_dir it derives from) while the
// running one holds entries acknowledged to apps and not yet shipped.
// The restarted agent would open the new directory, and those entries
// would never be sent.
func (r *runner) keeps(next freeway.Config) error {
	r.mu.Lock()
	p, cfg := r.running, r.runningCfg
	r.mu.Unlock()
	if p == nil || p.Agent == nil || next.Agent.QueueDir == cfg.Agent.QueueDir {
		return nil
	}
	if n := p.Agent.Status().QueueEntries; n > 0 {
		return fmt.Errorf("agent.queue_dir would move from %s to %s while %d entries acknowledged to apps are not yet shipped from it: they would never be sent; "+
			"keep agent.queue_dir (or data_dir) until freeway_agent_queue_entries is 0", cfg.Agent.QueueDir, next.Agent.QueueDir, n)
	}
	return nil
}

func configCommand() *cobra.Command {
	// Runnable, so that a mistyped subcommand ("config chek FILE") is an
	// error rather than the help and exit status 0: a script checking a
	// file would take that for a pass.
	cfg := &cobra.Command{
		Use: "config", Short: "Work with configuration files",
		Args:         noArgs,
		SilenceUsage: true,
		RunE:         func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	cfg.AddCommand(&cobra.Command{
		Use:   "check FILE",
		Short: "Validate a configuration file without running anything",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				// Not cobra's "accepts 1 arg(s), received 0".
				return fmt.Errorf("want one FILE, the configuration to check (freeway config check FILE), not %d arguments", len(args))
			}
			return nil
		},
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := freeway.LoadFile(args[0])
			if err != nil {
				return err
			}
			apps := "apps"
			if len(c.Apps) == 1 {
				apps = "app"
			}
			_, _ = fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%d %s)\n", args[0], len(c.Apps), apps)
			return nil
		},
	})
	return cfg
}

// noArgs refuses arguments, as cobra.NoArgs, and names the subcommands
// an argument is close to: cobra suggests them only for a root command
// that takes no Args check, and "freeway agnet" would otherwise say
// nothing more than that it is unknown.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's own default, set only where it suggests
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, " or "))
	}
	if cmd.HasAvailableSubCommands() {
		msg += fmt.Sprintf("; %q lists them", cmd.CommandPath()+" --help")
	}
	return errors.New(msg)
}

func newLogger(c freeway.LogConfig) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level)) // Config.Validate checked it
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// isTerminal reports whether f is a terminal (a character device), where
// progress is drawn in place rather than printed line by line.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
