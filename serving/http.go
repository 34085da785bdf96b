package serving

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/httpsrv"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/puma"
)

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

func (s *Server) instrument(name string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := s.deps.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h(rec, r)
		s.reqs.WithLabelValues(name, strconv.Itoa(rec.code)).Inc()
		s.lat.WithLabelValues(name).Observe(s.deps.Now().Sub(start).Seconds())
	})
}

// AppJSON describes an app in /api/v1/apps.
type AppJSON struct {
	Name          string          `json:"name"`
	Category      string          `json:"category"`
	Format        string          `json:"format"`
	Window        string          `json:"window"` // the shortest of Windows
	WindowSeconds int64           `json:"window_seconds"`
	Windows       []string        `json:"windows"` // every window length, shortest first
	GroupBy       []string        `json:"group_by"`
	Where         string          `json:"where,omitempty"`
	Aggregates    []AggregateJSON `json:"aggregates"`
	// MaxCells is the app's own bound on its cells in a Puma node's
	// memory; absent when it has none. Lines refused for want of room
	// are counted in Dropped as max_cells.
	MaxCells int `json:"max_cells,omitempty"`
	// Dropped and Rejected are what the app did not aggregate on this
	// node since its shards started here: records by reason, and the last
	// few lines of each reason. Only a Puma node knows them (not the
	// store): absent when serving answers from the store.
	Dropped  map[string]uint64 `json:"dropped,omitempty"`
	Rejected []RejectedJSON    `json:"rejected,omitempty"`
	// Memory is the app's cells in a Puma node's memory and what was
	// evicted to the store; absent when serving answers from the store.
	Memory *MemoryJSON `json:"memory,omitempty"`
	// State is "live"; "backfilling" while a Puma node builds the app
	// (added, or its state's shape changed) from the segments in the
	// dfs, with Backfill its progress; "recovering" while a node has not
	// been over its buckets once yet, or a bucket of its category is
	// recovering or failed there (whether it has a backfill to run is
	// known only once it has recovered); absent from the store.
	State    string        `json:"state,omitempty"`
	Backfill *BackfillJSON `json:"backfill,omitempty"`
}

// BackfillJSON is the progress of an app's backfill on a Puma node.
type BackfillJSON struct {
	Shards       int   `json:"shards"`        // shards building it
	SegmentsRead int64 `json:"segments_read"` // by their backfills, since they started here
	SegmentsLeft int64 `json:"segments_left"` // published, not read yet
}

// stateSource is a source that knows whether its apps are live: a Puma
// node.
type stateSource interface {
	AppState(app string) (puma.AppState, bool)
}

// MemoryJSON is an app's cells in a Puma node's memory (puma.AppMemory).
type MemoryJSON struct {
	Cells          int64   `json:"cells"`
	Bytes          int64   `json:"bytes"`
	BytesPerCell   float64 `json:"bytes_per_cell"`
	EvictedWindows uint64  `json:"evicted_windows"`
	EvictedCells   uint64  `json:"evicted_cells"`
	// EvictedBefore: windows that end at or before it are answered from
	// the store (RFC 3339); absent when none was evicted.
	EvictedBefore string `json:"evicted_before,omitempty"`
}

// memorySource is a source that holds cells in memory: a Puma node.
type memorySource interface {
	Memory(app string) (puma.AppMemory, bool)
}

// RejectedJSON is a line an app did not aggregate.
type RejectedJSON struct {
	Reason string `json:"reason"`
	Error  string `json:"error"`
	Line   string `json:"line"` // clipped
	Bucket int    `json:"bucket"`
	At     string `json:"at"` // when Puma read it, RFC 3339
}

// rejectionSource is a source that keeps what its apps did not aggregate:
// a Puma node.
type rejectionSource interface {
	Rejections(app string) (puma.Rejections, bool)
}

// AggregateJSON describes one aggregate.
type AggregateJSON struct {
	Name      string    `json:"name"`
	Fn        string    `json:"fn"`
	Field     string    `json:"field,omitempty"`
	K         int       `json:"k,omitempty"`         // topk
	Quantiles []float64 `json:"quantiles,omitempty"` // percentile
}

func describe(a *apps.App) AppJSON {
	j := AppJSON{
		Name: a.Name(), Category: a.Spec.Category, Format: a.Spec.Format,
		Window: msDuration(a.WindowMs), WindowSeconds: a.WindowMs / 1000,
		GroupBy: append([]string{}, a.Spec.GroupBy...), Where: a.Spec.Where, MaxCells: a.Spec.MaxCells,
	}
	for _, ms := range a.WindowsMs {
		j.Windows = append(j.Windows, msDuration(ms))
	}
	for _, ag := range a.Aggs {
		j.Aggregates = append(j.Aggregates, AggregateJSON{Name: ag.Name, Fn: ag.Fn.Name, Field: ag.Field, K: ag.Params.K, Quantiles: ag.Params.Quantiles})
	}
	return j
}

// msDuration formats ms as a config duration: "1m", "1h", "7d".
func msDuration(ms int64) string {
	return config.Duration(time.Duration(ms) * time.Millisecond).String()
}

// appReporter is a source that asks the Puma nodes what they know of
// the apps: serving's fan-out in a split deployment.
type appReporter interface {
	AppReports(ctx context.Context) (map[string]puma.AppReport, int, []NodeMissing)
}

// PumaNodesJSON, in /api/v1/apps of a standalone serving that fans out,
// says whose reports the apps' state, memory and rejections are: the
// Puma nodes asked, and those that did not answer (their shards are in
// none of those figures).
type PumaNodesJSON struct {
	Asked   int           `json:"asked"`
	Missing []NodeMissing `json:"missing"`
}

func (s *Server) handleApps(w http.ResponseWriter, r *http.Request) {
	var out []AppJSON
	var reports map[string]puma.AppReport
	var nodes *PumaNodesJSON
	if ar, ok := s.deps.Source.(appReporter); ok {
		rep, asked, missing := ar.AppReports(r.Context())
		if missing == nil {
			missing = []NodeMissing{}
		}
		reports, nodes = rep, &PumaNodesJSON{Asked: asked, Missing: missing}
	}
	rs, _ := s.deps.Source.(rejectionSource)
	for _, a := range s.deps.Source.Apps() {
		j := describe(a)
		if rep, ok := reports[a.Name()]; ok {
			j.report(rep)
		}
		if rs != nil {
			if rej, ok := rs.Rejections(a.Name()); ok {
				j.rejections(rej)
			}
		}
		if ss, ok := s.deps.Source.(stateSource); ok {
			if st, ok := ss.AppState(a.Name()); ok {
				j.state(st)
			}
		}
		if ms, ok := s.deps.Source.(memorySource); ok {
			if m, ok := ms.Memory(a.Name()); ok {
				j.memory(m)
			}
		}
		out = append(out, j)
	}
	if out == nil {
		out = []AppJSON{}
	}
	body := map[string]any{"apps": out}
	if nodes != nil {
		body["puma_nodes"] = nodes
	}
	httpsrv.WriteJSON(w, http.StatusOK, body)
}

// report sets what the Puma nodes reported of the app.
func (j *AppJSON) report(rep puma.AppReport) {
	j.rejections(rep.Rejections)
	j.state(rep.State)
	j.memory(rep.Memory)
}

func (j *AppJSON) rejections(rej puma.Rejections) {
	j.Dropped = rej.Dropped
	for _, x := range rej.Samples {
		j.Rejected = append(j.Rejected, RejectedJSON{Reason: x.Reason, Error: x.Error, Line: x.Line, Bucket: x.Bucket, At: x.At.UTC().Format(time.RFC3339Nano)})
	}
}

func (j *AppJSON) state(st puma.AppState) {
	j.State = st.State
	if st.BackfillShards > 0 {
		j.Backfill = &BackfillJSON{Shards: st.BackfillShards, SegmentsRead: st.SegmentsRead, SegmentsLeft: st.SegmentsLeft}
	}
}

func (j *AppJSON) memory(m puma.AppMemory) {
	j.Memory = &MemoryJSON{Cells: m.Cells, Bytes: m.Bytes, BytesPerCell: m.BytesPerCell, EvictedWindows: m.EvictedWindows, EvictedCells: m.EvictedCells}
	if m.EvictedBeforeMs != 0 {
		j.Memory.EvictedBefore = time.UnixMilli(m.EvictedBeforeMs).UTC().Format(time.RFC3339Nano)
	}
}

// RowJSON is one row of /api/v1/query.
type RowJSON struct {
	WindowStart string            `json:"window_start"`
	WindowEnd   string            `json:"window_end"`
	Key         map[string]string `json:"key"`
	// Values: a number, a string (first, last of text), an object of
	// quantiles (percentile), a list of {value, count, error} (topk), or
	// null.
	Values map[string]any `json:"values"`
}

// ResultJSON is the answer of /api/v1/query. Partial and MissingShards
// are set only when shards of the app's category are missing from the
// answer, so that a complete answer keeps its shape.
type ResultJSON struct {
	App           string             `json:"app"`
	Rows          []RowJSON          `json:"rows"`
	Truncated     bool               `json:"truncated,omitempty"`
	Partial       bool               `json:"partial,omitempty"`
	MissingShards []MissingShardJSON `json:"missing_shards,omitempty"`
	// StaleShards ("<category>/<bucket>") were answered from their
	// committed state: their Puma node did not answer a fan-out in time,
	// or none owned them. Absent when every shard answered fresh.
	StaleShards []string `json:"stale_shards,omitempty"`
	AsOf        AsOfJSON `json:"as_of"`
}

// AsOfJSON says how recent an answer's data is (puma.AsOf): the mode it
// was answered in, the time of its data and the app's watermark (both
// RFC 3339, left out when there is none yet).
type AsOfJSON struct {
	Mode      string `json:"mode"`
	Time      string `json:"time,omitempty"`
	Watermark string `json:"watermark,omitempty"`
}

func asOfJSON(mode string, a puma.AsOf) AsOfJSON {
	j := AsOfJSON{Mode: mode}
	if a.TimeMs != 0 {
		j.Time = time.UnixMilli(a.TimeMs).UTC().Format(time.RFC3339Nano)
	}
	if a.WatermarkMs != 0 {
		j.Watermark = time.UnixMilli(a.WatermarkMs).UTC().Format(time.RFC3339Nano)
	}
	return j
}

// MissingShardJSON is a shard whose data an answer lacks.
type MissingShardJSON struct {
	Category string `json:"category"`
	Bucket   int    `json:"bucket"`
	// State is "recovering", "failed" or "elsewhere".
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

func (s *Server) handleQuery(w http.ResponseWriter, r *http.Request) {
	// Not r.URL.Query(): it drops the pairs that do not parse (a bad
	// %-escape, a ';'), and the query would run without them.
	params, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		httpsrv.WriteError(w, http.StatusBadRequest, "bad query string: "+ratelog.Clip(err.Error()))
		return
	}
	req, err := s.parseQuery(params)
	if err != nil {
		httpsrv.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	q := req.q
	res, mode, err := s.query(r.Context(), q, req.mode)
	if err != nil {
		var bad *puma.BadQueryError
		if errors.As(err, &bad) {
			httpsrv.WriteError(w, http.StatusBadRequest, bad.Msg)
			return
		}
		var large *puma.TooLargeError
		if errors.As(err, &large) {
			httpsrv.WriteError(w, puma.StatusTooLarge, large.Msg)
			return
		}
		s.log.Error("query failed", "app", q.App, "err", err)
		httpsrv.WriteError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := ResultJSON{App: res.App, Rows: make([]RowJSON, 0, len(res.Rows)), Truncated: res.Truncated, Partial: res.Partial(), StaleShards: res.StaleShards, AsOf: asOfJSON(mode, res.AsOf)}
	for _, m := range res.Missing {
		out.MissingShards = append(out.MissingShards, MissingShardJSON{Category: m.Category, Bucket: m.Bucket, State: string(m.State), Error: m.Error})
	}
	for _, row := range res.Rows {
		out.Rows = append(out.Rows, RowJSON{
			WindowStart: time.UnixMilli(row.WindowStartMs).UTC().Format(time.RFC3339),
			WindowEnd:   time.UnixMilli(row.WindowEndMs).UTC().Format(time.RFC3339),
			Key:         row.Key,
			Values:      row.Values,
		})
	}
	httpsrv.WriteJSON(w, http.StatusOK, out)
}
