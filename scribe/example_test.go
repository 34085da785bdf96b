package scribe_test

import (
	"context"
	"log/slog"
	"os"
	"os/signal"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/scribe"
)

// An agent on the conventional port, shipping to a local calligraphus and
// following one log file.
func ExampleNew() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg := scribe.DefaultConfig()
	cfg.QueueDir = "/var/lib/freeway/agent"
	cfg.Tail = []scribe.TailConfig{{Path: "/var/log/nginx/access.log", Category: "access"}}
	if err := cfg.Validate(); err != nil {
		log.Error("invalid agent configuration", "err", err)
		return
	}
	a, err := scribe.New(cfg, scribe.Deps{Common: component.Common{Log: log, Metrics: prometheus.NewRegistry()}})
	if err != nil {
		log.Error("cannot start agent", "err", err)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := a.Run(ctx); err != nil {
		log.Error("agent stopped", "err", err)
	}
}
