package freeway

import (
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/httpsrv"
	"github.com/freeway-dev/freeway/puma"
	"github.com/freeway-dev/freeway/serving"
)

// pumaListener binds puma.listen (nil, "" when it is not set): the
// partial-state endpoint serving's fan-out asks, behind the process's TLS
// and query tokens. It returns the server, the address it advertises in
// layout.PumaMembers, and the slot the node's handler goes in once the
// node exists (the node needs the address first).
func (p *Process) pumaListener() (*httpsrv.Server, string, *atomic.Value, error) {
	addr := p.cfg.Puma.Listen
	if addr == "" {
		return nil, "", nil, nil
	}
	var partial atomic.Value // http.Handler: the node's (puma.Handler)
	node := p.shared.Auth.Query(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, ok := partial.Load().(http.Handler)
		if !ok {
			httpsrv.WriteError(w, http.StatusServiceUnavailable, "puma is starting")
			return
		}
		h.ServeHTTP(w, r)
	}))
	mux := http.NewServeMux()
	mux.Handle(puma.PartialPath, node)
	mux.Handle(puma.AppsPath, node)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpsrv.WriteError(w, http.StatusNotFound, "not found: this is a Puma node's partial-state port ("+puma.PartialPath+", "+puma.AppsPath+")")
	})
	srv, err := httpsrv.Listen(addr, mux, httpsrv.Options{Name: "puma", Log: p.log.With("component", "puma"), Metrics: p.reg,
		Limits: httpsrv.Limits{MaxConnections: 256}, TLS: p.shared.TLS.ServerConfig()})
	if err != nil {
		return nil, "", nil, fmt.Errorf("listen for partial-state queries on %s: %w (set --puma.listen)", addr, err)
	}
	adv, err := component.AdvertisedAddr(srv.Listener().Addr(), p.cfg.Advertise)
	if err != nil {
		_ = srv.Listener().Close() // the advertise error is the one to report
		return nil, "", nil, err
	}
	return srv, adv, &partial, nil
}

// fanout is the fresh source of a standalone serving process in a split
// deployment: the Puma nodes, asked through coord.
func (p *Process) fanout(committed *puma.Committed) (*serving.Fanout, error) {
	co, err := p.coord()
	if err != nil {
		return nil, err
	}
	token, err := auth.LoadPresented(p.cfg.Auth.QueryTokensFile, p.log.With("component", "serving"))
	if err != nil {
		return nil, fmt.Errorf("read query tokens for the fan-out: %w", err)
	}
	return serving.NewFanout(serving.FanoutDeps{
		Coord: co, Committed: committed, Apps: p.apps, Buckets: p.res.BucketsOf,
		Timeout: p.cfg.Serving.FanoutTimeout.D(), MaxBytes: int64(p.cfg.Serving.FanoutMaxBytes), MaxPartialRows: p.cfg.Puma.MaxPartialRows, TLS: p.shared.TLS, Token: token,
		Log: p.log, Metrics: p.reg,
	}), nil
}
