package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/freeway-dev/freeway/internal/store"
)

// Versions is how many versions of a column are kept; older ones are
// pruned when a newer one is written.
const Versions = store.MinVersions

// Store is a store.Store in a bbolt file.
type Store struct {
	// parts are the files of the store, parts[0] at path and the others
	// at partPath (parts.go); each row lives in one of them (partOf).
	parts   []*bolt.DB
	path    string
	log     *slog.Logger
	damaged *prometheus.CounterVec

	mu     sync.Mutex
	broken error // set once a call found the file damaged
}

var _ store.Store = (*Store)(nil)

// Options are what Open may be given; the zero value works.
type Options struct {
	Log *slog.Logger
	// Metrics, if set, gets freeway_store_damaged_total.
	Metrics prometheus.Registerer
	Now     func() time.Time
	// CheckBudget bounds the check of the file at open (0: the default,
	// negative: no check).
	CheckBudget time.Duration

	// Tests: the parts of a new store (0: defaultParts).
	parts int

	// Tests: the keys of the layout before that a transaction of the
	// migration moves (0: migrateChunk), and a function it calls in each
	// transaction ("moved", before its commit) and after it ("committed").
	migrateChunk int
	migrateHook  func(stage string)
}

// Open opens (creating if needed) the bbolt file at path. It fails if
// another process holds the file.
func Open(path string) (*Store, error) { return OpenWith(path, Options{}) }

// OpenWith is Open with options. A damaged file is moved aside and
// replaced by a fresh one (see the package comment).
func OpenWith(path string, opts Options) (*Store, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.CheckBudget == 0 {
		opts.CheckBudget = DefaultCheckBudget
	}
	log := opts.Log.With("component", "store")
	damaged := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "freeway_store_damaged_total",
		Help: "Times the bbolt store file was found damaged: at open (moved aside, a fresh one created) or by a call while running (calls fail until a restart).",
	}, []string{"found"})
	damaged.WithLabelValues("open")
	damaged.WithLabelValues("run")

	var dbs []*bolt.DB
	var damage string
	marker := path + markerSuffix
	if why, err := os.ReadFile(marker); err == nil {
		if _, err := os.Stat(path); err == nil {
			damage = "a call of an earlier run found it damaged: " + string(bytes.TrimSpace(why))
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("open store %s: read damage marker: %w", path, err)
	}
	if damage == "" {
		var err error
		dbs, damage, err = openParts(path, opts, log)
		if err != nil {
			return nil, err
		}
	}
	if damage != "" {
		// The parts are damaged as one: each holds rows of the same
		// checkpoints.
		asides, err := moveAsideAll(path, opts.Now())
		if err != nil {
			return nil, fmt.Errorf("open store %s: %w: %s; moving it aside failed (move or remove it and its .part files by hand; %s): %w", path, ErrDamaged, damage, whySafe, err)
		}
		damaged.WithLabelValues("open").Inc()
		log.Error("store file is damaged; moved it aside and started a fresh one",
			"path", path, "moved_to", strings.Join(asides, " "), "damage", damage, "why_safe", whySafe)
		var err2 error
		dbs, damage, err2 = openParts(path, opts, log)
		switch {
		case err2 != nil:
			return nil, err2
		case damage != "":
			return nil, fmt.Errorf("open store %s: the fresh file is damaged too: %s", path, damage)
		}
	}
	s := &Store{parts: dbs, path: path, log: log, damaged: damaged}
	if err := os.Remove(marker); err != nil && !errors.Is(err, os.ErrNotExist) {
		_ = s.Close()
		return nil, fmt.Errorf("open store %s: remove damage marker: %w", path, err)
	}
	if opts.Metrics != nil {
		if err := opts.Metrics.Register(damaged); err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("open store %s: register metrics: %w", path, err)
		}
	}
	return s, nil
}

// call runs fn, a bbolt transaction, for operation op. A panic or fault
// in bbolt is damage: it becomes the error of this call and of every
// later one, and is recorded for the next open.
func (s *Store) call(op string, fn func() error) error {
	s.mu.Lock()
	broken := s.broken
	s.mu.Unlock()
	if broken != nil {
		return broken
	}
	var err error
	if r := guarded(func() { err = fn() }); r != nil {
		return s.markDamaged(op, r)
	}
	return err
}

func (s *Store) markDamaged(op string, r any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken != nil {
		return s.broken
	}
	s.broken = fmt.Errorf("%s on store %s: %w (bbolt: %v); restart to move it aside and rebuild from the dfs", op, s.path, ErrDamaged, r)
	s.damaged.WithLabelValues("run").Inc()
	if err := os.WriteFile(s.path+markerSuffix, fmt.Appendf(nil, "%s: bbolt: %v\n", op, r), 0o644); err != nil {
		s.log.Error("cannot write damage marker", "path", s.path+markerSuffix, "err", err)
	}
	s.log.Error("store file is damaged; every call fails until a restart moves it aside",
		"path", s.path, "op", op, "damage", fmt.Sprint(r), "why_safe", whySafe)
	return s.broken
}

func (s *Store) String() string { return "bolt://" + s.path }

func (s *Store) Close() error {
	var errs []error
	for _, db := range s.parts {
		var err error
		if r := guarded(func() { err = db.Close() }); r != nil {
			err = fmt.Errorf("close store %s: %w (bbolt: %v)", db.Path(), ErrDamaged, r)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// The layout. Every table is a bucket inside the bucket tablesBucket.
// Each column of a row is one key, its row escaped (see appendEscaped)
// and then its column as is, so that bbolt's byte order is (row,
// column) order; its value holds the column's versions, newest first
// (appendVersion). A checkpoint's new version of a cell is then one Get
// and one Put of the same key: no key per version to insert and no
// older one to search for and delete, and one key a cell instead of
// Versions keys in every leaf the commit writes. Files of the layout
// before (a key per version, tables at the top) are migrated at open
// (migrate.go).
const tablesBucket = "\x00tables"

// versionsFormat is the first byte of a column's value: the format of
// the versions after it.
const versionsFormat = 1

// Key encoding. The row is escaped so that 0x00 terminates it and the
// encoding sorts like the raw bytes: 0x00 becomes 0x00 0xff, and the
// terminator is 0x00 0x01.
// The bytes between zeros are appended whole (a row rarely holds one; a
// byte at a time was a tenth of a checkpoint's writer).
func appendEscaped(dst []byte, s string) []byte {
	for {
		i := strings.IndexByte(s, 0)
		if i < 0 {
			break
		}
		dst = append(append(dst, s[:i]...), 0, 0xff)
		s = s[i+1:]
	}
	return append(append(dst, s...), 0, 1)
}

// readEscaped decodes one escaped string from b and returns it with the rest.
func readEscaped(b []byte) (string, []byte, bool) {
	if i := bytes.IndexByte(b, 0); i >= 0 && i+1 < len(b) && b[i+1] == 1 {
		return string(b[:i]), b[i+2:], true // nothing escaped: the common case
	}
	var out []byte
	for i := 0; i < len(b); i++ {
		if b[i] != 0 {
			continue
		}
		if i+1 >= len(b) {
			return "", nil, false
		}
		switch b[i+1] {
		case 1:
			out = append(out, b[:i]...)
			return string(out), b[i+2:], true
		case 0xff:
			out = append(out, b[:i+1]...)
			b = b[i+2:]
			i = -1
		default:
			return "", nil, false
		}
	}
	return "", nil, false
}

// rowPrefix is what every key of row starts with, and no other key.
func rowPrefix(row string) []byte { return appendEscaped(nil, row) }

// rowBound is the bound of a row range: a key is of a row >= row exactly
// when it is >= rowBound(row) (the escaped row without its terminator:
// the terminator 0x00 0x01 sorts below every escaped byte that could
// follow).
func rowBound(row string) []byte {
	if row == "" {
		return nil
	}
	b := appendEscaped(nil, row)
	return b[:len(b)-2]
}

func appendCellKey(dst []byte, row, column string) []byte {
	return append(appendEscaped(dst, row), column...)
}

// parseCellKey splits a key into its row and column.
func parseCellKey(k []byte) (row string, column []byte, err error) {
	row, column, ok := readEscaped(k)
	if !ok || row == "" || len(column) == 0 {
		return "", nil, fmt.Errorf("corrupt key %x", k)
	}
	return row, column, nil
}

// appendVersion appends one version to a column's value: its timestamp
// and its length as uvarints, then its bytes.
func appendVersion(dst []byte, ts int64, v []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(ts))
	dst = binary.AppendUvarint(dst, uint64(len(v)))
	return append(dst, v...)
}

var errCorruptValue = errors.New("corrupt versions")

// versionsOf checks the format byte of a column's value and returns its
// versions.
func versionsOf(value []byte) ([]byte, error) {
	if len(value) < 1 || value[0] != versionsFormat {
		return nil, errCorruptValue
	}
	return value[1:], nil
}

// nextVersion reads the first of versions.
func nextVersion(versions []byte) (ts int64, v, rest []byte, err error) {
	t, n := binary.Uvarint(versions)
	if n <= 0 || t > math.MaxInt64 {
		return 0, nil, nil, errCorruptValue
	}
	l, m := binary.Uvarint(versions[n:])
	if m <= 0 || l > uint64(len(versions)-n-m) {
		return 0, nil, nil, errCorruptValue
	}
	at := n + m
	return int64(t), versions[at : at+int(l) : at+int(l)], versions[at+int(l):], nil
}

// versionAsOf returns the newest version of a column's value with a
// timestamp <= asOf, if any.
func versionAsOf(value []byte, asOf int64) (ts int64, v []byte, ok bool, err error) {
	rest, err := versionsOf(value)
	for err == nil && len(rest) > 0 {
		if ts, v, rest, err = nextVersion(rest); err == nil && ts <= asOf {
			return ts, v, true, nil
		}
	}
	return 0, nil, false, err
}

// putVersion appends to dst a column's value: the versions of old (a
// stored value; nil for none) with ts/v put in, replacing one of the
// same timestamp, newest first, the newest Versions of them.
func putVersion(dst, old []byte, ts int64, v []byte) ([]byte, error) {
	var rest []byte
	if old != nil {
		var err error
		if rest, err = versionsOf(old); err != nil {
			return nil, err
		}
	}
	dst = append(dst, versionsFormat)
	placed := false
	for n := 0; n < Versions; n++ {
		if len(rest) == 0 {
			if !placed {
				dst = appendVersion(dst, ts, v)
			}
			break
		}
		ots, ov, next, err := nextVersion(rest)
		if err != nil {
			return nil, err
		}
		switch {
		case !placed && ts >= ots:
			dst = appendVersion(dst, ts, v)
			placed = true
			if ts == ots {
				rest = next
			}
		default:
			dst = appendVersion(dst, ots, ov)
			rest = next
		}
	}
	return dst, nil
}

// keepVersions returns value with only the versions keep accepts (nil if
// none is left) and whether any was dropped.
func keepVersions(value []byte, keep func(ts int64) bool) ([]byte, bool, error) {
	rest, err := versionsOf(value)
	if err != nil {
		return nil, false, err
	}
	var out []byte
	dropped := false
	for len(rest) > 0 {
		ts, v, next, err := nextVersion(rest)
		if err != nil {
			return nil, false, err
		}
		switch {
		case !keep(ts) && !dropped:
			dropped = true
			out = append(make([]byte, 0, len(value)), value[:len(value)-len(rest)]...)
		case keep(ts) && dropped:
			out = appendVersion(out, ts, v)
		}
		rest = next
	}
	if dropped && len(out) == 1 {
		return nil, true, nil
	}
	return out, dropped, nil
}

func checkCell(c store.Cell) error {
	if c.Row == "" || c.Column == "" {
		return fmt.Errorf("%w: empty row or column", store.ErrInvalid)
	}
	if c.Timestamp < 0 {
		return fmt.Errorf("%w: negative timestamp %d", store.ErrInvalid, c.Timestamp)
	}
	return nil
}

func checkTable(table string) error {
	if table == "" {
		return fmt.Errorf("%w: empty table name", store.ErrInvalid)
	}
	return nil
}

// tableToWrite returns the bucket of table, creating it if needed.
func tableToWrite(tx *bolt.Tx, table string) (*bolt.Bucket, error) {
	tables, err := tx.CreateBucketIfNotExists([]byte(tablesBucket))
	if err != nil {
		return nil, err
	}
	return tables.CreateBucketIfNotExists([]byte(table))
}

// tableToRead returns the bucket of table, or nil if it has none.
func tableToRead(tx *bolt.Tx, table string) *bolt.Bucket {
	tables := tx.Bucket([]byte(tablesBucket))
	if tables == nil {
		return nil
	}
	return tables.Bucket([]byte(table))
}

func (s *Store) Put(ctx context.Context, table string, cells []store.Cell) error {
	if err := checkTable(table); err != nil {
		return err
	}
	for _, c := range cells {
		if err := checkCell(c); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	byPart, ks := s.split(cells)
	if len(ks) == 0 {
		return nil // no cells, several parts
	}
	return s.callParts("put", ks, func(k int) error {
		return s.parts[k].Update(func(tx *bolt.Tx) error {
			b, err := tableToWrite(tx, table)
			if err != nil {
				return err
			}
			return putCells(b, byPart[k])
		})
	})
}

// arena hands out the values of Puts (and the keys the migration keeps):
// bbolt keeps a value until the transaction ends, so they are cut from a
// few large buffers rather than allocated one by one (a checkpoint puts
// a million cells). What is handed out is never written again.
type arena struct{ buf []byte }

// room makes room for n more bytes and returns the buffer to append
// them to.
func (a *arena) room(n int) []byte {
	if cap(a.buf)-len(a.buf) < n {
		a.buf = make([]byte, 0, max(n, 256<<10))
	}
	return a.buf
}

// take hands out what was appended to the buffer room returned.
func (a *arena) take(b []byte) []byte {
	at := len(a.buf)
	a.buf = b
	return b[at:len(b):len(b)]
}

// putCells puts cells into b. The old value of each cell's key is read
// with a cursor walked forward while the keys come in ascending order
// (a checkpoint gives them so), which costs a step instead of a search
// from the root; an out-of-order key seeks. The cursor may show a leaf as
// it was when the transaction began or as changed since: either way the
// keys it shows ahead of the last one put are unchanged, and its own
// changes (a key inserted behind it) are stepped over. A key put twice in
// a row merges with what was just put rather than read again.
//
// A Put of new keys in ascending order with no stored key among them (a
// run: the first checkpoint of a shard, a new window's cells, appended
// after the table's last key or into the gap between two shards' or
// windows' rows) fills the leaves it splits fully instead of by half
// (fillRun): such leaves hold only the run's keys but at their edges,
// and their next change is a new version of those same cells, which
// splits them again at bbolt's default (putFill). Half-filled pages
// there would double the pages the commit writes for nothing.
//
// The keys, and the values of keys not stored before, are encoded in
// blocks (encodeCells), on a goroutine of their own for a large Put
// (aheadMin cells or more), a few blocks ahead of the loop that puts
// them: bbolt's work is then all that is left on the writing goroutine
// (a million new cells: ~0.05 s of encoding moved to the other core).
func putCells(b *bolt.Bucket, cells []store.Cell) error {
	var a arena
	blocks := encodeAhead(cells)
	defer blocks.stop()
	var blk *encoded
	var lastBuf []byte // the last key put, once its block is handed back
	c := b.Cursor()
	var ck, cv []byte // where the cursor is
	var last, lastVal []byte
	var after []byte      // the first stored key >= the first key put (nil: none)
	run := len(cells) > 0 // every key so far ascending, none stored
	for i, cell := range cells {
		j := i % blocks.size
		if j == 0 {
			if blk != nil {
				lastBuf = append(lastBuf[:0], last...)
				last = lastBuf
				blocks.free(blk)
			}
			blk = blocks.next()
		}
		key := blk.key(j)
		var old []byte
		switch cmp := bytes.Compare(key, last); {
		case last != nil && cmp == 0:
			old = lastVal
			run = false
		case last != nil && cmp > 0:
			// The cursor is at the first key >= last, or at the end (then
			// no key after last was there, and those put since are <=
			// last).
			for ck != nil && bytes.Compare(ck, key) < 0 {
				ck, cv = c.Next()
			}
		default:
			ck, cv = c.Seek(key)
			if i == 0 {
				after = bytes.Clone(ck)
			} else {
				run = false
			}
		}
		if old == nil && bytes.Equal(ck, key) {
			old = cv
		}
		val := blk.vals[j] // the value of a key not stored
		if old != nil {
			buf := a.room(1 + len(old) + 2*binary.MaxVarintLen64 + len(cell.Value))
			var err error
			if val, err = putVersion(buf, old, cell.Timestamp, cell.Value); err != nil {
				return fmt.Errorf("key %x: %w", key, err)
			}
			val = a.take(val)
		}
		if err := b.Put(key, val); err != nil {
			return err
		}
		last, lastVal = key, val
	}
	// The keys put were ascending; a run if no stored key was at or
	// after the first one, or the first such is after the last one put.
	b.FillPercent = putFill
	if run && (after == nil || bytes.Compare(after, last) > 0) {
		b.FillPercent = fillRun
	}
	if blk != nil {
		blocks.free(blk)
	}
	return nil
}

// encodeBlock is how many cells a block of encoded keys and values
// holds; aheadMin the cells of a Put from which they are encoded on a
// goroutine of their own (variables for the tests).
var (
	encodeBlock = 4096
	aheadMin    = 8192
)

// encoded is a block of a Put's cells (encodeBlock, the last one fewer)
// with their keys and, for each, the value its key gets if it holds no
// version yet: the format byte and the cell's version. bbolt copies the
// keys it is given, so a block's key buffer is used again for a later
// block once put; the values are kept until the transaction ends.
type encoded struct {
	keys []byte
	ends []int // where each key ends in keys
	vals [][]byte
}

func (e *encoded) key(j int) []byte {
	from := 0
	if j > 0 {
		from = e.ends[j-1]
	}
	return e.keys[from:e.ends[j]:e.ends[j]]
}

// encodeCells encodes cells (at most encodeBlock) into e, its buffers
// reused.
func encodeCells(e *encoded, cells []store.Cell) {
	keys, size := 0, 0
	for _, c := range cells {
		keys += len(c.Row) + 2 + len(c.Column) // a zero byte in a row takes one more: rare, left to append
		size += 1 + uvarintLen(uint64(c.Timestamp)) + uvarintLen(uint64(len(c.Value))) + len(c.Value)
	}
	e.keys = slices.Grow(e.keys[:0], keys)
	e.ends = slices.Grow(e.ends[:0], len(cells))
	e.vals = slices.Grow(e.vals[:0], len(cells))
	vals := make([]byte, 0, size)
	for _, c := range cells {
		e.keys = appendCellKey(e.keys, c.Row, c.Column)
		e.ends = append(e.ends, len(e.keys))
		at := len(vals)
		vals = appendVersion(append(vals, versionsFormat), c.Timestamp, c.Value)
		e.vals = append(e.vals, vals[at:len(vals):len(vals)])
	}
}

func uvarintLen(v uint64) int {
	n := 1
	for ; v >= 0x80; v >>= 7 {
		n++
	}
	return n
}

// spareBlocks are blocks of encoded cells put, to encode into again (the
// values are not reused: bbolt holds them until the transaction ends).
var spareBlocks = sync.Pool{New: func() any { return &encoded{} }}

// blockSource hands out a Put's cells encoded, block after block, in
// order: encoded on a goroutine of its own a few blocks ahead for a large
// Put, when asked for a small one.
type blockSource struct {
	cells []store.Cell
	size  int           // cells a block (encodeBlock)
	at    int           // the first cell not handed out (small Puts)
	ahead chan *encoded // the blocks encoded ahead (large Puts)
	quit  chan struct{} // closed when the Put ends
	done  chan struct{} // closed when the goroutine has ended
}

func encodeAhead(cells []store.Cell) *blockSource {
	s := &blockSource{cells: cells, size: encodeBlock}
	if len(cells) < aheadMin {
		return s
	}
	s.ahead, s.quit, s.done = make(chan *encoded, 2), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(s.done)
		for i := 0; i < len(cells); i += s.size {
			e := spareBlocks.Get().(*encoded)
			encodeCells(e, cells[i:min(i+s.size, len(cells))])
			select {
			case s.ahead <- e:
			case <-s.quit: // the Put failed
				return
			}
		}
	}()
	return s
}

// next returns the next block.
func (s *blockSource) next() *encoded {
	if s.ahead != nil {
		return <-s.ahead
	}
	e := spareBlocks.Get().(*encoded)
	encodeCells(e, s.cells[s.at:min(s.at+s.size, len(s.cells))])
	s.at += s.size
	return e
}

// free hands back a block whose keys were put (its values are not
// touched again).
func (s *blockSource) free(e *encoded) {
	clear(e.vals)
	spareBlocks.Put(e)
}

// stop ends the goroutine of a large Put and waits for it, so that
// nothing reads the Put's cells once it has returned.
func (s *blockSource) stop() {
	if s.quit != nil {
		close(s.quit)
		<-s.done
	}
}

// The fill of the leaves a Put's commit splits: bbolt's default for
// changes among stored keys (room for the next versions, so that a leaf
// is not split again at every checkpoint), full for a run of new keys
// (putCells).
const (
	putFill = bolt.DefaultFillPercent
	fillRun = 1.0
)

func (s *Store) Get(ctx context.Context, table, row string, asOf int64) ([]store.Cell, error) {
	if err := checkTable(table); err != nil {
		return nil, err
	}
	if row == "" {
		return nil, fmt.Errorf("%w: empty row", store.ErrInvalid)
	}
	var cells []store.Cell
	err := s.view(ctx, "get", s.partOf(row), table, func(b *bolt.Bucket) error {
		var r rowReader
		prefix := rowPrefix(row)
		c := b.Cursor()
		k, v := c.Seek(prefix)
		var err error
		cells, _, _, err = r.readRow(c, k, v, prefix, row, asOf)
		return err
	})
	return cells, err
}

func (s *Store) view(ctx context.Context, op string, db *bolt.DB, table string, fn func(b *bolt.Bucket) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.call(op, func() error {
		return db.View(func(tx *bolt.Tx) error {
			b := tableToRead(tx, table)
			if b == nil {
				return nil
			}
			return fn(b)
		})
	})
}

// rowReader reads rows out of a read transaction. It copies their
// values into shared buffers and their cells into one slice, so that a
// scan (a recovery reads a million cells) allocates per chunk of rows,
// not per cell; a row's cells and values are never written again once
// read, so they stay the caller's.
type rowReader struct {
	cells []store.Cell
	vals  []byte
}

// value copies v out of the transaction.
func (r *rowReader) value(v []byte) []byte {
	if cap(r.vals)-len(r.vals) < len(v) {
		r.vals = make([]byte, 0, max(len(v), 64<<10))
	}
	at := len(r.vals)
	r.vals = append(r.vals, v...)
	return r.vals[at:len(r.vals):len(r.vals)]
}

// readRow reads row, whose keys start with prefix, from k/v (where c
// is) on: per column, the newest version <= asOf. It returns the row's
// cells (nil if none is that old) and the key and value after the row.
func (r *rowReader) readRow(c *bolt.Cursor, k, v, prefix []byte, row string, asOf int64) ([]store.Cell, []byte, []byte, error) {
	start := len(r.cells)
	for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if len(k) == len(prefix) {
			return nil, nil, nil, fmt.Errorf("corrupt key %x", k)
		}
		ts, val, ok, err := versionAsOf(v, asOf)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("key %x: %w", k, err)
		}
		if ok {
			r.cells = append(r.cells, store.Cell{Row: row, Column: string(k[len(prefix):]), Timestamp: ts, Value: r.value(val)})
		}
	}
	if len(r.cells) == start {
		return nil, k, v, nil
	}
	return r.cells[start:len(r.cells):len(r.cells)], k, v, nil
}

func (s *Store) Scan(ctx context.Context, table, start, stop string, asOf int64, fn func(row string, cells []store.Cell) error) error {
	if err := checkTable(table); err != nil {
		return err
	}
	// Each part is read in chunks of rows, so that fn runs outside
	// bbolt's transactions (it may write to the store, and a long read
	// transaction pins pages), and the parts' rows, each part's in key
	// order and no row in two parts, are merged. With several parts,
	// each is read a chunk ahead on a goroutine of its own.
	end := rowBound(stop)
	next := make([]func() ([]rowCells, bool, error), len(s.parts))
	if len(s.parts) == 1 {
		p := &partScan{db: s.parts[0], from: start, inclusive: true}
		next[0] = func() ([]rowCells, bool, error) {
			if p.done {
				return nil, false, nil
			}
			err := s.scanChunk(ctx, p, table, end, asOf)
			return p.rows, err == nil, err
		}
	} else {
		ctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		defer wg.Wait()
		defer cancel()
		for k, db := range s.parts {
			ch := make(chan scanned, 1)
			wg.Go(func() {
				defer close(ch)
				p := &partScan{db: db, from: start, inclusive: true}
				for !p.done {
					err := s.scanChunk(ctx, p, table, end, asOf)
					select {
					case ch <- scanned{p.rows, err}:
					case <-ctx.Done():
						return
					}
					if err != nil {
						return
					}
				}
			})
			next[k] = func() ([]rowCells, bool, error) {
				c, ok := <-ch
				return c.rows, ok && c.err == nil, c.err
			}
		}
	}
	heads := make([][]rowCells, len(s.parts))
	live := make([]bool, len(s.parts))
	for k := range live {
		live[k] = true
	}
	done := ctx.Done() // a caller that has what it needs cancels: no more rows
	for {
		select {
		case <-done:
			return ctx.Err()
		default:
		}
		first := -1
		for k := range heads {
			for len(heads[k]) == 0 && live[k] {
				var err error
				if heads[k], live[k], err = next[k](); err != nil {
					return err
				}
			}
			if len(heads[k]) > 0 && (first < 0 || heads[k][0].row < heads[first][0].row) {
				first = k
			}
		}
		if first < 0 {
			return nil
		}
		r := heads[first][0]
		heads[first] = heads[first][1:]
		if err := fn(r.row, r.cells); err != nil {
			return err
		}
	}
}

// scanned is a chunk of a part's rows read ahead, or the error that
// ended the reading.
type scanned struct {
	rows []rowCells
	err  error
}

// scanChunk is how many rows a read transaction of a Scan reads from a
// part.
const scanChunk = 512

// partScan is a Scan's reading of one part: the rows read and not yet
// given, and where the next chunk starts.
type partScan struct {
	db        *bolt.DB
	rows      []rowCells
	from      string
	inclusive bool // the row from itself is still to be read
	done      bool // no rows left before the end
}

type rowCells struct {
	row   string
	cells []store.Cell
}

// scanChunk reads the next chunk of p's rows before end (nil: no end).
func (s *Store) scanChunk(ctx context.Context, p *partScan, table string, end []byte, asOf int64) error {
	p.rows = nil
	err := s.view(ctx, "scan", p.db, table, func(b *bolt.Bucket) error {
		var r rowReader
		c := b.Cursor()
		k, v := c.Seek(rowPrefix(p.from))
		for k != nil && len(p.rows) < scanChunk {
			if end != nil && bytes.Compare(k, end) >= 0 {
				return nil
			}
			row, rest, ok := readEscaped(k)
			if !ok {
				return fmt.Errorf("corrupt key %x", k)
			}
			// The row's prefix, in the transaction's memory (valid
			// while it lasts).
			prefix := k[:len(k)-len(rest)]
			cells, nk, nv, err := r.readRow(c, k, v, prefix, row, asOf)
			if err != nil {
				return err
			}
			if len(cells) > 0 && (p.inclusive || row != p.from) {
				p.rows = append(p.rows, rowCells{row, cells})
			}
			k, v = nk, nv
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(p.rows) < scanChunk {
		p.done = true
	} else {
		p.from, p.inclusive = p.rows[len(p.rows)-1].row, false
	}
	return nil
}

func (s *Store) DeleteNewer(ctx context.Context, table, start, stop string, ts int64) error {
	return s.deleteWhere(ctx, table, start, stop, func(v int64) bool { return v <= ts })
}

func (s *Store) DeleteBetween(ctx context.Context, table, start, stop string, after, upTo int64) error {
	return s.deleteWhere(ctx, table, start, stop, func(v int64) bool { return v <= after || v > upTo })
}

func (s *Store) DeleteUpTo(ctx context.Context, table, start, stop string, ts int64) error {
	return s.deleteWhere(ctx, table, start, stop, func(v int64) bool { return v > ts })
}

// deleteWhere keeps, in the rows of [start, stop), the versions keep
// accepts.
func (s *Store) deleteWhere(ctx context.Context, table, start, stop string, keep func(int64) bool) error {
	if err := checkTable(table); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.callParts("delete", s.allParts(), func(k int) error {
		return s.parts[k].Update(func(tx *bolt.Tx) error {
			b := tableToRead(tx, table)
			if b == nil {
				return nil
			}
			return deleteIn(b, start, stop, keep)
		})
	})
}

func deleteIn(b *bolt.Bucket, start, stop string, keep func(int64) bool) error {
	// The changes are made after the walk: a bbolt cursor may skip a key
	// when moved on after a change.
	type change struct{ key, value []byte }
	var changes []change
	end := rowBound(stop)
	c := b.Cursor()
	for k, v := c.Seek(rowPrefix(start)); k != nil; k, v = c.Next() {
		if end != nil && bytes.Compare(k, end) >= 0 {
			break
		}
		left, dropped, err := keepVersions(v, keep)
		if err != nil {
			return fmt.Errorf("key %x: %w", k, err)
		}
		if dropped {
			changes = append(changes, change{bytes.Clone(k), left})
		}
	}
	for _, ch := range changes {
		var err error
		if ch.value == nil {
			err = b.Delete(ch.key)
		} else {
			err = b.Put(ch.key, ch.value)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) CheckAndPut(ctx context.Context, table, row, column string, expected []byte, cells []store.Cell) (bool, error) {
	if err := checkTable(table); err != nil {
		return false, err
	}
	if row == "" || column == "" {
		return false, fmt.Errorf("%w: empty row or column", store.ErrInvalid)
	}
	for _, c := range cells {
		if err := checkCell(c); err != nil {
			return false, err
		}
		if c.Row != row {
			return false, fmt.Errorf("%w: CheckAndPut on row %q got a cell of row %q", store.ErrInvalid, row, c.Row)
		}
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	applied := false
	err := s.call("check-and-put", func() error {
		return s.partOf(row).Update(func(tx *bolt.Tx) error {
			b, err := tableToWrite(tx, table)
			if err != nil {
				return err
			}
			key := appendCellKey(nil, row, column)
			var newest []byte
			exists := false
			if k, v := b.Cursor().Seek(key); bytes.Equal(k, key) {
				_, newest, exists, err = versionAsOf(v, math.MaxInt64)
				if err != nil {
					return fmt.Errorf("key %x: %w", key, err)
				}
			}
			switch {
			case expected == nil && exists:
				return nil
			case expected != nil && (!exists || !bytes.Equal(newest, expected)):
				return nil
			}
			applied = true
			return putCells(b, cells)
		})
	})
	if err != nil {
		return false, err
	}
	return applied, nil
}
