package serving

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/agg"
	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/puma"
	"github.com/freeway-dev/freeway/thrift/gen/freeway"
)

// thriftHandler serves the Query service of freeway.thrift.
type thriftHandler struct{ s *Server }

// Codes of QueryError, as the HTTP API's statuses.
var (
	codeBadQuery     = thrift.Int32Ptr(http.StatusBadRequest)
	codeUnauthorized = thrift.Int32Ptr(http.StatusUnauthorized)
	codeInternal     = thrift.Int32Ptr(http.StatusInternalServerError)
	codeTooLarge     = thrift.Int32Ptr(puma.StatusTooLarge)
)

// tokenKey keeps the token a connection authenticated with.
type tokenKey struct{}

// Authenticate gives the connection a query token, checked again at each
// later call (so a token removed from the file stops working). Without
// query tokens configured it is accepted and ignored.
func (h *thriftHandler) Authenticate(ctx context.Context, token string) error {
	if !h.s.deps.Auth.QueryTokens() {
		return nil
	}
	if err := h.s.deps.Auth.CheckQuery(auth.EndpointThriftQuery, token, peer(ctx)); err != nil {
		thriftsrv.SetConnValue(ctx, tokenKey{}, nil)
		return &freeway.QueryError{Message: err.Error(), Code: codeUnauthorized}
	}
	thriftsrv.SetConnValue(ctx, tokenKey{}, token)
	return nil
}

// authorize checks the connection's token, when tokens are configured.
func (h *thriftHandler) authorize(ctx context.Context) error {
	if !h.s.deps.Auth.QueryTokens() {
		return nil
	}
	token, _ := thriftsrv.ConnValue(ctx, tokenKey{}).(string)
	if err := h.s.deps.Auth.CheckQuery(auth.EndpointThriftQuery, token, peer(ctx)); err != nil {
		return &freeway.QueryError{Message: err.Error(), Code: codeUnauthorized}
	}
	return nil
}

func peer(ctx context.Context) string {
	if a, ok := thriftsrv.Peer(ctx); ok {
		return a.String()
	}
	return "unknown"
}

func (h *thriftHandler) Apps(ctx context.Context) ([]*freeway.AppInfo, error) {
	if err := h.authorize(ctx); err != nil {
		return nil, err
	}
	var out []*freeway.AppInfo
	for _, a := range h.s.deps.Source.Apps() {
		info := &freeway.AppInfo{Name: a.Name(), Category: a.Spec.Category, WindowSeconds: a.WindowMs / 1000, GroupBy: append([]string{}, a.Spec.GroupBy...)}
		for _, ms := range a.WindowsMs {
			info.WindowsSeconds = append(info.WindowsSeconds, ms/1000)
		}
		for _, ag := range a.Aggs {
			agg := &freeway.Aggregate{Name: ag.Name, Fn: ag.Fn.Name}
			if ag.Field != "" {
				f := ag.Field
				agg.Field = &f
			}
			if ag.Params.K != 0 {
				agg.K = thrift.Int32Ptr(int32(ag.Params.K))
			}
			if ag.Params.Quantiles != nil {
				agg.Quantiles = append([]float64{}, ag.Params.Quantiles...)
			}
			info.Aggregates = append(info.Aggregates, agg)
		}
		out = append(out, info)
	}
	return out, nil
}

func (h *thriftHandler) Query(ctx context.Context, req *freeway.QueryRequest) (*freeway.QueryResult_, error) {
	if err := h.authorize(ctx); err != nil {
		return nil, err
	}
	if req == nil {
		return nil, &freeway.QueryError{Message: "missing request", Code: codeBadQuery}
	}
	for _, t := range []int64{req.FromUnix, req.ToUnix} {
		if t < -maxUnixSeconds || t > maxUnixSeconds {
			return nil, &freeway.QueryError{Message: fmt.Sprintf("time %d is out of range (Unix seconds within ±%d)", t, int64(maxUnixSeconds)), Code: codeBadQuery}
		}
	}
	if req.FromUnix >= req.ToUnix {
		return nil, &freeway.QueryError{Message: "from must be before to", Code: codeBadQuery}
	}
	q := puma.Query{App: req.App, FromMs: req.FromUnix * 1000, ToMs: req.ToUnix * 1000, GroupBy: req.GroupBy, AllWindows: req.AllWindows, Limit: int(req.Limit)}
	if w := req.GetWindowSeconds(); w != 0 {
		if w < 0 || w > int64(maxWindow/time.Second) {
			return nil, &freeway.QueryError{Message: fmt.Sprintf("window_seconds %d is out of range (1 to %d)", w, int64(maxWindow/time.Second)), Code: codeBadQuery}
		}
		q.WindowMs = w * 1000
	}
	if q.Limit <= 0 || q.Limit > h.s.cfg.MaxRows {
		q.Limit = h.s.cfg.MaxRows
	}
	if len(req.Where) > 0 {
		q.Where = req.Where
		for k, vals := range req.Where {
			if k == "" {
				return nil, &freeway.QueryError{Message: "bad where: an empty group key", Code: codeBadQuery}
			}
			if len(vals) == 0 {
				return nil, &freeway.QueryError{Message: fmt.Sprintf("bad where: no value given for %q", ratelog.Clip(k)), Code: codeBadQuery}
			}
		}
	}
	if req.IsSetOrderBy() {
		var err error
		if q.OrderBy, q.Desc, err = parseOrderBy(req.GetOrderBy()); err != nil {
			return nil, &freeway.QueryError{Message: err.Error(), Code: codeBadQuery}
		}
	}
	mode := req.GetMode()
	if req.IsSetMode() && mode != modeFresh && mode != modeCommitted {
		return nil, &freeway.QueryError{Message: fmt.Sprintf("bad mode %q: want fresh or committed", ratelog.Clip(mode)), Code: codeBadQuery}
	}
	res, mode, err := h.s.query(ctx, q, mode)
	if err != nil {
		var bad *puma.BadQueryError
		if errors.As(err, &bad) {
			return nil, &freeway.QueryError{Message: bad.Msg, Code: codeBadQuery}
		}
		var large *puma.TooLargeError
		if errors.As(err, &large) {
			return nil, &freeway.QueryError{Message: large.Msg, Code: codeTooLarge}
		}
		return nil, &freeway.QueryError{Message: "internal error: " + err.Error(), Code: codeInternal}
	}
	out := &freeway.QueryResult_{App: res.App, Rows: make([]*freeway.Row, 0, len(res.Rows)), AsOf: &freeway.AsOf{Mode: mode}}
	if res.AsOf.TimeMs != 0 {
		out.AsOf.TimeMs = thrift.Int64Ptr(res.AsOf.TimeMs)
	}
	if res.AsOf.WatermarkMs != 0 {
		out.AsOf.WatermarkMs = thrift.Int64Ptr(res.AsOf.WatermarkMs)
	}
	out.StaleShards = res.StaleShards
	// Set only when true, as the HTTP answer omits them when false.
	if res.Truncated {
		out.Truncated = thrift.BoolPtr(true)
	}
	if res.Partial() {
		out.Partial = thrift.BoolPtr(true)
		for _, m := range res.Missing {
			ms := &freeway.MissingShard{Category: m.Category, Bucket: int32(m.Bucket), State: string(m.State)}
			if m.Error != "" {
				ms.Error = thrift.StringPtr(m.Error)
			}
			out.MissingShards = append(out.MissingShards, ms)
		}
	}
	for _, row := range res.Rows {
		r := &freeway.Row{WindowStartUnix: row.WindowStartMs / 1000, WindowEndUnix: row.WindowEndMs / 1000, Key: row.Key, Values: map[string]float64{}}
		for k, v := range row.Values {
			if f, ok := v.(float64); ok {
				r.Values[k] = f
			} else if sv := structuredValue(v); sv != nil {
				if r.StructuredValues == nil {
					r.StructuredValues = map[string]*freeway.Value{}
				}
				r.StructuredValues[k] = sv
			}
		}
		out.Rows = append(out.Rows, r)
	}
	return out, nil
}

// structuredValue is an answer that is not a number, as Row's
// structured_values carry it; nil for no value.
func structuredValue(v any) *freeway.Value {
	switch v := v.(type) {
	case string:
		return &freeway.Value{Text: thrift.StringPtr(v)}
	case agg.Quantiles:
		out := &freeway.Value{Quantiles: make([]*freeway.Quantile, 0, len(v))}
		for _, q := range v {
			out.Quantiles = append(out.Quantiles, &freeway.Quantile{Quantile: q.Q, Value: q.Value})
		}
		return out
	case []agg.TopItem:
		out := &freeway.Value{Top: make([]*freeway.TopItem, 0, len(v))}
		for _, it := range v {
			out.Top = append(out.Top, &freeway.TopItem{Value: it.Value, Count: int64(it.Count), Error: int64(it.Error)})
		}
		return out
	}
	return nil
}
