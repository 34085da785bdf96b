package calligraphus

import (
	"sync"

	"github.com/cespare/xxhash/v2"
)

// Route says how one category is split into buckets.
type Route struct {
	Buckets int
	// NewKeyFunc returns a function extracting the shard key of a message
	// (not safe for concurrent use; the router pools them). nil: the
	// category has no consuming app, and every entry goes to bucket 0.
	NewKeyFunc func() func(msg []byte) (string, error)
}

// Router maps (category, message) to a bucket: a stable hash of the shard
// key modulo the category's bucket count, the same in every process.
// Entries whose key cannot be read land in bucket 0 rather than nowhere.
type Router struct {
	defaultBuckets int
	routes         map[string]*route
}

type route struct {
	Route
	pool sync.Pool
}

// NewRouter returns a router; categories not in routes get defaultBuckets
// buckets and are written to bucket 0 (no shard key).
func NewRouter(defaultBuckets int, routes map[string]Route) *Router {
	r := &Router{defaultBuckets: max(defaultBuckets, 1), routes: map[string]*route{}}
	for cat, rt := range routes {
		rr := &route{Route: rt}
		if rt.NewKeyFunc != nil {
			rr.pool.New = func() any { return rt.NewKeyFunc() }
		}
		r.routes[cat] = rr
	}
	return r
}

// Buckets is the bucket count of category.
func (r *Router) Buckets(category string) int {
	if rt, ok := r.routes[category]; ok && rt.Buckets > 0 {
		return rt.Buckets
	}
	return r.defaultBuckets
}

// Bucket returns the bucket of msg in category, and false if its shard
// key could not be read (it then goes to bucket 0).
func (r *Router) Bucket(category string, msg []byte) (int, bool) {
	rt, ok := r.routes[category]
	if !ok || rt.NewKeyFunc == nil {
		return 0, true
	}
	n := rt.Buckets
	if n <= 0 {
		n = r.defaultBuckets
	}
	if n == 1 {
		return 0, true
	}
	fn := rt.pool.Get().(func([]byte) (string, error))
	key, err := fn(msg)
	rt.pool.Put(fn)
	if err != nil {
		return 0, false
	}
	return BucketOf(key, n), true
}

// BucketOf is the bucket of an encoded shard key among n.
func BucketOf(key string, n int) int {
	return int(xxhash.Sum64String(key) % uint64(n))
}
