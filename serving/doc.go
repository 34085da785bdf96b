// Package serving answers queries over Puma's aggregates: an HTTP JSON API
// (GET /api/v1/apps, GET /api/v1/query), the same through Thrift (the Query
// service of thrift/freeway.thrift), health and readiness probes,
// Prometheus metrics, and a small web page.
//
// Place in the data path: the end of it. In `freeway all` it answers from
// the local Puma node's memory (fresh, including uncommitted changes); a
// standalone serving process answers from the store (committed state).
// It keeps no state of its own.
//
// Partial answers. An answer lacking the data of some shards of the
// app's category says so: over HTTP "partial": true and "missing_shards"
// (category, bucket, state recovering|failed|elsewhere, error), over
// Thrift the optional QueryResult fields partial and missing_shards; both
// are left out of a complete answer, which keeps its exact shape. So is
// "truncated" (HTTP and Thrift) when a limit or max_rows cut rows off.
//
// Security. With Deps.TLS both ports speak TLS (internal/auth). With
// Deps.Auth's query tokens, /api/v1/* and the page need "Authorization:
// Bearer <token>" (else 401, WWW-Authenticate: Bearer and a JSON error),
// and a Thrift connection calls authenticate(token) before its queries
// (else QueryError code 401); the token is checked again at every call.
// With its admin token, /metrics, /debug/pprof/ and POST /admin/reload
// and /admin/shutdown need it; without one the admin endpoints answer
// the local host only. /healthz and /readyz are always open, for probes.
// When serving fans out to other Puma nodes (not yet), it dials them with
// Deps.TLS.ClientConfig.
//
// Bad queries. A query string that does not parse, an unknown parameter
// or app, a bad value: 400 (over Thrift a QueryError of code 400) with an
// error quoting at most a clipped part of what was sent; never a 500.
// FuzzQueryHTTP and FuzzQueryThrift hold both ports to that.
//
// Readiness. /readyz answers 200 "ready", or 503 with the reason and one
// line per shard in the way (recovering since when, failed with its error
// and next try, held by nobody). The operator endpoints (/healthz,
// /readyz, /metrics, /debug/pprof/, POST /admin/*) are internal/admin's,
// which the admin listener of the targets without serving mounts too.
package serving
