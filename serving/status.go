package serving

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/freeway-dev/freeway/internal/httpsrv"
	"github.com/freeway-dev/freeway/puma"
)

// StatusJSON is the answer of GET /api/v1/status: what runs in this
// process and how far behind it is.
type StatusJSON struct {
	// Time is the server's clock when the status was taken.
	Time    string `json:"time"`
	Version string `json:"version,omitempty"`
	// Components are the components of this process.
	Components []string `json:"components"`
	// Modes are the query modes served here; DefaultMode is the one of a
	// query without mode.
	Modes       []string `json:"modes"`
	DefaultMode string   `json:"default_mode"`
	// ShardsFrom says where Shards come from: "puma" (this process's
	// Puma node: states, lag), "store" (the committed state: the last
	// commit of each shard), or "" (neither is known here).
	ShardsFrom string      `json:"shards_from,omitempty"`
	Shards     []ShardJSON `json:"shards"`
	// PumaNodes, for a standalone serving that fans out and so shows the
	// shards from the store: the Puma nodes asked for their shards' read
	// stalls (read_stalled), and those that did not answer.
	PumaNodes *PumaNodesJSON `json:"puma_nodes,omitempty"`
	// Apps sums the shards of each app's category.
	Apps []AppStatusJSON `json:"apps"`
	// Reports are the other components' states, each under its name
	// (agent, calligraphus, copier); encoded inline.
	Reports map[string]any `json:"-"`
}

// ShardJSON is a Puma shard (a bucket of a category) in /api/v1/status.
type ShardJSON struct {
	Category string `json:"category"`
	Bucket   int    `json:"bucket"`
	// State is recovering, running, failed or elsewhere here; empty when
	// read from the store.
	State string `json:"state,omitempty"`
	// Owner is the Puma node holding it (from the store: the node of the
	// last commit).
	Owner string `json:"owner,omitempty"`
	Since string `json:"since,omitempty"`
	// Position is what it has read; CommittedPosition what it committed.
	Position          string `json:"position,omitempty"`
	CommittedPosition string `json:"committed_position,omitempty"`
	Epoch             int64  `json:"epoch,omitempty"`
	Entries           uint64 `json:"entries,omitempty"`
	// LagSegments counts published segments not yet read (running here).
	LagSegments *int64 `json:"lag_segments,omitempty"`
	// LastCommit and CheckpointAgeSeconds: when it last committed, and
	// how long ago.
	LastCommit           string   `json:"last_commit,omitempty"`
	CheckpointAgeSeconds *float64 `json:"checkpoint_age_seconds,omitempty"`
	// Watermarks is the highest event time aggregated, by app.
	Watermarks map[string]string `json:"watermarks,omitempty"`
	// Incomplete says which lines the shard's state lacks (segments
	// retention deleted, or gone, before it read them): answers over
	// their time list the shard as incomplete.
	Incomplete string `json:"incomplete,omitempty"`
	Error      string `json:"error,omitempty"`
	Failures   int    `json:"failures,omitempty"`
	RetryAt    string `json:"retry_at,omitempty"`
	// ReadStalled lists its readings (its own, its backfills') that fail
	// now and are retried where they are (running here): a segment the
	// dfs cannot deliver, by kind (checksum, permission, io).
	ReadStalled []ReadStallJSON `json:"read_stalled,omitempty"`
}

// ReadStallJSON is a run of failed reads of a shard's bucket.
type ReadStallJSON struct {
	// Reader is "live" (the shard's reading) or "backfill:<app>".
	Reader string `json:"reader"`
	// Since is when the run began, StalledSeconds how long ago;
	// Failures counts its failed attempts.
	Since          string  `json:"since"`
	StalledSeconds float64 `json:"stalled_seconds"`
	Failures       int     `json:"failures"`
	// Segment and Offset: where the reader is stuck.
	Segment string `json:"segment"`
	Offset  int64  `json:"offset"`
	// Kind is checksum, permission or io; Error the last error.
	Kind  string `json:"kind"`
	Error string `json:"error"`
}

// AppStatusJSON is how far behind an app is, over its category's shards.
type AppStatusJSON struct {
	Name     string `json:"name"`
	Category string `json:"category"`
	// Shards of the category, and how many of them run (here) or
	// committed (from the store).
	Shards        int `json:"shards"`
	ShardsRunning int `json:"shards_running"`
	// Watermark is the highest event time aggregated by any shard;
	// BehindSeconds is how far it is behind the server's clock.
	Watermark     string   `json:"watermark,omitempty"`
	BehindSeconds *float64 `json:"behind_seconds,omitempty"`
	// LagSegments sums the shards' unread segments.
	LagSegments *int64 `json:"lag_segments,omitempty"`
	// CheckpointAgeSeconds is the oldest of the shards' last commits.
	CheckpointAgeSeconds *float64 `json:"checkpoint_age_seconds,omitempty"`
	// ShardsReadStalled counts the shards whose reading (or a
	// backfill's) fails now (running here; ShardJSON.ReadStalled).
	ShardsReadStalled int `json:"shards_read_stalled,omitempty"`
}

// readStallReporter is a source that asks the Puma nodes for their
// shards' read stalls: serving's fan-out.
type readStallReporter interface {
	ReadStalls(ctx context.Context) (map[string][]puma.ReadStall, int, []NodeMissing)
}

// shardStatuser is a source that knows its shards: a Puma node or the
// store's reader.
type shardStatuser interface {
	ShardStatuses(ctx context.Context) []puma.Status
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func (s *Server) status(ctx context.Context) StatusJSON {
	now := s.deps.Now()
	out := StatusJSON{Time: rfc3339(now), Version: s.deps.Version, Components: s.deps.Components, DefaultMode: s.defaultMode,
		Shards: []ShardJSON{}, Apps: []AppStatusJSON{}, Reports: map[string]any{}}
	if out.Components == nil {
		out.Components = []string{"serving"}
	}
	if s.fresh != nil {
		out.Modes = append(out.Modes, modeFresh)
	}
	if s.store != nil {
		out.Modes = append(out.Modes, modeCommitted)
	}
	var shards []puma.Status
	if ss, ok := s.fresh.(shardStatuser); ok {
		out.ShardsFrom, shards = "puma", ss.ShardStatuses(ctx)
	} else if ss, ok := s.store.(shardStatuser); ok {
		out.ShardsFrom, shards = "store", ss.ShardStatuses(ctx)
		if rr, ok := s.fresh.(readStallReporter); ok {
			stalls, asked, missing := rr.ReadStalls(ctx)
			if missing == nil {
				missing = []NodeMissing{}
			}
			out.PumaNodes = &PumaNodesJSON{Asked: asked, Missing: missing}
			for i, st := range shards {
				shards[i].ReadStalls = stalls[st.Category+"/"+strconv.Itoa(st.Bucket)]
			}
		}
	}
	type sum struct {
		n, running int
		stalled    int
		lag        int64
		hasLag     bool
		oldest     time.Time
	}
	byCat := map[string]*sum{}
	for _, st := range shards {
		j := ShardJSON{Category: st.Category, Bucket: st.Bucket, State: string(st.State), Owner: st.Owner, Since: rfc3339(st.Since),
			Position: st.Position, CommittedPosition: st.Committed, Epoch: st.Epoch, Entries: st.Entries,
			LastCommit: rfc3339(st.LastCommit), Incomplete: st.Incomplete, Error: st.Error, Failures: st.Failures, RetryAt: rfc3339(st.RetryAt)}
		c := byCat[st.Category]
		if c == nil {
			c = &sum{}
			byCat[st.Category] = c
		}
		c.n++
		for _, rs := range st.ReadStalls {
			j.ReadStalled = append(j.ReadStalled, ReadStallJSON{Reader: rs.Reader, Since: rfc3339(rs.Since), StalledSeconds: now.Sub(rs.Since).Seconds(),
				Failures: rs.Failures, Segment: rs.Segment, Offset: rs.Offset, Kind: rs.Kind, Error: rs.Error})
		}
		if len(st.ReadStalls) > 0 {
			c.stalled++
		}
		if st.State == puma.StateRunning || (st.State == "" && st.Epoch != 0) {
			c.running++
		}
		if st.State == puma.StateRunning {
			lag := st.LagSegments
			j.LagSegments = &lag
			c.lag += lag
			c.hasLag = true
		}
		if !st.LastCommit.IsZero() {
			age := now.Sub(st.LastCommit).Seconds()
			j.CheckpointAgeSeconds = &age
			if c.oldest.IsZero() || st.LastCommit.Before(c.oldest) {
				c.oldest = st.LastCommit
			}
		}
		for app, wm := range st.Watermarks {
			if j.Watermarks == nil {
				j.Watermarks = map[string]string{}
			}
			j.Watermarks[app] = rfc3339(time.UnixMilli(wm))
		}
		out.Shards = append(out.Shards, j)
	}
	apps := s.deps.Source.Apps()
	for _, a := range apps {
		j := AppStatusJSON{Name: a.Name(), Category: a.Spec.Category}
		if c := byCat[a.Spec.Category]; c != nil {
			j.Shards, j.ShardsRunning, j.ShardsReadStalled = c.n, c.running, c.stalled
			if c.hasLag {
				lag := c.lag
				j.LagSegments = &lag
			}
			if !c.oldest.IsZero() {
				age := now.Sub(c.oldest).Seconds()
				j.CheckpointAgeSeconds = &age
			}
		}
		var wm int64
		for _, st := range shards {
			if st.Category == a.Spec.Category {
				wm = max(wm, st.Watermarks[a.Name()])
			}
		}
		if wm > 0 {
			j.Watermark = rfc3339(time.UnixMilli(wm))
			behind := now.Sub(time.UnixMilli(wm)).Seconds()
			j.BehindSeconds = &behind
		}
		out.Apps = append(out.Apps, j)
	}
	sort.Slice(out.Apps, func(i, j int) bool { return out.Apps[i].Name < out.Apps[j].Name })
	for _, p := range s.deps.Status {
		out.Reports[p.Name] = p.Report(ctx)
	}
	return out
}

// MarshalJSON puts the components' reports after the other fields, by
// name (a report never replaces a field: New refuses such names).
func (j StatusJSON) MarshalJSON() ([]byte, error) {
	type plain StatusJSON
	b, err := json.Marshal(plain(j))
	if err != nil || len(j.Reports) == 0 {
		return b, err
	}
	b = b[:len(b)-1] // the closing brace
	for _, k := range slices.Sorted(maps.Keys(j.Reports)) {
		name, _ := json.Marshal(k)
		r, err := json.Marshal(j.Reports[k])
		if err != nil {
			return nil, fmt.Errorf("encode the status of %s: %w", k, err)
		}
		b = append(append(append(append(b, ','), name...), ':'), r...)
	}
	return append(b, '}'), nil
}

// statusFields are the names of StatusJSON's own fields, which no
// StatusProvider may take.
var statusFields = []string{"time", "version", "components", "modes", "default_mode", "shards_from", "shards", "puma_nodes", "apps"}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout.D())
	defer cancel()
	httpsrv.WriteJSON(w, http.StatusOK, s.status(ctx))
}
