package puma

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strconv"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/httpsrv"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/store"
)

// Partial states: what a Puma node answers serving's fan-out with
// (puma.listen, POST PartialPath). A partial is the query's rows merged
// over some shards of its app's category, before order_by and limit:
// rows of several partials over disjoint shards merge exactly (counts and
// sums add, min and max combine, avg is a sum and a count, the sketches
// merge), and MergePartials applies order and limit to the merge, so
// that the answer is the one a node holding every shard would give.

// PartialPath is the path of the partial-state endpoint on puma.listen.
const PartialPath = "/internal/v1/partial"

// PartialRequest asks a node for the partial state of a query over some
// buckets of the app's category. It is the JSON body of a POST to
// PartialPath.
type PartialRequest struct {
	App    string `json:"app"`
	FromMs int64  `json:"from_ms"`
	ToMs   int64  `json:"to_ms"`
	// GroupBy: null for the app's full key, [] for no key (Query.GroupBy).
	GroupBy    []string            `json:"group_by"`
	AllWindows bool                `json:"all_windows,omitempty"`
	WindowMs   int64               `json:"window_ms,omitempty"`
	Where      map[string][]string `json:"where,omitempty"`
	Buckets    []int               `json:"buckets"`
}

// Query is the request as a query (without order and limit, which apply
// to the merge).
func (r PartialRequest) Query() Query {
	return Query{App: r.App, FromMs: r.FromMs, ToMs: r.ToMs, GroupBy: r.GroupBy, AllWindows: r.AllWindows, WindowMs: r.WindowMs, Where: r.Where}
}

// NewPartialRequest is the partial request of q over buckets.
func NewPartialRequest(q Query, buckets []int) PartialRequest {
	return PartialRequest{App: q.App, FromMs: q.FromMs, ToMs: q.ToMs, GroupBy: q.GroupBy, AllWindows: q.AllWindows, WindowMs: q.WindowMs, Where: q.Where, Buckets: buckets}
}

// Partial is a query's rows merged over some shards, before order and
// limit: the answer to a PartialRequest.
type Partial struct {
	App string `json:"app"`
	// Buckets are the shards whose data it holds (of those asked: a shard
	// not running here is left out and listed in Missing).
	Buckets []int `json:"buckets"`
	// Missing lists the shards asked for whose data it lacks (recovering,
	// failed, elsewhere), and those whose data it holds but which lack
	// segments (incomplete).
	Missing     []MissingShard `json:"missing,omitempty"`
	AsOfMs      int64          `json:"as_of_ms,omitempty"`
	WatermarkMs int64          `json:"watermark_ms,omitempty"`
	Rows        []PartialRow   `json:"rows"`
}

// PartialRow is one merged row: its window (the row's window start, 0
// with all windows), its key (the query's key values, apps.EncodeKey),
// the range of windows it covers, and its cell in the stored form
// (format byte, fixed slots, variable states; see doc.go).
type PartialRow struct {
	Window int64  `json:"w"`
	Key    []byte `json:"k"`
	Start  int64  `json:"s"`
	End    int64  `json:"e"`
	Cell   []byte `json:"c"`
}

// MissingShard is encoded with lowercase names in a partial.
func (m MissingShard) MarshalJSON() ([]byte, error) {
	return json.Marshal(missingJSON{m.Category, m.Bucket, string(m.State), m.Error})
}

// UnmarshalJSON decodes MarshalJSON's form.
func (m *MissingShard) UnmarshalJSON(b []byte) error {
	var j missingJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*m = MissingShard{Category: j.Category, Bucket: j.Bucket, State: ShardState(j.State), Error: j.Error}
	return nil
}

type missingJSON struct {
	Category string `json:"category"`
	Bucket   int    `json:"bucket"`
	State    string `json:"state"`
	Error    string `json:"error,omitempty"`
}

func (m *merger) partial(app string) *Partial {
	out := &Partial{App: app, Rows: make([]PartialRow, 0, len(m.rows))}
	for k, r := range m.rows {
		out.Rows = append(out.Rows, PartialRow{Window: k.window, Key: []byte(k.key), Start: r.start, End: r.end, Cell: m.pl.layout.encodeCell(r.cell)})
	}
	return out
}

// CheckQuery reports whether q is a query of app that can be answered: a
// BadQueryError when it is not.
func CheckQuery(app *apps.App, q Query) error {
	_, err := newPlan(app, q)
	return err
}

// Partial answers q over the given buckets of its app's category from
// memory, as Query does, before order and limit.
func (p *Puma) Partial(ctx context.Context, q Query, buckets []int) (*Partial, error) {
	app, ok := p.apps[q.App]
	if !ok {
		return nil, badQuery("unknown app %q", ratelog.Clip(q.App))
	}
	pl, err := newPlan(app, q)
	if err != nil {
		return nil, err
	}
	cat := app.Spec.Category
	for _, b := range buckets {
		if b < 0 || b >= p.deps.Buckets(cat) {
			return nil, badQuery("bucket %d is not a bucket of category %s", b, cat)
		}
	}
	if buckets == nil {
		buckets = []int{} // none asked: none answered, not all
	}
	shards, missing := p.queryShards(pl, buckets, q.FromMs)
	var answered []int
	m := newMerger(pl)
	var watermark int64
	for _, s := range shards {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		s.snapshot(func(tables []*table) {
			for _, t := range tables {
				if t.app == app {
					watermark = max(watermark, t.watermark)
				}
			}
		})
		// Evicted windows come from the store (evict.go): a shard that
		// cannot read them is left out whole, and said to be.
		if err := s.mergeShard(ctx, pl, m); err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return nil, cerr
			}
			missing = append(missing, MissingShard{Category: cat, Bucket: s.bucket, State: StateFailed, Error: clipError(err.Error())})
			continue
		}
		answered = append(answered, s.bucket)
		if bound := p.maxPartialRows(); m.count() > bound {
			return nil, partialTooLarge(app.Name(), m.count(), bound)
		}
	}
	out := m.partial(app.Name())
	out.Buckets, out.Missing, out.WatermarkMs = answered, missing, watermark
	if len(shards) > 0 {
		out.AsOfMs = p.deps.Now().UnixMilli()
	}
	if out.Buckets == nil {
		out.Buckets = []int{}
	}
	return out, nil
}

// PartialBounds bound a partial state built from the store (the shards
// serving's fan-out answers from their committed state), as a Puma
// node's partial and serving's read of it are bounded: Rows its rows
// (puma.max_partial_rows), Bytes its rows' size in the form a node sends
// them (serving.fanout_max_bytes). 0: no bound.
type PartialBounds struct {
	Rows  int
	Bytes int64
}

// Partial answers q over the given buckets from their committed state,
// before order and limit. A shard that cannot be read is listed in
// Missing as failed; one that never committed holds nothing. A partial
// over bounds is refused whole with a TooLargeError: the rows are
// counted as they are read, the bytes as each shard's rows are read (by
// the stored size of a row's first cell: no more than the row takes
// once merged, as a merge only grows a cell, but for a topk whose items
// are replaced by shorter ones, so that a partial within a few bytes of
// the bound may be refused) and, exactly, once the partial is encoded.
func (c *Committed) Partial(ctx context.Context, q Query, buckets []int, bounds PartialBounds) (*Partial, error) {
	app, ok := c.apps[q.App]
	if !ok {
		return nil, badQuery("unknown app %q", ratelog.Clip(q.App))
	}
	pl, err := newPlan(app, q)
	if err != nil {
		return nil, err
	}
	cat := app.Spec.Category
	m := newMerger(pl)
	var answered []int
	var missing []MissingShard
	var asOf, watermark int64
	var taken int64 // bytes of m's rows as absorbed: a lower bound of their encoded size
	for _, b := range buckets {
		st, err := c.boundedShard(ctx, pl, b, m, bounds, &taken)
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return nil, cerr
			}
			if IsTooLarge(err) {
				return nil, err
			}
			missing = append(missing, MissingShard{Category: cat, Bucket: b, State: StateFailed, Error: clipError(err.Error())})
			continue
		}
		answered = append(answered, b)
		if st.Epoch != 0 {
			if asOf == 0 || st.CommitMs < asOf {
				asOf = st.CommitMs
			}
			watermark = max(watermark, st.Watermarks[app.Name()])
		}
		if why := st.incomplete(pl, q.FromMs); why != "" {
			missing = append(missing, MissingShard{Category: cat, Bucket: b, State: StateIncomplete, Error: why})
		}
	}
	out := m.partial(app.Name())
	if bounds.Bytes > 0 {
		if n := out.rowBytes(); n > bounds.Bytes {
			return nil, committedTooLarge(app.Name(), n, bounds.Bytes)
		}
	}
	out.Buckets, out.Missing, out.AsOfMs, out.WatermarkMs = answered, missing, asOf, watermark
	if out.Buckets == nil {
		out.Buckets = []int{}
	}
	return out, nil
}

// boundedShard merges the committed cells of bucket b into m, all or
// nothing (as Committed.shard), within bounds: it fails with a
// TooLargeError, and stops reading, once the shard's rows alone, or m's
// with them, are over a bound. taken is the encoded size of m's rows
// as they were absorbed, which it adds to.
func (c *Committed) boundedShard(ctx context.Context, pl *plan, b int, m *merger, bounds PartialBounds, taken *int64) (commitState, error) {
	cat := pl.app.Spec.Category
	var (
		st    commitState
		fresh *merger
	)
	for try := 1; ; try++ {
		_, at, _, err := readCommit(ctx, c.st, c.table, cat, b)
		if err != nil || at.Epoch == 0 {
			return at, err
		}
		st = at
		if fresh, err = c.scanShard(ctx, pl, b, st, bounds); err != nil {
			return st, err
		}
		// The store keeps store.MinVersions versions of a cell at least.
		// Each commit after st's may have added one to a cell the shard
		// kept changing, and an attempt still writing (or failed, until
		// the next one purges it) one more: once they are as many, the
		// version as of st may have been pushed out of a cell before the
		// scan reached it, and the scan passed it by as if there were no
		// cell at all. Read again as of the newer commit.
		_, now, _, err := readCommit(ctx, c.st, c.table, cat, b)
		if err != nil {
			return st, err
		}
		if commitsAfter(now, st.Epoch)+1 < store.MinVersions {
			break
		}
		if try == committedReadTries {
			return st, fmt.Errorf("read %s/%d as of its commit: it committed too often while its cells were read, %d times in a row (the store keeps %d versions of a cell)",
				cat, b, committedReadTries, store.MinVersions)
		}
	}
	for k, r := range fresh.rows {
		mine, ok := m.rows[k]
		if !ok {
			m.rows[k] = r
			if bounds.Bytes > 0 {
				*taken += PartialRow{Window: k.window, Key: []byte(k.key), Start: r.start, End: r.end, Cell: pl.layout.encodeCell(r.cell)}.wireBytes()
			}
			continue
		}
		mine.start, mine.end = min(mine.start, r.start), max(mine.end, r.end)
		pl.layout.merge(mine.cell, r.cell)
	}
	switch {
	case bounds.Rows > 0 && m.count() > bounds.Rows:
		return st, partialTooLarge(pl.app.Name(), m.count(), bounds.Rows)
	case bounds.Bytes > 0 && *taken > bounds.Bytes:
		return st, committedTooLarge(pl.app.Name(), *taken, bounds.Bytes)
	}
	return st, nil
}

// commitsAfter is how many commits up to c's were made after epoch: the
// epochs in between that c does not list as aborted (more when the list
// has forgotten old ranges).
func commitsAfter(c commitState, epoch int64) int64 {
	n := c.Epoch - epoch
	for _, r := range c.Aborted {
		if lo, hi := max(r[0], epoch+1), min(r[1], c.Epoch); lo <= hi {
			n -= hi - lo + 1
		}
	}
	return n
}

// committedReadTries is how many times boundedShard reads a shard that
// commits too often for its read to hold (each read as of the newest
// commit) before it gives up and the shard is listed as failed.
const committedReadTries = 3

// scanShard reads bucket b's committed cells as of st into a merger of
// their own, within bounds (boundedShard).
func (c *Committed) scanShard(ctx context.Context, pl *plan, b int, st commitState, bounds PartialBounds) (*merger, error) {
	cat := pl.app.Spec.Category
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fresh := newMerger(pl)
	var over error
	var bytes int64 // of fresh's rows, by their first cell's stored size
	prefix := appPrefix(cat, b, pl.app, fingerprint(pl.app, pl.srcMs))
	// Not the windows retention dropped under the committed watermark:
	// their rows are left until a delete after the commit is done.
	wm, ok := st.Watermarks[pl.app.Name()]
	if !ok {
		wm = noHorizon
	}
	start := max(pl.from, retainedFrom(pl.app, wm, pl.srcMs))
	if start >= pl.to {
		return fresh, nil
	}
	from, to := prefix+windowKey(start), prefix+windowKey(pl.to)
	err := scanCommitted(sctx, c.st, c.table, prefix, from, to, st, pl.layout, func(w int64, key string, cl cell, stored int64) {
		if over != nil {
			return
		}
		n := fresh.count()
		fresh.add(w, key, cl)
		if fresh.count() == n {
			return
		}
		bytes += int64(len(key)) + stored
		switch {
		case bounds.Rows > 0 && fresh.count() > bounds.Rows:
			over = partialTooLarge(pl.app.Name(), fresh.count(), bounds.Rows)
		case bounds.Bytes > 0 && bytes > bounds.Bytes:
			over = committedTooLarge(pl.app.Name(), bytes, bounds.Bytes)
		}
		if over != nil {
			cancel() // the rest of the shard is not read
		}
	})
	if over != nil {
		return nil, over
	}
	if err != nil {
		return nil, fmt.Errorf("scan %s/%d: %w", cat, b, err)
	}
	return fresh, nil
}

// wireBytes is the size of r in a partial's JSON, with the comma that
// separates it from the next.
func (r PartialRow) wireBytes() int64 {
	n := len(`{"w":,"k":,"s":,"e":,"c":""},`) + digits(r.Window) + digits(r.Start) + digits(r.End) + base64.StdEncoding.EncodedLen(len(r.Cell))
	if r.Key == nil {
		n += len("null")
	} else {
		n += 2 + base64.StdEncoding.EncodedLen(len(r.Key))
	}
	return int64(n)
}

// digits is the length of n in decimal.
func digits(n int64) int { return len(strconv.FormatInt(n, 10)) }

// rowBytes is the size of the partial's rows in its JSON.
func (p *Partial) rowBytes() int64 {
	var n int64
	for _, r := range p.Rows {
		n += r.wireBytes()
	}
	return n
}

// MergePartials merges partial states of q over disjoint shards and
// answers q from the merge: order_by and limit apply to the merged rows.
// The answer's Missing is the partials' (sorted by bucket); its AsOf the
// oldest time and the highest watermark of the partials with data.
func MergePartials(app *apps.App, q Query, parts []*Partial) (*Result, error) {
	pl, err := newPlan(app, q)
	if err != nil {
		return nil, err
	}
	m := newMerger(pl)
	var missing []MissingShard
	var asOf AsOf
	for _, part := range parts {
		for _, row := range part.Rows {
			c, err := pl.layout.decodeCell(row.Cell)
			if err != nil {
				return nil, fmt.Errorf("partial state of app %s: %w", app.Name(), err)
			}
			k := cellKey{window: row.Window, key: string(row.Key)}
			r, ok := m.rows[k]
			if !ok {
				m.rows[k] = &mrow{start: row.Start, end: row.End, cell: c}
				continue
			}
			r.start, r.end = min(r.start, row.Start), max(r.end, row.End)
			pl.layout.merge(r.cell, c)
		}
		missing = append(missing, part.Missing...)
		if part.AsOfMs != 0 && (asOf.TimeMs == 0 || part.AsOfMs < asOf.TimeMs) {
			asOf.TimeMs = part.AsOfMs
		}
		asOf.WatermarkMs = max(asOf.WatermarkMs, part.WatermarkMs)
	}
	res, err := m.result()
	if err != nil {
		return nil, err
	}
	sort.SliceStable(missing, func(i, j int) bool { return missing[i].Bucket < missing[j].Bucket })
	res.Missing, res.AsOf = missing, asOf
	return res, nil
}

// maxPartialRequest bounds the body of a partial request.
const maxPartialRequest = 1 << 20

// PartialHandler serves PartialPath: a POSTed PartialRequest, answered
// with the Partial of this node's shards among those asked (400 with a
// JSON error for a bad request). The wiring mounts it on puma.listen,
// behind the process's query tokens.
func (p *Puma) PartialHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			httpsrv.WriteError(w, http.StatusMethodNotAllowed, "POST a partial request")
			return
		}
		var req PartialRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxPartialRequest))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			p.bm.partialRefused.Inc()
			p.rejectLog.Warn("puma bad partial request", "bad partial request", "err", ratelog.Clip(err.Error()), "remote", r.RemoteAddr)
			httpsrv.WriteError(w, http.StatusBadRequest, "bad partial request: "+ratelog.Clip(err.Error()))
			return
		}
		slices.Sort(req.Buckets)
		req.Buckets = slices.Compact(req.Buckets)
		part, err := p.Partial(r.Context(), req.Query(), req.Buckets)
		if err != nil {
			var bad *BadQueryError
			if errors.As(err, &bad) {
				p.bm.partialRefused.Inc()
				httpsrv.WriteError(w, http.StatusBadRequest, bad.Msg)
				return
			}
			var large *TooLargeError
			if errors.As(err, &large) {
				p.bm.partialLarge.Inc()
				p.rejectLog.Warn("puma partial too large", "partial state over puma.max_partial_rows refused", "err", large.Msg, "remote", r.RemoteAddr)
				httpsrv.WriteError(w, StatusTooLarge, large.Msg)
				return
			}
			httpsrv.WriteError(w, http.StatusInternalServerError, err.Error())
			return
		}
		p.bm.partialServed.Inc()
		httpsrv.WriteJSON(w, http.StatusOK, part)
	})
}
