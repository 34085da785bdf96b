// Freeway's query service: the Thrift twin of serving's HTTP JSON API
// (GET /api/v1/apps, GET /api/v1/query). Same semantics, same errors.
//
// Tokens. When the server has query tokens (auth.query_tokens_file), a
// connection calls authenticate(token) once, before its first query; the
// token holds for the connection's later calls and is checked again at
// each of them (a token removed from the file stops working). A call
// without a valid token is refused with QueryError {code: 401}. Without
// tokens configured authenticate is accepted and ignored, and clients
// built before it keep working unchanged.

namespace go freeway

struct Aggregate {
  1: string name,
  // count, sum, min, max, avg, count_distinct, topk, percentile, first, last.
  2: string fn,
  3: optional string field,
  // topk: how many values it answers.
  4: optional i32 k,
  // percentile: the quantiles it answers, in order.
  5: optional list<double> quantiles,
}

struct AppInfo {
  1: string name,
  2: string category,
  // Window length in seconds: the shortest of the app's windows.
  3: i64 window_seconds,
  4: list<string> group_by,
  5: list<Aggregate> aggregates,
  // Every window length of the app, in seconds, shortest first (new:
  // servers before it did not send it; their apps have window_seconds only).
  6: optional list<i64> windows_seconds,
}

struct QueryRequest {
  1: string app,
  // Unix seconds; a window is included when its start is in [from_unix, to_unix).
  2: i64 from_unix,
  3: i64 to_unix,
  // Unset: the app's full key. Set and empty: merge all keys.
  4: optional list<string> group_by,
  // Merge every window in the range into one row per key.
  5: bool all_windows,
  // 0 means no limit.
  6: i32 limit,
  // Fields 7 to 9 are new; a client built before them sends none, and
  // gets the answers it got before.
  // Keep only the cells whose key has, for each group key named, one of
  // the values listed (HTTP: where=key:value, repeated).
  7: optional map<string, list<string>> where,
  // "AGG", "AGG:desc" or "AGG:asc": order the rows by that aggregate
  // (largest first unless :asc; rows without a value last); with limit,
  // the top N.
  8: optional string order_by,
  // "fresh" (a Puma node's memory) or "committed" (the store); unset:
  // the server's default.
  9: optional string mode,
  // The length of the rows' windows, in seconds (new; a client built
  // before it sends none and gets the shortest): unset or 0 for the app's
  // shortest window; else one of the app's windows, or a multiple of one,
  // whose windows are then rolled up. Not with all_windows.
  10: optional i64 window_seconds,
}

// A percentile's answer at one quantile.
struct Quantile {
  1: double quantile,
  2: double value,
}

// One value of a topk answer: count overestimates the value's true count
// by at most error.
struct TopItem {
  1: string value,
  2: i64 count,
  3: i64 error,
}

// An aggregate's answer that is not a number; one field is set.
union Value {
  // first or last, of a value that is text.
  1: string text,
  // percentile: the quantiles asked, in order.
  2: list<Quantile> quantiles,
  // topk: at most k values, highest count first.
  3: list<TopItem> top,
}

// values holds the answers that are numbers (count, sum, min, max, avg,
// count_distinct, and first and last of numbers), as it always has; an
// aggregate with no value (min of nothing) is absent from it. Field 5 is
// new and holds the other answers (percentile, topk, first and last of
// text): set only when a row has one, so that a client built before it
// reads the numbers as before and never sees it.
struct Row {
  1: i64 window_start_unix,
  2: i64 window_end_unix,
  3: map<string, string> key,
  4: map<string, double> values,
  5: optional map<string, Value> structured_values,
}

// A shard whose data an answer lacks: it is still loading on the node that
// answered (recovering), its last attempt failed (failed), or another node
// holds it (elsewhere).
struct MissingShard {
  1: string category,
  2: i32 bucket,
  // "recovering", "failed" or "elsewhere".
  3: string state,
  // Why, when known (the error of a failed shard).
  4: optional string error,
}

// How recent an answer's data is (HTTP: "as_of").
struct AsOf {
  // "fresh" or "committed": where the answer came from.
  1: string mode,
  // The time of the data, Unix ms: fresh, when the shards' memory was
  // read; committed, the oldest commit time of the shards that answered.
  // Unset when no shard answered with data.
  2: optional i64 time_ms,
  // The app's watermark, Unix ms: the highest event time aggregated by
  // the shards that answered. Unset before the first line.
  3: optional i64 watermark_ms,
}

// Fields 3 to 6 are new: a client built before them reads the rows only.
// Fields 3 to 5 are set only when true or non-empty, as in the HTTP answer.
struct QueryResult {
  1: string app,
  2: list<Row> rows,
  // The limit (or the server's max_rows) cut rows off.
  3: optional bool truncated,
  // Some shards of the app's category are missing from the answer: the
  // rows hold only the data of the others.
  4: optional bool partial,
  5: optional list<MissingShard> missing_shards,
  6: optional AsOf as_of,
  // Shards ("<category>/<bucket>") answered from their committed state:
  // their Puma node did not answer serving's fan-out in time, or none
  // owned them. Unset when every shard answered fresh.
  7: optional list<string> stale_shards,
}

exception QueryError {
  1: string message,
  // 400 for a bad query (also when unset, as servers before it sent),
  // 401 for a missing or invalid token, 422 for a query whose partial
  // state is over a bound (puma.max_partial_rows,
  // serving.fanout_max_bytes: narrow it), 500 for a server error.
  2: optional i32 code,
}

service Query {
  // Throws only for a missing or invalid token (code 401).
  list<AppInfo> apps() throws (1: QueryError err),
  QueryResult query(1: QueryRequest req) throws (1: QueryError err),
  // Gives the connection a token of auth.query_tokens_file; throws
  // QueryError {code: 401} for a token that is not valid.
  void authenticate(1: string token) throws (1: QueryError err),
}
