package calligraphus

import (
	"sync"

	"github.com/cespare/xxhash/v2"

	"github.com/freeway-dev/freeway/internal/layout"
)

// Route says how one category is split into buckets.
type Route struct {
	Buckets int
	// NewKeyFunc returns a function extracting the shard key of a message
	// (not safe for concurrent use; the router pools them). nil: the
	// category has no consuming app, and every entry goes to bucket 0.
	NewKeyFunc func() func(msg []byte) (string, error)
	// JSONFields, for a category of JSON lines: the fields NewKeyFunc
	// reads. The router then reads them itself, in one pass over the line
	// that builds nothing (jsonkey.go), and gets the key NewKeyFunc would
	// give; NewKeyFunc reads only the few lines the scan leaves to it.
	JSONFields []string
}

// Router maps (category, message) to a bucket: a stable hash of the shard
// key modulo the category's bucket count, the same in every process.
// Entries whose key cannot be read land in bucket 0 rather than nowhere.
type Router struct {
	defaultBuckets int
	routes         map[string]*route
}

type route struct {
	buckets int       // resolved: never 0
	keyed   bool      // the key is read (NewKeyFunc set, several buckets)
	readers sync.Pool // *keyReader
}

// keyReader reads the shard keys of one category, for one goroutine at a
// time: the scan where there is one, the full key function, and the
// buffer the scan writes keys into (kept between entries: no allocation
// per entry).
type keyReader struct {
	scan *jsonKey
	full func([]byte) (string, error)
	buf  []byte
}

// NewRouter returns a router; categories not in routes get defaultBuckets
// buckets and are written to bucket 0 (no shard key).
func NewRouter(defaultBuckets int, routes map[string]Route) *Router {
	r := &Router{defaultBuckets: max(defaultBuckets, 1), routes: map[string]*route{}}
	for cat, rt := range routes {
		rr := &route{buckets: rt.Buckets}
		if rr.buckets <= 0 {
			rr.buckets = r.defaultBuckets
		}
		if rt.NewKeyFunc != nil && rr.buckets > 1 {
			rr.keyed = true
			fields := append([]string(nil), rt.JSONFields...)
			rr.readers.New = func() any {
				kr := &keyReader{full: rt.NewKeyFunc()}
				if len(fields) > 0 {
					kr.scan = newJSONKey(fields)
				}
				return kr
			}
		}
		r.routes[cat] = rr
	}
	return r
}

// Buckets is the bucket count of category.
func (r *Router) Buckets(category string) int {
	if rt, ok := r.routes[category]; ok {
		return rt.buckets
	}
	return r.defaultBuckets
}

// Routed returns the categories with a route of their own (consumed by an
// app) and their bucket counts.
func (r *Router) Routed() map[string]int {
	out := make(map[string]int, len(r.routes))
	for cat, rt := range r.routes {
		out[cat] = rt.buckets
	}
	return out
}

// Bucket returns the bucket of msg in category, and false if its shard
// key could not be read (it then goes to bucket 0).
func (r *Router) Bucket(category string, msg []byte) (int, bool) {
	var c routeCursor
	c.router = r
	defer c.release()
	c.use(category)
	return c.bucket(msg)
}

// routeCursor routes the entries of one call. It keeps what it looked up
// for the last category (its route, whether it is valid, a key reader),
// so a run of entries of one category, the usual call, looks the
// category up once. Not safe for concurrent use; release gives its key
// reader back.
type routeCursor struct {
	router   *Router
	seen     bool
	category string
	valid    bool
	rt       *route
	kr       *keyReader
}

// use makes category the cursor's current one; it reports whether the
// category is valid (layout.ValidCategory).
func (c *routeCursor) use(category string) bool {
	if c.seen && category == c.category {
		return c.valid
	}
	c.release()
	c.seen, c.category = true, category
	c.valid = layout.ValidCategory(category)
	c.rt = c.router.routes[category]
	return c.valid
}

// bucket routes msg, of the current category.
func (c *routeCursor) bucket(msg []byte) (int, bool) {
	rt := c.rt
	if rt == nil || !rt.keyed {
		return 0, true
	}
	if c.kr == nil {
		c.kr = rt.readers.Get().(*keyReader)
	}
	return c.kr.bucket(msg, rt.buckets)
}

// buckets is the bucket count of the current category.
func (c *routeCursor) buckets() int {
	if c.rt != nil {
		return c.rt.buckets
	}
	return c.router.defaultBuckets
}

func (c *routeCursor) release() {
	if c.kr != nil {
		c.rt.readers.Put(c.kr)
		c.kr = nil
	}
}

// bucket reads msg's shard key and returns its bucket among n.
func (kr *keyReader) bucket(msg []byte, n int) (int, bool) {
	if kr.scan != nil {
		var r scanResult
		kr.buf, r = kr.scan.appendKey(kr.buf[:0], msg)
		switch r {
		case scanKey:
			return int(xxhash.Sum64(kr.buf) % uint64(n)), true
		case scanInvalid:
			return 0, false
		}
	}
	key, err := kr.full(msg)
	if err != nil {
		return 0, false
	}
	return BucketOf(key, n), true
}

// BucketOf is the bucket of an encoded shard key among n.
func BucketOf(key string, n int) int {
	return int(xxhash.Sum64String(key) % uint64(n))
}
