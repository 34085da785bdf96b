package serving

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/puma"
)

// Fanout answers fresh queries from the Puma nodes of a split
// deployment: it asks the owner of each shard the query needs (the
// holder of the shard's lease, reached at the address it advertises in
// layout.PumaMembers) for the partial state of its shards
// (puma.PartialPath), merges the partials exactly and applies order and
// limit to the merge, so that the answer is the one a single node holding
// every shard gives. A shard whose owner does not answer within the
// timeout, or that nobody owns, is answered from its committed state in
// the store, and named in the answer's StaleShards (HTTP "stale_shards",
// Thrift stale_shards): never silently.
type Fanout struct {
	co        coord.Coord
	committed *puma.Committed
	apps      map[string]*apps.App
	list      []*apps.App
	buckets   func(string) int
	timeout   time.Duration
	token     *auth.Presented
	scheme    string
	client    *http.Client
	log       *slog.Logger
	limiter   *ratelog.Limiter
	maxBytes  int64
	maxRows   int
	stale     prometheus.Counter
	failures  *prometheus.CounterVec // by request: partial, apps
	tooLarge  prometheus.Counter
}

// FanoutDeps are what a fan-out needs.
type FanoutDeps struct {
	Coord     coord.Coord
	Committed *puma.Committed // the store's committed state, for stale shards
	Apps      []*apps.App
	Buckets   func(category string) int
	// Timeout bounds each owner's answer (serving.fanout_timeout; 0:
	// DefaultFanoutTimeout).
	Timeout time.Duration
	// MaxBytes bounds each owner's answer (serving.fanout_max_bytes; 0:
	// DefaultFanoutMaxBytes): a larger one fails the query with a
	// puma.TooLargeError, as a node refusing a partial over
	// puma.max_partial_rows does.
	MaxBytes int64
	// MaxPartialRows bounds the rows of the partial state of the shards
	// answered from the store (puma.max_partial_rows; 0:
	// puma.DefaultMaxPartialRows), as the nodes bound theirs; MaxBytes
	// bounds its size in the form a node sends it.
	MaxPartialRows int
	// TLS dials the owners with TLS (nil: plain HTTP); Token is sent as
	// the bearer token (the first of the process's query tokens file,
	// read again when it changes; nil for none).
	TLS     *auth.TLS
	Token   *auth.Presented
	Log     *slog.Logger
	Metrics prometheus.Registerer
}

// DefaultFanoutTimeout is serving.fanout_timeout's default.
const DefaultFanoutTimeout = 2 * time.Second

// DefaultFanoutMaxBytes is serving.fanout_max_bytes' default.
const DefaultFanoutMaxBytes = 256 << 20

// NewFanout returns a fan-out source.
func NewFanout(d FanoutDeps) *Fanout {
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "serving")
	f := &Fanout{
		co: d.Coord, committed: d.Committed, apps: map[string]*apps.App{}, list: d.Apps, buckets: d.Buckets,
		timeout: d.Timeout, maxBytes: d.MaxBytes, maxRows: d.MaxPartialRows, token: d.Token, scheme: "http", log: log, limiter: ratelog.New(log, time.Minute, 5),
		stale:    prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_serving_stale_shards_total", Help: "Shards answered from their committed state because their owner did not answer in time or none owned them."}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_serving_fanout_failures_total", Help: "Requests to Puma nodes that failed or timed out, by request: partial (a query's partial state; its shards were answered from the store) or apps (the app reports of /api/v1/apps and /api/v1/status, asked at every poll of those pages)."}, []string{"request"}),
		tooLarge: prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_serving_fanout_too_large_total", Help: "Fanned-out queries refused (422) because a partial state, a Puma node's or that of the shards answered from the store, was over puma.max_partial_rows or serving.fanout_max_bytes."}),
	}
	for _, a := range d.Apps {
		f.apps[a.Name()] = a
	}
	if f.timeout <= 0 {
		f.timeout = DefaultFanoutTimeout
	}
	if f.maxBytes <= 0 {
		f.maxBytes = DefaultFanoutMaxBytes
	}
	if f.maxRows <= 0 {
		f.maxRows = puma.DefaultMaxPartialRows
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 16, IdleConnTimeout: 90 * time.Second, ForceAttemptHTTP2: false}
	if d.TLS != nil {
		f.scheme = "https"
		tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			dl := &tls.Dialer{Config: d.TLS.ClientConfig(addr)}
			return dl.DialContext(ctx, network, addr)
		}
	}
	f.client = &http.Client{Transport: tr}
	if d.Metrics != nil {
		d.Metrics.MustRegister(f.stale, f.failures, f.tooLarge)
	}
	return f
}

// holderLookups bounds the shard-lease reads a query has in flight at
// once: ZooKeeper pipelines them on the session's one connection, so a
// query over many buckets waits about one round trip, not one a bucket.
const holderLookups = 16

// holders reads the owner of each of the category's n shard leases, at
// most holderLookups at a time: owners[b] and errs[b] are bucket b's.
func (f *Fanout) holders(ctx context.Context, cat string, n int) ([]string, []error) {
	owners, errs := make([]string, n), make([]error, n)
	sem := make(chan struct{}, holderLookups)
	var wg sync.WaitGroup
	for b := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			owners[b], _, errs[b] = f.co.Holder(ctx, names.ShardLease(cat, b))
		}()
	}
	wg.Wait()
	return owners, errs
}

// Apps lists the apps, sorted by name.
func (f *Fanout) Apps() []*apps.App {
	out := slices.Clone(f.list)
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

// Close releases the idle connections to the owners.
func (f *Fanout) Close() { f.client.CloseIdleConnections() }

// Query answers q from the owners' fresh partial states, and the
// committed state of the shards they do not answer for.
func (f *Fanout) Query(ctx context.Context, q puma.Query) (*puma.Result, error) {
	app, ok := f.apps[q.App]
	if !ok {
		return nil, &puma.BadQueryError{Msg: fmt.Sprintf("unknown app %q", ratelog.Clip(q.App))}
	}
	if err := puma.CheckQuery(app, q); err != nil {
		return nil, err
	}
	cat := app.Spec.Category
	n := f.buckets(cat)
	addrs := map[string]string{}
	members, _, err := f.co.Members(ctx, names.PumaMembers)
	if err != nil {
		f.limiter.Warn("fanout members", "cannot list the puma nodes; answering from the store", "err", err)
	}
	for _, m := range members {
		addrs[m.ID] = string(m.Data)
	}
	owners, errs := f.holders(ctx, cat, n)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	byAddr := map[string][]int{}
	var stale []int
	for b := range n {
		addr := addrs[owners[b]]
		if errs[b] != nil || owners[b] == "" || addr == "" {
			stale = append(stale, b)
			continue
		}
		byAddr[addr] = append(byAddr[addr], b)
	}
	var mu sync.Mutex
	var parts []*puma.Partial
	var tooLarge error // a partial over a bound fails the whole query
	var wg sync.WaitGroup
	for addr, buckets := range byAddr {
		wg.Add(1)
		go func() {
			defer wg.Done()
			part, err := f.ask(ctx, addr, puma.NewPartialRequest(q, buckets))
			mu.Lock()
			defer mu.Unlock()
			if puma.IsTooLarge(err) {
				tooLarge = err
				return
			}
			if err != nil {
				f.failures.WithLabelValues("partial").Inc()
				f.limiter.Warn("fanout "+addr, "puma node did not answer; its shards are answered from the store", "addr", addr, "err", err)
				stale = append(stale, buckets...)
				return
			}
			// Shards asked for but not running there (recovering, say):
			// from the store.
			for _, b := range buckets {
				if !slices.Contains(part.Buckets, b) {
					stale = append(stale, b)
				}
			}
			part.Missing = slices.DeleteFunc(part.Missing, func(m puma.MissingShard) bool { return m.State != puma.StateIncomplete })
			parts = append(parts, part)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if tooLarge != nil {
		f.tooLarge.Inc()
		f.limiter.Warn("fanout too large", "query refused: a puma node's partial state is over its bound", "app", app.Name(), "err", tooLarge)
		return nil, tooLarge
	}
	slices.Sort(stale)
	if len(stale) > 0 {
		part, err := f.committed.Partial(ctx, q, stale, puma.PartialBounds{Rows: f.maxRows, Bytes: f.maxBytes})
		if puma.IsTooLarge(err) {
			f.tooLarge.Inc()
			f.limiter.Warn("fanout too large", "query refused: the partial state of the shards answered from the store is over its bound", "app", app.Name(), "err", err)
			return nil, err
		}
		if err != nil {
			return nil, err
		}
		if len(part.Buckets) == 0 && len(stale) == n {
			return nil, fmt.Errorf("no shard of category %s answers: no puma node answered and the store cannot be read (%s)", cat, part.Missing[0].Error)
		}
		parts = append(parts, part)
		f.stale.Add(float64(len(stale)))
	}
	res, err := puma.MergePartials(app, q, parts)
	if err != nil {
		return nil, err
	}
	for _, b := range stale {
		res.StaleShards = append(res.StaleShards, cat+"/"+strconv.Itoa(b))
	}
	return res, nil
}

// ask asks the node at addr for a partial state, within the timeout.
func (f *Fanout) ask(ctx context.Context, addr string, req puma.PartialRequest) (*puma.Partial, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, f.scheme+"://"+addr+puma.PartialPath, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	if token := f.token.Token(); token != "" {
		hr.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := f.client.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("ask %s for a partial state: %w", addr, err)
	}
	defer func() { _ = resp.Body.Close() }() // read whole, or given up on
	data, err := io.ReadAll(io.LimitReader(resp.Body, f.maxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read partial state from %s: %w", addr, err)
	}
	if resp.StatusCode == puma.StatusTooLarge {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = string(data)
		}
		return nil, &puma.TooLargeError{Msg: "puma node " + addr + ": " + ratelog.Clip(e.Error)}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("partial state from %s: %s: %s", addr, resp.Status, ratelog.Clip(string(data)))
	}
	if int64(len(data)) > f.maxBytes {
		return nil, &puma.TooLargeError{Msg: fmt.Sprintf("the query's partial state from puma node %s is over %s (serving.fanout_max_bytes): narrow the time range, group by fewer keys or filter with where", addr, config.ByteSize(f.maxBytes))}
	}
	var part puma.Partial
	if err := json.Unmarshal(data, &part); err != nil {
		return nil, fmt.Errorf("decode partial state from %s: %w", addr, err)
	}
	if part.App != req.App {
		return nil, errors.New("partial state from " + addr + " is of app " + ratelog.Clip(part.App))
	}
	return &part, nil
}

// NodeMissing is a Puma node whose app report is not in an answer.
type NodeMissing struct {
	Node  string `json:"node"`
	Error string `json:"error"`
}

// AppReports asks every live Puma node (layout.PumaMembers) for its app
// reports (puma.AppsPath), each within the timeout, and merges them
// (puma.MergeAppReports). It returns the merge, how many nodes were
// asked, and those that did not answer, with why: a report that lacks a
// node is never passed off as whole.
func (f *Fanout) AppReports(ctx context.Context) (map[string]puma.AppReport, int, []NodeMissing) {
	reports, asked, missing := f.nodeReports(ctx)
	all := make([][]puma.AppReport, 0, len(reports))
	for _, r := range reports {
		all = append(all, r.Apps)
	}
	return puma.MergeAppReports(all), asked, missing
}

// ReadStalls asks every live Puma node, as AppReports does, for the
// read stalls of its shards (stall.go in puma), and returns them by
// shard ("<category>/<bucket>"), how many nodes were asked, and those
// that did not answer.
func (f *Fanout) ReadStalls(ctx context.Context) (map[string][]puma.ReadStall, int, []NodeMissing) {
	reports, asked, missing := f.nodeReports(ctx)
	out := map[string][]puma.ReadStall{}
	for _, r := range reports {
		for _, rs := range r.ReadStalls {
			k := rs.Category + "/" + strconv.Itoa(rs.Bucket)
			out[k] = append(out[k], rs.ReadStall)
		}
	}
	return out, asked, missing
}

// nodeReports asks every live Puma node for its reports (puma.AppsPath),
// each within the timeout.
func (f *Fanout) nodeReports(ctx context.Context) ([]puma.NodeAppReports, int, []NodeMissing) {
	members, _, err := f.co.Members(ctx, names.PumaMembers)
	if err != nil {
		f.limiter.Warn("fanout members", "cannot list the puma nodes", "err", err)
		return nil, 0, []NodeMissing{{Error: "cannot list the puma nodes: " + ratelog.Clip(err.Error())}}
	}
	var mu sync.Mutex
	var all []puma.NodeAppReports
	var missing []NodeMissing
	var wg sync.WaitGroup
	for _, m := range members {
		addr := string(m.Data)
		if addr == "" {
			mu.Lock()
			missing = append(missing, NodeMissing{Node: m.ID, Error: "the node advertises no address (puma.listen)"})
			mu.Unlock()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			reports, err := f.askApps(ctx, addr)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				f.failures.WithLabelValues("apps").Inc()
				f.limiter.Warn("fanout apps "+addr, "puma node did not report its apps", "node", m.ID, "addr", addr, "err", err)
				missing = append(missing, NodeMissing{Node: m.ID, Error: ratelog.Clip(err.Error())})
				return
			}
			all = append(all, reports)
		}()
	}
	wg.Wait()
	sort.Slice(missing, func(i, j int) bool { return missing[i].Node < missing[j].Node })
	return all, len(members), missing
}

// askApps asks the node at addr for its reports, within the timeout.
func (f *Fanout) askApps(ctx context.Context, addr string) (puma.NodeAppReports, error) {
	var rep puma.NodeAppReports
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, f.scheme+"://"+addr+puma.AppsPath, nil)
	if err != nil {
		return rep, err
	}
	if token := f.token.Token(); token != "" {
		hr.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := f.client.Do(hr)
	if err != nil {
		return rep, fmt.Errorf("ask %s for its app reports: %w", addr, err)
	}
	defer func() { _ = resp.Body.Close() }() // read whole, or given up on
	data, err := io.ReadAll(io.LimitReader(resp.Body, f.maxBytes+1))
	if err != nil {
		return rep, fmt.Errorf("read app reports from %s: %w", addr, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return rep, fmt.Errorf("app reports from %s: %s (a node of an older version has none)", addr, resp.Status)
	case resp.StatusCode != http.StatusOK:
		return rep, fmt.Errorf("app reports from %s: %s: %s", addr, resp.Status, ratelog.Clip(string(data)))
	case int64(len(data)) > f.maxBytes:
		return rep, fmt.Errorf("app reports from %s are over %s (serving.fanout_max_bytes)", addr, config.ByteSize(f.maxBytes))
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		return rep, fmt.Errorf("decode app reports from %s: %w", addr, err)
	}
	return rep, nil
}
