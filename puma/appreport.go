package puma

import (
	"net/http"
	"slices"
	"sort"

	"github.com/freeway-dev/freeway/internal/httpsrv"
)

// App reports: what a node knows of each app beyond its cells' values,
// its state (live or backfilling, AppState), its memory (Memory) and what
// it did not aggregate (Rejections), for the shards running on it. A
// standalone serving of a split deployment has none of it itself: it asks
// every live node (GET AppsPath on puma.listen, as it asks for partial
// states) and merges the reports (MergeAppReports): counts add, samples
// keep the newest per reason, an app is backfilling if it is on any node.
// A node that does not answer is named by serving, never silently left
// out; what the nodes do not know (shards no node runs now, and what a
// shard counted on a node it has left) is in no report.

// AppsPath is the path of the app-report endpoint on puma.listen.
const AppsPath = "/internal/v1/apps"

// AppReport is an app's state, memory and rejections on one node (or,
// merged, on several).
type AppReport struct {
	App        string     `json:"app"`
	State      AppState   `json:"state"`
	Memory     AppMemory  `json:"memory"`
	Rejections Rejections `json:"rejections"`
}

// NodeAppReports is a node's answer on AppsPath: its app reports, and
// the read stalls of its shards (for a standalone serving's
// /api/v1/status).
type NodeAppReports struct {
	Node       string           `json:"node"`
	Apps       []AppReport      `json:"apps"`
	ReadStalls []ShardReadStall `json:"read_stalls,omitempty"`
}

// ShardReadStall is a read stall of a shard running on the node.
type ShardReadStall struct {
	Category string `json:"category"`
	Bucket   int    `json:"bucket"`
	ReadStall
}

// ShardReadStalls lists the read stalls of the shards running here, by
// shard.
func (p *Puma) ShardReadStalls() []ShardReadStall {
	var out []ShardReadStall
	for _, s := range p.readyShards() {
		for _, rs := range s.readStalls() {
			out = append(out, ShardReadStall{Category: s.category, Bucket: s.bucket, ReadStall: rs})
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Category != out[j].Category {
			return out[i].Category < out[j].Category
		}
		return out[i].Bucket < out[j].Bucket
	})
	return out
}

// AppReports reports every app of the node, sorted by name.
func (p *Puma) AppReports() []AppReport {
	out := make([]AppReport, 0, len(p.apps))
	for name := range p.apps {
		st, _ := p.AppState(name)
		mem, _ := p.Memory(name)
		rej, _ := p.Rejections(name)
		out = append(out, AppReport{App: name, State: st, Memory: mem, Rejections: rej})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].App < out[j].App })
	return out
}

// AppsHandler serves AppsPath: GET, answered with NodeAppReports. The
// wiring mounts it on puma.listen, behind the process's query tokens.
func (p *Puma) AppsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			httpsrv.WriteError(w, http.StatusMethodNotAllowed, "GET the app reports")
			return
		}
		httpsrv.WriteJSON(w, http.StatusOK, NodeAppReports{Node: p.cfg.ID, Apps: p.AppReports(), ReadStalls: p.ShardReadStalls()})
	})
}

// Handler serves both endpoints of puma.listen: PartialPath and AppsPath
// (404 for any other path).
func (p *Puma) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(PartialPath, p.PartialHandler())
	mux.Handle(AppsPath, p.AppsHandler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpsrv.WriteError(w, http.StatusNotFound, "not found: this is a Puma node's port ("+PartialPath+", "+AppsPath+")")
	})
	return mux
}

// MergeAppReports merges the reports of several nodes (over disjoint
// shards) by app: states, memory and dropped counts add up (an app is
// backfilling if it is anywhere, else recovering if it is anywhere;
// EvictedBeforeMs is the lowest), and
// the samples keep the newest SamplesPerReason per reason, reasons in
// Rejections' order. Apps in no report are left out.
func MergeAppReports(nodes [][]AppReport) map[string]AppReport {
	out := map[string]AppReport{}
	for _, reports := range nodes {
		for _, r := range reports {
			m, ok := out[r.App]
			if !ok {
				m = AppReport{App: r.App, State: AppState{State: "live"}, Rejections: Rejections{Dropped: map[string]uint64{}}}
			}
			// Live only if live everywhere; a backfill anywhere says more
			// (its progress) than a shard recovering elsewhere.
			if r.State.State == "backfilling" || r.State.State == "recovering" && m.State.State == "live" {
				m.State.State = r.State.State
			}
			m.State.BackfillShards += r.State.BackfillShards
			m.State.SegmentsRead += r.State.SegmentsRead
			m.State.SegmentsLeft += r.State.SegmentsLeft
			mm, rm := &m.Memory, r.Memory
			mm.Cells += rm.Cells
			mm.Bytes += rm.Bytes
			mm.EvictedWindows += rm.EvictedWindows
			mm.EvictedCells += rm.EvictedCells
			if rm.EvictedBeforeMs != 0 && (mm.EvictedBeforeMs == 0 || rm.EvictedBeforeMs < mm.EvictedBeforeMs) {
				mm.EvictedBeforeMs = rm.EvictedBeforeMs
			}
			for reason, n := range r.Rejections.Dropped {
				m.Rejections.Dropped[reason] += n
			}
			m.Rejections.Samples = append(m.Rejections.Samples, r.Rejections.Samples...)
			out[r.App] = m
		}
	}
	for name, m := range out {
		if m.Memory.Cells > 0 {
			m.Memory.BytesPerCell = float64(m.Memory.Bytes) / float64(m.Memory.Cells)
		}
		m.Rejections.Samples = newestSamples(m.Rejections.Samples)
		out[name] = m
	}
	return out
}

// newestSamples keeps the newest SamplesPerReason samples of each
// reason, reasons in reasonNames' order (others last, by name), newest
// first within a reason.
func newestSamples(in []Rejected) []Rejected {
	rank := func(reason string) int {
		if i := slices.Index(reasonNames[:], reason); i >= 0 {
			return i
		}
		return len(reasonNames)
	}
	sort.SliceStable(in, func(i, j int) bool {
		a, b := in[i], in[j]
		if ra, rb := rank(a.Reason), rank(b.Reason); ra != rb {
			return ra < rb
		}
		if a.Reason != b.Reason {
			return a.Reason < b.Reason
		}
		return a.At.After(b.At)
	})
	var out []Rejected
	kept := map[string]int{}
	for _, r := range in {
		if kept[r.Reason] < SamplesPerReason {
			out = append(out, r)
		}
		kept[r.Reason]++
	}
	return out
}
