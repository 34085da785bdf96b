// Command freeway runs Freeway: `freeway` (or `freeway all`) runs the whole
// pipeline in one process on embedded backends; `freeway agent`,
// `calligraphus`, `copier`, `puma` and `serving` run one component; `freeway
// config check FILE` validates a configuration.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"sort"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/freeway-dev/freeway/internal/demo"
	"github.com/freeway-dev/freeway/internal/freeway"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "freeway:", err)
		os.Exit(1)
	}
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
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
	root.AddCommand(configCommand(), &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run:   func(cmd *cobra.Command, args []string) { fmt.Fprintln(cmd.OutOrStdout(), "freeway", version()) },
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
		return "the copier: copies published segments to a second dfs"
	case freeway.Puma:
		return "a Puma node: aggregates buckets, checkpoints to the store"
	case freeway.Serving:
		return "the query API over committed state in the store"
	}
	return target
}

func targetCommand(target, use, short string) *cobra.Command {
	var configFile, adminListen string
	var demoOn bool
	var demoRate int
	cmd := &cobra.Command{
		Use:           use,
		Short:         short,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	flags := freeway.RegisterFlags(cmd.Flags(), target)
	cmd.Flags().StringVar(&configFile, "config", "", "YAML configuration file (keys as in examples/freeway.yaml); flags override it")
	cmd.Flags().StringVar(&adminListen, "admin-listen", "", "address of /metrics, /healthz, /readyz for targets without serving (\"off\" disables; default per target, 127.0.0.1:846x)")
	if target == freeway.All {
		cmd.Flags().BoolVar(&demoOn, "demo", false, "send a built-in load (real Apache access-log lines, replayed in a loop at the present time) to the agent")
		cmd.Flags().IntVar(&demoRate, "demo-rate", 200, "lines per second of the demo load")
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		cfg := freeway.DefaultConfig()
		if configFile != "" {
			var err error
			if cfg, err = freeway.LoadFile(configFile); err != nil {
				return err
			}
		}
		flags.Apply(&cfg)
		if err := cfg.Validate(); err != nil {
			return fmt.Errorf("invalid configuration: %w", err)
		}
		cfg.Resolve()
		log := newLogger(cfg.Log)
		p, err := freeway.New(cfg, target, freeway.Options{Version: version(), Log: log, AdminListen: adminListen})
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		log.Info("freeway started", "target", target, "data_dir", cfg.DataDir, "dfs", cfg.DFS, "store", cfg.Store, "coord", cfg.Coord)
		if p.Serving != nil {
			log.Info("query API", "url", "http://"+p.Serving.Addr()+"/")
		}
		if demoOn {
			if p.Agent == nil {
				return errors.New("--demo needs the agent")
			}
			go demo.Run(ctx, p.Agent.Addr(), demoRate, log)
		}
		return p.Run(ctx)
	}
	return cmd
}

func configCommand() *cobra.Command {
	cfg := &cobra.Command{Use: "config", Short: "Work with configuration files"}
	cfg.AddCommand(&cobra.Command{
		Use:          "check FILE",
		Short:        "Validate a configuration file without running anything",
		Args:         cobra.ExactArgs(1),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := freeway.LoadFile(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%d apps)\n", args[0], len(c.Apps))
			return nil
		},
	})
	return cfg
}

func newLogger(c freeway.LogConfig) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
