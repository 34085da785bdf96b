package hbasestore

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/thrift/gen/hbase"
)

const (
	// DefaultPrefix is put before every store table name when the URL
	// names none, so Freeway's tables are easy to tell apart in a shared
	// cluster.
	DefaultPrefix = "freeway_"

	// Family is the one column family of every table; a store column is an
	// HBase qualifier in it. One short family keeps every cell's key small
	// and a row's columns in one store file.
	Family = "f"

	// Versions is the family's VERSIONS. The contract asks for
	// store.MinVersions (3); the two more are headroom for versions written
	// above a committed epoch and not yet purged (an uncommitted checkpoint
	// before a crash, another during recovery). A flush or compaction keeps
	// the newest VERSIONS versions counting those, so without headroom they
	// could push out the very version recovery reads as of.
	Versions = 5

	// DefaultPort is the Thrift2 gateway's default port.
	DefaultPort = "9090"

	defaultPoolSize       = 4
	defaultConnectTimeout = 5 * time.Second
	defaultSocketTimeout  = 60 * time.Second

	// maxIdle is how long an idle connection is reused: under the gateway's
	// hbase.thrift.server.socket.read.timeout (60 s by default), after which
	// it closes the connection.
	maxIdle = 30 * time.Second

	// maxMessage bounds what the client reads: a frame, a message, a string.
	// A hostile or broken peer claiming more is refused before allocation.
	maxMessage = 64 << 20
	// maxContainer bounds the element count of a list read from the wire.
	maxContainer = 1 << 20

	// maxRequest bounds the bytes of one putMultiple or deleteMultiple
	// request. The gateway refuses frames over
	// hbase.regionserver.thrift.framed.max_frame_size_in_mb (2 MB by
	// default) by dropping the connection.
	maxRequest = 1 << 20

	// scanBatch is how many rows one getScannerRows call returns.
	scanBatch = 256

	// Waiting for the master: HBase answers admin calls with
	// PleaseHoldException for a while after its ports open.
	defaultInitWait = 3 * time.Minute
	backoffMin      = 100 * time.Millisecond
	backoffMax      = 5 * time.Second
)

// Store is a store.Store in HBase, reached through its Thrift2 gateway. It
// is safe for concurrent use.
type Store struct {
	cfg    config
	family []byte
	pool   *pool

	// Waiting for an initializing master; tests shorten these.
	initWait, backoffMin, backoffMax time.Duration

	mu     sync.Mutex
	tables map[string]*tableState
}

var _ store.Store = (*Store)(nil)

// Open returns a store for rawURL, hbase://host[:port][/[namespace:]prefix]:
// store table T is HBase table <prefix>T (DefaultPrefix if the URL has no
// path) in the namespace, which must exist (default: HBase's default
// namespace). Query parameters: pool (connections, default 4), timeout
// (socket timeout of a call, default 60s), connect_timeout (default 5s).
//
// Open does not connect: the gateway may still be starting when Freeway
// starts, and each call dials (and redials) as it needs.
func Open(rawURL string) (*Store, error) {
	cfg, err := parseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", rawURL, err)
	}
	tc := &thrift.TConfiguration{
		MaxMessageSize:   maxMessage,
		MaxFrameSize:     maxMessage,
		MaxContainerSize: maxContainer,
		ConnectTimeout:   cfg.connectTimeout,
		SocketTimeout:    cfg.socketTimeout,
	}
	return &Store{
		cfg:        cfg,
		family:     []byte(Family),
		pool:       newPool(cfg.addr, cfg.poolSize, tc, maxIdle),
		initWait:   defaultInitWait,
		backoffMin: backoffMin,
		backoffMax: backoffMax,
		tables:     map[string]*tableState{},
	}, nil
}

func (s *Store) String() string {
	p := s.cfg.prefix
	if s.cfg.namespace != "" {
		p = s.cfg.namespace + ":" + p
	}
	return "hbase://" + s.cfg.addr + "/" + p
}

// Close closes the connections. Calls in flight finish first.
func (s *Store) Close() error {
	s.pool.close()
	return nil
}

// dataName is the table name data calls take: [namespace:]prefix+table.
func (s *Store) dataName(table string) string {
	if s.cfg.namespace != "" {
		return s.cfg.namespace + ":" + s.cfg.prefix + table
	}
	return s.cfg.prefix + table
}

// adminName is the table name admin calls take.
func (s *Store) adminName(table string) *hbase.TTableName {
	ns := s.cfg.namespace
	if ns == "" {
		ns = "default"
	}
	return &hbase.TTableName{Ns: []byte(ns), Qualifier: []byte(s.cfg.prefix + table)}
}

// call runs fn on a pooled connection and wraps its error as
// "hbase <op> <table>: ...". An idempotent call that broke its connection
// (the gateway restarted or dropped it) is retried once on a new one; a
// CheckAndPut is not, since it may have been applied.
func (s *Store) call(ctx context.Context, op, name string, idempotent bool, fn func(context.Context, *hbase.THBaseServiceClient) error) error {
	for attempt := 0; ; attempt++ {
		c, err := s.pool.get(ctx)
		if err != nil {
			return fmt.Errorf("hbase %s %s: %w", op, name, err)
		}
		healthy, err := c.do(ctx, fn)
		s.pool.put(c, healthy)
		if err == nil {
			return nil
		}
		if !healthy && idempotent && attempt == 0 && ctx.Err() == nil {
			continue
		}
		return fmt.Errorf("hbase %s %s: %w", op, name, remote(err))
	}
}
