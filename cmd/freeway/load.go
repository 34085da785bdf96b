package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/freeway-dev/freeway/internal/loadgen"
)

// loadCommand is `freeway load`: the load generator (internal/loadgen)
// pointed at any Scribe agent or writer.
func loadCommand() *cobra.Command {
	var (
		o                      loadgen.Options
		count, start           string
		out, caFile, cert, key string
		dryRun, asJSON         bool
		progress               time.Duration
	)
	o.Lines = loadgen.Lines{Format: loadgen.JSON}
	cmd := &cobra.Command{
		Use:   "load",
		Short: "Send a load of log lines to a Scribe agent and report the rate and Log latencies",
		Long: `Sends log lines to a Scribe server (a Freeway agent, a writer, any stock
Scribe server) over several connections, in Log calls of a batch size,
flat out or at a rate, for a count of lines or a duration. It prints the
acknowledged entries/s and MB/s, Log call latency percentiles, TRY_LATER
answers (the batch is sent again) and errors (a call without an answer:
its entries are of unknown fate and not sent again).

Lines are made from --seed: line i is always the same bytes, so --out
writes a file other systems can read. JSON lines carry ts (Unix ms), key
and value (0-999), padded to --size with other fields; regex lines are
Apache access-log lines whose path is the key and byte count the value,
parsed by this pattern (time layout "02/Jan/2006:15:04:05 -0700"):

  ` + loadgen.RegexPattern + `

Event times are the time a batch is made, or with --start fixed: line i
is at start + i × step.`,
		Example: `  freeway load --count 2M                         # 2 M lines flat out to 127.0.0.1:1463
  freeway load --rate 50000 --duration 1m --batch 100 --conns 4
  freeway load --count 2M --start now --step 300us --out lines.json
  freeway load --count 2M --start 1764583200 --out lines.json --dry-run   # the file only`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if o.Count, err = loadgen.ParseCount(count); err != nil {
				return fmt.Errorf("--count: %w", err)
			}
			if o.Lines.Start, err = loadgen.ParseStart(start, time.Now()); err != nil {
				return fmt.Errorf("--start: %w", err)
			}
			if err := o.Lines.Validate(); err != nil {
				return err
			}
			if dryRun {
				if out == "" || o.Count == 0 {
					return errors.New("--dry-run writes --count lines to --out: set both")
				}
				n, err := writeLines(o, out)
				if err != nil {
					return err
				}
				// Say what was written: a silent success leaves the
				// user to check the file to know anything happened.
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					_ = enc.Encode(map[string]any{"lines": o.Count, "bytes": n, "file": out})
				} else {
					_, _ = fmt.Fprintf(cmd.OutOrStdout(), "wrote %d lines (%d bytes) to %s; nothing sent (--dry-run)\n", o.Count, n, out)
				}
				return nil
			}
			if o.Count == 0 && o.Duration == 0 {
				o.Duration = 10 * time.Second
			}
			if caFile != "" || cert != "" {
				if o.TLS, err = loadgen.ClientTLS(o.Addr, caFile, cert, key); err != nil {
					return err
				}
			}
			if out != "" {
				f, err := os.Create(out)
				if err != nil {
					return err
				}
				defer func() { _ = f.Close() }() // on an early return; closed and checked after the run
				o.Out = f
			}
			ld, err := loadgen.New(o)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			stopHUP := keepOnHUP(func() {
				_, _ = fmt.Fprintln(cmd.ErrOrStderr(), "SIGHUP: freeway load has nothing to reload; it goes on (stop it with Ctrl-C or SIGTERM)")
			})
			defer stopHUP()
			if progress > 0 {
				go report(ctx, cmd, ld, progress)
			}
			sum, err := ld.Run(ctx)
			if f, ok := o.Out.(*os.File); ok {
				// --out is the record of what was acknowledged: a lost
				// close error would make it silently short.
				if cerr := f.Close(); cerr != nil && err == nil {
					err = fmt.Errorf("close %s: %w", out, cerr)
				}
			}
			// The summary goes to stdout; if that is gone there is no one
			// to tell, and the exit status still says how the run went.
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				_ = enc.Encode(sum)
			} else {
				_, _ = fmt.Fprint(cmd.OutOrStdout(), sum.Text())
			}
			switch {
			case err != nil:
				return err
			case sum.Entries == 0:
				return fmt.Errorf("no entry was acknowledged by %s", o.Addr)
			case sum.Unknown > 0:
				return fmt.Errorf("%d entries of unknown fate (calls without an answer)", sum.Unknown)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Addr, "addr", "127.0.0.1:1463", "Scribe server to send to (host:port)")
	f.StringVar(&o.Category, "category", "load", "Scribe category of the entries")
	f.StringVar(&o.Lines.Format, "format", loadgen.JSON, "line format: json or regex")
	f.IntVar(&o.Lines.Size, "size", 176, "bytes per line, padded (0: the shortest lines of the format)")
	f.IntVar(&o.Lines.Keys, "keys", 10000, "distinct keys")
	f.BoolVar(&o.Lines.Sequential, "sequential-keys", false, "line i takes key i mod --keys (every key once in --keys lines) instead of a random one")
	f.Uint64Var(&o.Lines.Seed, "seed", 1, "seed of the lines' keys, values and filler")
	f.StringVar(&start, "start", "", "event time of line 0 (RFC 3339, Unix seconds, or now = this minute); default: the time each batch is made")
	f.DurationVar(&o.Lines.Step, "step", time.Millisecond, "event time between consecutive lines (with --start)")
	f.Int64Var(&o.First, "first", 0, "index of the first line")
	f.IntVar(&o.Conns, "conns", 8, "connections, each with one call in flight")
	f.IntVar(&o.Batch, "batch", 1000, "entries per Log call")
	f.Float64Var(&o.Rate, "rate", 0, "entries a second over all connections, sent a whole --batch at a time (0: flat out)")
	f.StringVar(&count, "count", "0", "lines to send (2000000, 2M, 10k); 0: until --duration")
	f.DurationVar(&o.Duration, "duration", 0, "how long to send (default 10s when --count is 0)")
	f.DurationVar(&o.Timeout, "timeout", 30*time.Second, "connect and call timeout; a server not reached for this long ends the run")
	f.StringVar(&out, "out", "", "write the acknowledged lines to this file, one a line")
	f.BoolVar(&dryRun, "dry-run", false, "write --count lines to --out without sending them")
	f.BoolVar(&asJSON, "json", false, "print the summary as JSON")
	f.DurationVar(&progress, "progress", 0, "print the acknowledged count and rate this often on stderr (0: never)")
	f.StringVar(&caFile, "tls-ca", "", "connect over TLS, trusting this CA file (PEM)")
	f.StringVar(&cert, "tls-cert", "", "client certificate (PEM) for TLS, with --tls-key")
	f.StringVar(&key, "tls-key", "", "client key (PEM) for TLS")
	return cmd
}

// writeLines writes o.Count lines to path and returns its size in bytes.
func writeLines(o loadgen.Options, path string) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	if err := o.Lines.Write(f, o.First, o.Count, time.Now().UnixMilli(), nil); err != nil {
		_ = f.Close() // the write error is the one reported
		return 0, err
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close() // the stat error is the one reported
		return 0, err
	}
	return st.Size(), f.Close()
}

func report(ctx context.Context, cmd *cobra.Command, ld *loadgen.Loader, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	start, last, lastN := time.Now(), time.Now(), int64(0)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			n := ld.Acked()
			_, _ = fmt.Fprintf(cmd.ErrOrStderr(), "%v: %d entries acknowledged, %.0f/s\n", now.Sub(start).Round(time.Second), n, float64(n-lastN)/now.Sub(last).Seconds())
			last, lastN = now, n
		}
	}
}
