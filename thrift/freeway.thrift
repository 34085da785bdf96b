// Freeway's query service: the Thrift twin of serving's HTTP JSON API
// (GET /api/v1/apps, GET /api/v1/query). Same semantics, same errors.

namespace go freeway

struct Aggregate {
  1: string name,
  2: string fn,
  3: optional string field,
}

struct AppInfo {
  1: string name,
  2: string category,
  // Window length in seconds.
  3: i64 window_seconds,
  4: list<string> group_by,
  5: list<Aggregate> aggregates,
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
}

struct Row {
  1: i64 window_start_unix,
  2: i64 window_end_unix,
  3: map<string, string> key,
  4: map<string, double> values,
}

struct QueryResult {
  1: string app,
  2: list<Row> rows,
}

exception QueryError {
  1: string message,
}

service Query {
  list<AppInfo> apps(),
  QueryResult query(1: QueryRequest req) throws (1: QueryError err),
}
