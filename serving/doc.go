// Package serving answers queries over Puma's aggregates: an HTTP JSON API
// (GET /api/v1/apps, GET /api/v1/query), the same through Thrift (the Query
// service of thrift/freeway.thrift), health and readiness probes,
// Prometheus metrics, and a small web page.
//
// Place in the data path: the end of it. In `freeway all` it answers from
// the local Puma node's memory (fresh, including uncommitted changes); a
// standalone serving process answers from the store (committed state).
// It keeps no state of its own.
package serving
