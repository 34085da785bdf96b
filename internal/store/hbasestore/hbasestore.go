package hbasestore

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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

// config is what an hbase:// URL says.
type config struct {
	addr           string // host:port of the Thrift2 gateway
	namespace      string // "" is HBase's default namespace
	prefix         string // before every table qualifier
	poolSize       int
	connectTimeout time.Duration
	socketTimeout  time.Duration
}

// parseURL reads hbase://host[:port][/[namespace:]prefix][?pool=N&timeout=D&connect_timeout=D].
func parseURL(rawURL string) (config, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return config{}, err
	}
	if u.Scheme != "hbase" {
		return config{}, fmt.Errorf("scheme %q, want hbase", u.Scheme)
	}
	if u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return config{}, fmt.Errorf("want hbase://host:port[/prefix]")
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return config{}, fmt.Errorf("no host")
	}
	if port == "" {
		port = DefaultPort
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return config{}, fmt.Errorf("bad port %q", port)
	}
	c := config{
		addr:           net.JoinHostPort(host, port),
		prefix:         DefaultPrefix,
		poolSize:       defaultPoolSize,
		connectTimeout: defaultConnectTimeout,
		socketTimeout:  defaultSocketTimeout,
	}
	if p := strings.TrimPrefix(u.Path, "/"); p != "" {
		ns, prefix, hasNS := strings.Cut(p, ":")
		if !hasNS {
			ns, prefix = "", p
		}
		if hasNS && !validNamespace(ns) {
			return config{}, fmt.Errorf("bad namespace %q: letters, digits and '_' only", ns)
		}
		if !validQualifierChars(prefix) || (prefix != "" && !wordChar(prefix[0])) {
			return config{}, fmt.Errorf("bad table prefix %q: letters, digits, '_', '-' and '.', not starting with '-' or '.'", prefix)
		}
		c.namespace, c.prefix = ns, prefix
	}
	for k, vs := range u.Query() {
		v := vs[len(vs)-1]
		switch k {
		case "pool":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 256 {
				return config{}, fmt.Errorf("pool=%q: want 1 to 256 connections", v)
			}
			c.poolSize = n
		case "timeout", "connect_timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return config{}, fmt.Errorf("%s=%q: want a positive duration such as 30s", k, v)
			}
			if k == "timeout" {
				c.socketTimeout = d
			} else {
				c.connectTimeout = d
			}
		default:
			return config{}, fmt.Errorf("unknown parameter %q (known: pool, timeout, connect_timeout)", k)
		}
	}
	return c, nil
}

func wordChar(b byte) bool {
	return b == '_' || '0' <= b && b <= '9' || 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z'
}

func validNamespace(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !wordChar(s[i]) {
			return false
		}
	}
	return true
}

// validQualifierChars: HBase table qualifiers are [a-zA-Z0-9_.-].
func validQualifierChars(s string) bool {
	for i := 0; i < len(s); i++ {
		if !wordChar(s[i]) && s[i] != '-' && s[i] != '.' {
			return false
		}
	}
	return true
}

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

// tableState remembers that a table is known to exist, so the check (an
// admin call through the master) is made once per table and process.
type tableState struct {
	lock  chan struct{} // held while checking or creating the table
	ready atomic.Bool
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

func checkTable(table string) error {
	if table == "" {
		return fmt.Errorf("%w: empty table name", store.ErrInvalid)
	}
	if !validQualifierChars(table) {
		return fmt.Errorf("%w: table name %q: HBase allows letters, digits, '_', '-' and '.'", store.ErrInvalid, table)
	}
	return nil
}

func (s *Store) checkTable(table string) error {
	if err := checkTable(table); err != nil {
		return err
	}
	if s.cfg.prefix == "" && !wordChar(table[0]) {
		return fmt.Errorf("%w: table name %q: HBase table names start with a letter, digit or '_'", store.ErrInvalid, table)
	}
	return nil
}

// maxRow is HBase's limit on a row key's length (it is stored in a short).
const maxRow = math.MaxInt16

func checkRow(row string) error {
	if row == "" {
		return fmt.Errorf("%w: empty row", store.ErrInvalid)
	}
	if len(row) > maxRow {
		return fmt.Errorf("%w: row key of %d bytes, HBase allows %d", store.ErrInvalid, len(row), maxRow)
	}
	return nil
}

func checkCell(c store.Cell) error {
	if c.Row == "" || c.Column == "" {
		return fmt.Errorf("%w: empty row or column", store.ErrInvalid)
	}
	if err := checkRow(c.Row); err != nil {
		return err
	}
	if c.Timestamp < 0 {
		return fmt.Errorf("%w: negative timestamp %d", store.ErrInvalid, c.Timestamp)
	}
	if c.Timestamp == math.MaxInt64 {
		// HBase's LATEST_TIMESTAMP: the region server would replace it
		// with its clock.
		return fmt.Errorf("%w: timestamp %d is HBase's \"latest\" marker", store.ErrInvalid, c.Timestamp)
	}
	return nil
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

// admin is call for admin operations, retried with a bounded backoff while
// the master is initializing.
func (s *Store) admin(ctx context.Context, op, name string, fn func(context.Context, *hbase.THBaseServiceClient) error) error {
	deadline := time.Now().Add(s.initWait)
	delay := s.backoffMin
	for {
		err := s.call(ctx, op, name, true, fn)
		if err == nil || !masterStarting(err) || time.Now().Add(delay).After(deadline) {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("hbase %s %s: %w (while the master was initializing)", op, name, ctx.Err())
		}
		delay = min(2*delay, s.backoffMax)
	}
}

func (s *Store) tableState(table string) *tableState {
	s.mu.Lock()
	defer s.mu.Unlock()
	ts := s.tables[table]
	if ts == nil {
		ts = &tableState{lock: make(chan struct{}, 1)}
		s.tables[table] = ts
	}
	return ts
}

// ensureTable reports whether table exists, creating it first if create is
// set. Reads do not create tables: a missing table reads as empty.
func (s *Store) ensureTable(ctx context.Context, table string, create bool) (bool, error) {
	ts := s.tableState(table)
	if ts.ready.Load() {
		return true, nil
	}
	select {
	case ts.lock <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-ts.lock }()
	if ts.ready.Load() {
		return true, nil
	}
	name, tn := s.dataName(table), s.adminName(table)
	var exists bool
	err := s.admin(ctx, "check table", name, func(ctx context.Context, c *hbase.THBaseServiceClient) (err error) {
		exists, err = c.TableExists(ctx, tn)
		return err
	})
	if err != nil {
		return false, err
	}
	if !exists {
		if !create {
			return false, nil
		}
		err := s.admin(ctx, "create table", name, func(ctx context.Context, c *hbase.THBaseServiceClient) error {
			return c.CreateTable(ctx, s.tableDescriptor(tn))
		})
		// Another client (or our own retry after a lost reply) created it.
		if err != nil && !tableExistsErr(err) {
			return false, err
		}
	}
	ts.ready.Store(true)
	return true, nil
}

func (s *Store) tableDescriptor(tn *hbase.TTableName) *hbase.TTableDescriptor {
	return &hbase.TTableDescriptor{
		TableName: tn,
		Columns: []*hbase.TColumnFamilyDescriptor{{
			Name:        s.family,
			MaxVersions: thrift.Int32Ptr(Versions),
		}},
	}
}

// noteError forgets that table exists when HBase says it does not (dropped
// by an operator): the next write creates it again.
func (s *Store) noteError(table string, err error) {
	if tableNotFound(err) {
		s.tableState(table).ready.Store(false)
	}
}

// dropTable disables and deletes table. Tests use it to clean up.
func (s *Store) dropTable(ctx context.Context, table string) error {
	name, tn := s.dataName(table), s.adminName(table)
	err := s.admin(ctx, "disable table", name, func(ctx context.Context, c *hbase.THBaseServiceClient) error {
		return c.DisableTable(ctx, tn)
	})
	if err != nil && !strings.Contains(messageOf(err), "TableNotEnabledException") {
		return err
	}
	s.tableState(table).ready.Store(false)
	return s.admin(ctx, "delete table", name, func(ctx context.Context, c *hbase.THBaseServiceClient) error {
		return c.DeleteTable(ctx, tn)
	})
}

// readRange is the HBase time range of versions visible as of asOf >= 0:
// [0, asOf+1), HBase's upper bound being exclusive. store.Latest
// (math.MaxInt64) cannot be incremented; [0, MaxInt64) already holds every
// storable version, as HBase keeps MaxInt64 for "now".
func readRange(asOf int64) *hbase.TTimeRange {
	upper := int64(math.MaxInt64)
	if asOf < math.MaxInt64 {
		upper = asOf + 1
	}
	return &hbase.TTimeRange{MinStamp: 0, MaxStamp: upper}
}

// groupPuts turns cells into one TPut per row, in the order rows first
// appear: HBase applies a TPut atomically, so each row is written all or
// nothing. Of cells with the same row, column and timestamp the last wins,
// as in a sequence of single puts.
func groupPuts(family []byte, cells []store.Cell) []*hbase.TPut {
	var puts []*hbase.TPut
	byRow := map[string]int{}
	type version struct {
		column string
		ts     int64
	}
	seen := map[string]map[version]int{}
	for _, c := range cells {
		i, ok := byRow[c.Row]
		if !ok {
			i = len(puts)
			byRow[c.Row] = i
			puts = append(puts, &hbase.TPut{Row: []byte(c.Row)})
			seen[c.Row] = map[version]int{}
		}
		value := c.Value
		if value == nil {
			value = []byte{}
		}
		v := version{c.Column, c.Timestamp}
		if j, dup := seen[c.Row][v]; dup {
			puts[i].ColumnValues[j].Value = value
			continue
		}
		seen[c.Row][v] = len(puts[i].ColumnValues)
		puts[i].ColumnValues = append(puts[i].ColumnValues, &hbase.TColumnValue{
			Family:    family,
			Qualifier: []byte(c.Column),
			Value:     value,
			Timestamp: thrift.Int64Ptr(c.Timestamp),
		})
	}
	return puts
}

// Approximate encoded sizes, for keeping requests under maxRequest: field
// headers, lengths and the timestamp.
func putSize(p *hbase.TPut) int {
	n := 16 + len(p.Row)
	for _, cv := range p.ColumnValues {
		n += 40 + len(cv.Family) + len(cv.Qualifier) + len(cv.Value)
	}
	return n
}

func deleteSize(d *hbase.TDelete) int {
	n := 24 + len(d.Row)
	for _, c := range d.Columns {
		n += 32 + len(c.Family) + len(c.Qualifier)
	}
	return n
}

// batches splits items into runs of at most limit bytes by size; an item
// larger than limit goes alone.
func batches[T any](items []T, limit int, size func(T) int) [][]T {
	var out [][]T
	start, bytes := 0, 0
	for i, it := range items {
		n := size(it)
		if i > start && bytes+n > limit {
			out = append(out, items[start:i])
			start, bytes = i, 0
		}
		bytes += n
	}
	if start < len(items) {
		out = append(out, items[start:])
	}
	return out
}

// tooBig annotates a connection error on a request over maxRequest: the
// gateway drops connections that send frames over its limit.
func tooBig(err error, bytes int) error {
	if bytes <= maxRequest || isServerError(err) {
		return err
	}
	return fmt.Errorf("%w (a request of about %d bytes: the gateway drops frames over hbase.regionserver.thrift.framed.max_frame_size_in_mb, 2 MB by default)", err, bytes)
}

func (s *Store) Put(ctx context.Context, table string, cells []store.Cell) error {
	if err := s.checkTable(table); err != nil {
		return err
	}
	for _, c := range cells {
		if err := checkCell(c); err != nil {
			return err
		}
	}
	if len(cells) == 0 {
		return nil
	}
	if _, err := s.ensureTable(ctx, table, true); err != nil {
		return err
	}
	name := s.dataName(table)
	for _, batch := range batches(groupPuts(s.family, cells), maxRequest, putSize) {
		err := s.call(ctx, "put", name, true, func(ctx context.Context, c *hbase.THBaseServiceClient) error {
			return c.PutMultiple(ctx, []byte(name), batch)
		})
		if err != nil {
			s.noteError(table, err)
			if len(batch) == 1 {
				err = tooBig(err, putSize(batch[0]))
			}
			return err
		}
	}
	return nil
}

// rowCells converts the newest-version cells of one HBase row.
func (s *Store) rowCells(row string, r *hbase.TResult_) []store.Cell {
	cells := make([]store.Cell, 0, len(r.ColumnValues))
	for _, cv := range r.ColumnValues {
		if string(cv.Family) != Family {
			continue
		}
		v := cv.Value
		if v == nil {
			v = []byte{}
		}
		cells = append(cells, store.Cell{Row: row, Column: string(cv.Qualifier), Timestamp: cv.GetTimestamp(), Value: v})
	}
	// HBase returns qualifiers in byte order already; the contract
	// promises it, so do not depend on the gateway for it.
	slices.SortStableFunc(cells, func(a, b store.Cell) int { return strings.Compare(a.Column, b.Column) })
	return cells
}

func (s *Store) Get(ctx context.Context, table, row string, asOf int64) ([]store.Cell, error) {
	if err := s.checkTable(table); err != nil {
		return nil, err
	}
	if err := checkRow(row); err != nil {
		return nil, err
	}
	if asOf < 0 {
		return nil, nil // no version is that old
	}
	if ok, err := s.ensureTable(ctx, table, false); err != nil || !ok {
		return nil, err
	}
	name := s.dataName(table)
	get := &hbase.TGet{
		Row:         []byte(row),
		Columns:     []*hbase.TColumn{{Family: s.family}},
		TimeRange:   readRange(asOf),
		MaxVersions: thrift.Int32Ptr(1),
	}
	var res *hbase.TResult_
	err := s.call(ctx, "get", name, true, func(ctx context.Context, c *hbase.THBaseServiceClient) (err error) {
		res, err = c.Get(ctx, []byte(name), get)
		return err
	})
	if err != nil {
		s.noteError(table, err)
		return nil, err
	}
	if res == nil || len(res.ColumnValues) == 0 {
		return nil, nil
	}
	return s.rowCells(row, res), nil
}

// newScan is a scan of the family over rows [start, stop) ("" stop: no end)
// and time range tr. It starts from NewTScan: the generated struct carries
// Thrift defaults (maxVersions 1) that a zero TScan would override with 0.
func (s *Store) newScan(start, stop string, tr *hbase.TTimeRange) *hbase.TScan {
	scan := hbase.NewTScan()
	scan.StartRow = []byte(start)
	if stop != "" {
		scan.StopRow = []byte(stop)
	}
	scan.Columns = []*hbase.TColumn{{Family: s.family}}
	scan.TimeRange = tr
	return scan
}

// scanRows runs scan over table name and hands each batch of rows to fn.
// fn runs while no connection is held, so it may call the store. If the
// gateway forgets the scanner (it expires scanners idle for
// hbase.client.scanner.timeout.period, 60 s by default, and loses them on a
// restart) or the connection breaks, the scan resumes with a new scanner
// just after the last row handed to fn. The scanner is always closed.
func (s *Store) scanRows(ctx context.Context, op, name string, sc *hbase.TScan, fn func([]*hbase.TResult_) error) error {
	const maxResumes = 3
	scan := *sc
	scan.Caching = thrift.Int32Ptr(scanBatch)
	var id int32
	open, resumes := false, 0
	closeScanner := func() {
		if !open {
			return
		}
		open = false
		// Close even when ctx is done: the gateway holds the scanner
		// (and a region server lease) until it expires otherwise.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		sid := id
		_ = s.call(cctx, "close scanner", name, true, func(ctx context.Context, c *hbase.THBaseServiceClient) error {
			return c.CloseScanner(ctx, sid)
		})
	}
	defer closeScanner()
	for {
		if !open {
			err := s.call(ctx, op, name, true, func(ctx context.Context, c *hbase.THBaseServiceClient) (err error) {
				id, err = c.OpenScanner(ctx, []byte(name), &scan)
				return err
			})
			if err != nil {
				return err
			}
			open = true
		}
		var rows []*hbase.TResult_
		// Not retried by call: a reply lost in transit has advanced the
		// scanner, so a retry would skip rows. Resume instead.
		err := s.call(ctx, op, name, false, func(ctx context.Context, c *hbase.THBaseServiceClient) (err error) {
			rows, err = c.GetScannerRows(ctx, id, scanBatch)
			return err
		})
		if err != nil {
			if ctx.Err() != nil || resumes >= maxResumes || (isServerError(err) && !scannerLost(err)) {
				return err
			}
			resumes++
			closeScanner()
			continue
		}
		resumes = 0
		if len(rows) > 0 {
			// The smallest key after the last row.
			scan.StartRow = append(slices.Clip(rows[len(rows)-1].Row), 0)
		}
		if err := fn(rows); err != nil {
			return err
		}
		// The gateway fills a batch unless the scan is exhausted.
		if len(rows) < scanBatch {
			return nil
		}
	}
}

func (s *Store) Scan(ctx context.Context, table, start, stop string, asOf int64, fn func(row string, cells []store.Cell) error) error {
	if err := s.checkTable(table); err != nil {
		return err
	}
	if asOf < 0 || (stop != "" && stop <= start) {
		return nil
	}
	if ok, err := s.ensureTable(ctx, table, false); err != nil || !ok {
		return err
	}
	name := s.dataName(table)
	scan := s.newScan(start, stop, readRange(asOf)) // one version per column
	err := s.scanRows(ctx, "scan", name, scan, func(rows []*hbase.TResult_) error {
		for _, r := range rows {
			row := string(r.Row)
			cells := s.rowCells(row, r)
			if len(cells) == 0 {
				continue
			}
			if err := fn(row, cells); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.noteError(table, err)
	}
	return err
}

// DeleteNewer finds the versions newer than ts (a scan over [ts+1, max)
// with all versions) and deletes each exactly (DELETE_COLUMN at its own
// timestamp), so no delete marker sits at a timestamp a later epoch could
// use. Rows are deleted one at a time, each atomically; a failure part way
// leaves the rest for the next call, which recovery makes anyway.
func (s *Store) DeleteNewer(ctx context.Context, table, start, stop string, ts int64) error {
	if err := s.checkTable(table); err != nil {
		return err
	}
	// Nothing is stored at MaxInt64, so nothing is newer than MaxInt64-1.
	if ts >= math.MaxInt64-1 || (stop != "" && stop <= start) {
		return nil
	}
	if ok, err := s.ensureTable(ctx, table, false); err != nil || !ok {
		return err
	}
	// Versions hidden behind VERSIONS newer ones reappear once those are
	// deleted (until a compaction drops them), so a row that showed the
	// full VERSIONS versions of a column is scanned again on its own.
	again, err := s.deleteNewer(ctx, table, start, stop, ts)
	for _, row := range again {
		// Each pass deletes at least Versions versions of the row; the
		// bound only guards against a gateway that ignores deletes.
		for pass := 0; err == nil && pass < 1000; pass++ {
			var more []string
			if more, err = s.deleteNewer(ctx, table, row, row+"\x00", ts); len(more) == 0 {
				break
			}
		}
	}
	if err != nil {
		s.noteError(table, err)
	}
	return err
}

// deleteNewer is one pass of DeleteNewer; it returns the rows to scan again.
func (s *Store) deleteNewer(ctx context.Context, table, start, stop string, ts int64) ([]string, error) {
	name := s.dataName(table)
	scan := s.newScan(start, stop, &hbase.TTimeRange{MinStamp: max(ts+1, 0), MaxStamp: math.MaxInt64})
	scan.MaxVersions = math.MaxInt32 // all of them (HBase caps it at VERSIONS)
	scan.CacheBlocks = thrift.BoolPtr(false)
	var again []string
	err := s.scanRows(ctx, "delete newer", name, scan, func(rows []*hbase.TResult_) error {
		var dels []*hbase.TDelete
		for _, r := range rows {
			d, full := versionDeletes(r, s.family)
			if d != nil {
				dels = append(dels, d)
			}
			if full {
				again = append(again, string(r.Row))
			}
		}
		return s.deleteMultiple(ctx, "delete newer", name, dels)
	})
	return again, err
}

// versionDeletes is a TDelete of exactly the versions in r, and whether
// some column of r showed Versions versions (more may be hidden).
func versionDeletes(r *hbase.TResult_, family []byte) (*hbase.TDelete, bool) {
	if len(r.ColumnValues) == 0 {
		return nil, false
	}
	d := hbase.NewTDelete()
	d.Row, d.DeleteType = r.Row, hbase.TDeleteType_DELETE_COLUMN
	perColumn := map[string]int{}
	full := false
	for _, cv := range r.ColumnValues {
		if cv.Timestamp == nil || string(cv.Family) != string(family) {
			continue
		}
		perColumn[string(cv.Qualifier)]++
		if perColumn[string(cv.Qualifier)] >= Versions {
			full = true
		}
		d.Columns = append(d.Columns, &hbase.TColumn{Family: family, Qualifier: cv.Qualifier, Timestamp: thrift.Int64Ptr(*cv.Timestamp)})
	}
	if len(d.Columns) == 0 {
		return nil, false
	}
	return d, full
}

func (s *Store) deleteMultiple(ctx context.Context, op, name string, dels []*hbase.TDelete) error {
	for _, batch := range batches(dels, maxRequest, deleteSize) {
		err := s.call(ctx, op, name, true, func(ctx context.Context, c *hbase.THBaseServiceClient) error {
			_, err := c.DeleteMultiple(ctx, []byte(name), batch)
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// DeleteUpTo deletes, in each row of [start, stop) that has a version <=
// ts, every version <= ts: one row delete with timestamp ts (a
// delete-family marker at ts). The marker masks any later put at a
// timestamp <= ts, which the contract forbids anyway.
func (s *Store) DeleteUpTo(ctx context.Context, table, start, stop string, ts int64) error {
	if err := s.checkTable(table); err != nil {
		return err
	}
	if ts < 0 || (stop != "" && stop <= start) {
		return nil
	}
	// No version is stored at MaxInt64, and a delete there would mean
	// "now" to HBase.
	ts = min(ts, math.MaxInt64-1)
	if ok, err := s.ensureTable(ctx, table, false); err != nil || !ok {
		return err
	}
	name := s.dataName(table)
	scan := s.newScan(start, stop, readRange(ts))
	scan.CacheBlocks = thrift.BoolPtr(false)
	err := s.scanRows(ctx, "delete up to", name, scan, func(rows []*hbase.TResult_) error {
		dels := make([]*hbase.TDelete, 0, len(rows))
		for _, r := range rows {
			// No columns: the whole row, versions <= Timestamp.
			d := hbase.NewTDelete()
			d.Row, d.Timestamp = r.Row, thrift.Int64Ptr(ts)
			dels = append(dels, d)
		}
		return s.deleteMultiple(ctx, "delete up to", name, dels)
	})
	if err != nil {
		s.noteError(table, err)
	}
	return err
}

// CheckAndPut is HBase's checkAndPut: the region server compares the newest
// version of row/column under the row lock and applies the put. HBase
// treats an empty expected value like an absent one: expected nil also
// matches a column whose newest value is empty, and expected []byte{} also
// matches a missing column.
func (s *Store) CheckAndPut(ctx context.Context, table, row, column string, expected []byte, cells []store.Cell) (bool, error) {
	if err := s.checkTable(table); err != nil {
		return false, err
	}
	if column == "" {
		return false, fmt.Errorf("%w: empty column", store.ErrInvalid)
	}
	if err := checkRow(row); err != nil {
		return false, err
	}
	for _, c := range cells {
		if err := checkCell(c); err != nil {
			return false, err
		}
		if c.Row != row {
			return false, fmt.Errorf("%w: CheckAndPut on row %q got a cell of row %q", store.ErrInvalid, row, c.Row)
		}
	}
	if len(cells) == 0 {
		// HBase refuses an empty put; with nothing to write the answer
		// is the comparison alone.
		return s.compare(ctx, table, row, column, expected)
	}
	if _, err := s.ensureTable(ctx, table, true); err != nil {
		return false, err
	}
	name := s.dataName(table)
	put := groupPuts(s.family, cells)[0]
	var applied bool
	err := s.call(ctx, "check and put", name, false, func(ctx context.Context, c *hbase.THBaseServiceClient) (err error) {
		applied, err = c.CheckAndPut(ctx, []byte(name), []byte(row), s.family, []byte(column), expected, put)
		return err
	})
	if err != nil {
		s.noteError(table, err)
		return false, tooBig(err, putSize(put))
	}
	return applied, nil
}

func (s *Store) compare(ctx context.Context, table, row, column string, expected []byte) (bool, error) {
	cells, err := s.Get(ctx, table, row, store.Latest)
	if err != nil {
		return false, err
	}
	for _, c := range cells {
		if c.Column == column {
			return expected != nil && string(c.Value) == string(expected), nil
		}
	}
	return expected == nil, nil
}
