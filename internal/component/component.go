// Package component holds what the wiring (internal/freeway) gives every
// component of a process the same way. Each component is
//
//	New(cfg Config, deps Deps) (*T, error)  // validates cfg, binds listeners
//	(*T).Run(ctx context.Context) error     // runs until ctx ends
//
// and its Deps embeds Common beside what only it needs (a dfs, a store,
// a coordinator, a query source). Its Config.Validate reports
// config.FieldErrors at paths relative to its own YAML section
// ("batch_bytes"); the wiring places them under the section
// (config.Under), so a file is still reported at file:line:col.
//
// Common is plain data: the package keeps no state.
package component

import (
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/internal/version"
)

// Common is what every component gets from the wiring. The zero value
// works: Defaults fills what is unset.
type Common struct {
	// Log is the process's logger (nil: discarded); the component adds
	// its "component" attribute.
	Log *slog.Logger
	// Metrics receives the component's Prometheus metrics (nil: not
	// exported).
	Metrics prometheus.Registerer
	// Now is the clock every time the component reads goes through (nil:
	// time.Now), so that windows, rolls and retries are tested without
	// sleeping.
	Now func() time.Time
	// Version is what the component reports as its version (fb303
	// getVersion); "" is version.Get().
	Version string
	// Shared are the per-process things the component's listeners and
	// clients share with the others.
	Shared
}

// Shared is what the components of one process share, created once by
// the wiring. The zero value is a process without TLS, tokens or control
// hooks, each Thrift port with a byte budget of its own.
type Shared struct {
	// Budget bounds the bytes that the calls of all the process's Thrift
	// ports hold at once (nil: a budget of the port's own).
	Budget *thriftsrv.Budget
	// TLS is the process's TLS (nil: none): its listeners speak TLS and
	// its clients dial with it.
	TLS *auth.TLS
	// Auth applies the process's bearer tokens to HTTP endpoints and the
	// Thrift query port (nil: no tokens configured).
	Auth *auth.Guard
	// Control is what fb303's options and control calls and POST
	// /admin/reload and /admin/shutdown do.
	Control Control
	// Advertise is the host other processes reach this one by
	// (--advertise): what a listener bound to every interface publishes
	// in coord, with its port (AdvertisedAddr). "": listeners advertise
	// the address they are bound to.
	Advertise string
}

// Control is what fb303's options and control calls, and the admin HTTP
// endpoints, do; the wiring provides it. A nil func makes its call answer
// that it is not supported here. Reinitialize and Shutdown must return at
// once (they ask the process to act; the server answering them is among
// what stops).
type Control struct {
	// Options returns the effective configuration as flat key -> value
	// strings, without secrets.
	Options      func() map[string]string
	Reinitialize func()
	Shutdown     func()
	// CheckReload, when set, reads and validates what a reload would
	// load, at once: POST /admin/reload answers its error
	// (file:line:col) and does not reload, rather than accept a reload
	// that would only be refused in the log. (fb303 reinitialize is
	// oneway: it has no answer to carry it.)
	CheckReload func() error
	// TokenRequired says an admin token is configured
	// (auth.admin_token_file): fb303's control calls, which cannot carry
	// a token, are then refused from everywhere; POST /admin/reload and
	// /admin/shutdown on an HTTP port do their work.
	TokenRequired bool
}

// Defaults returns c with what is unset filled in: a discarding logger,
// time.Now, version.Get(). Metrics stays nil (not exported).
func (c Common) Defaults() Common {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	c.Version = version.Or(c.Version)
	return c
}

// Logger is c.Log with the component attribute every log line of the
// component carries.
func (c Common) Logger(component string) *slog.Logger {
	l := c.Log
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return l.With("component", component)
}

// OwnMetrics returns a registry of the component's metrics alone, and
// the registerer the component registers them with: it registers each
// collector with that registry and with c.Metrics (when set). fb303's
// getCounters reads the former (scribeapi.Counters) while /metrics
// serves the latter, so that both report the same numbers.
func (c Common) OwnMetrics() (*prometheus.Registry, prometheus.Registerer) {
	own := prometheus.NewRegistry()
	if c.Metrics == nil {
		return own, own
	}
	return own, tee{own, c.Metrics}
}

// tee registers with two registerers.
type tee struct{ own, shared prometheus.Registerer }

func (t tee) Register(c prometheus.Collector) error {
	if err := t.own.Register(c); err != nil {
		return err
	}
	if err := t.shared.Register(c); err != nil {
		t.own.Unregister(c)
		return err
	}
	return nil
}

func (t tee) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := t.Register(c); err != nil {
			panic(err)
		}
	}
}

func (t tee) Unregister(c prometheus.Collector) bool {
	a := t.own.Unregister(c)
	b := t.shared.Unregister(c)
	return a || b
}

// ID is what names this process in leases and logs when a component's
// configuration names none: host-pid.
func ID() string {
	host, _ := os.Hostname()
	return host + "-" + strconv.Itoa(os.Getpid())
}
