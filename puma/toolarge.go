package puma

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/freeway-dev/freeway/internal/config"
)

// Bounded partial answers. A partial state is the query's rows before
// order and limit, so a query over many group keys can make one far
// larger than its answer. A node builds no partial of more than
// puma.max_partial_rows rows (checked after each shard's rows are merged,
// before the partial is encoded), and serving's fan-out reads no answer
// of more than serving.fanout_max_bytes; the partial serving builds from
// the store for the shards no node answers for (Committed.Partial) is
// held to both (PartialBounds), and a query answered from the store
// alone (Committed.Query) to the rows bound. Each refuses the whole query
// with a TooLargeError (HTTP 422, Thrift QueryError code 422) rather than
// answering part of it or answering the node's shards from the store.

// DefaultMaxPartialRows is puma.max_partial_rows' default.
const DefaultMaxPartialRows = 1_000_000

// StatusTooLarge is the HTTP status (and Thrift QueryError code) of a
// TooLargeError: the query is well formed, but its answer would be
// larger than the server builds; narrow it (a shorter range, fewer
// group_by keys, where).
const StatusTooLarge = http.StatusUnprocessableEntity

// TooLargeError is a query whose partial state is over a bound
// (puma.max_partial_rows, serving.fanout_max_bytes). What it quotes of
// the query is clipped.
type TooLargeError struct{ Msg string }

func (e *TooLargeError) Error() string { return e.Msg }

// IsTooLarge reports whether err is, or wraps, a TooLargeError.
func IsTooLarge(err error) bool {
	var tl *TooLargeError
	return errors.As(err, &tl)
}

// partialTooLarge is the error of a partial of app over rows rows.
func partialTooLarge(app string, rows, bound int) error {
	return &TooLargeError{Msg: fmt.Sprintf("the query's partial state of app %s has more than %d rows (puma.max_partial_rows; %d so far): narrow the time range, group by fewer keys or filter with where", app, bound, rows)}
}

// committedTooLarge is the error of a partial of app built from the
// store whose rows take more than bound bytes.
func committedTooLarge(app string, bytes, bound int64) error {
	return &TooLargeError{Msg: fmt.Sprintf("the query's partial state of app %s from the store (its shards' nodes did not answer) is over %s (serving.fanout_max_bytes; %s so far): narrow the time range, group by fewer keys or filter with where", app, config.ByteSize(bound), config.ByteSize(bytes))}
}

// maxPartialRows is the node's bound on a partial's rows.
func (p *Puma) maxPartialRows() int {
	if p.cfg.MaxPartialRows > 0 {
		return p.cfg.MaxPartialRows
	}
	return DefaultMaxPartialRows
}
