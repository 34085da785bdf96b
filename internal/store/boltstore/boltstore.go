// Package boltstore implements store.Store in one embedded bbolt file: the
// default store on one machine (bolt:///path/to/file.db).
//
// A table is a bbolt bucket. Each version is one key, built so that bbolt's
// byte order is the store's order: escaped row, escaped column, then the
// timestamp inverted, so the newest version of a column comes first. Every
// write is a bbolt transaction, fsynced before it returns.
//
// A damaged file. bbolt panics on a page that makes no sense, and a file
// cut short faults when its missing pages are read, which used to kill
// the process again at every start. Open checks the file (pages past its
// end; every key read back; bbolt's consistency check, within
// Options.CheckBudget) and recovers bbolt's panics and faults; a damaged
// file is renamed to <file>.damaged-<UTC time> (never deleted) and a
// fresh one is created, with one error line saying so and why it is safe:
// the store holds only Puma's checkpoints, which Puma rebuilds exactly by
// re-reading every segment from the dfs, and the copier's progress, which
// it recopies idempotently. That holds while the dfs keeps every segment
// (nothing deletes segments today; a segment retention must revisit it).
// Damage found by a call while running (a panic or fault recovered into
// an error) makes that call and every later one fail with ErrDamaged, and
// leaves a <file>.damaged marker so that the next start moves the file
// aside even if its check passes. Both are counted in
// freeway_store_damaged_total. bbolt keeps no checksums of data pages: a
// changed byte inside a value is not found here; the reader of the value
// finds it only if the value no longer decodes (Puma then reports the
// shard failed).
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
	db      *bolt.DB
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

	var db *bolt.DB
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
		db, damage, err = openChecked(path, opts.CheckBudget, log)
		if err != nil {
			return nil, err
		}
	}
	if damage != "" {
		aside, err := moveAside(path, opts.Now())
		if err != nil {
			return nil, fmt.Errorf("open store %s: %w: %s; moving it aside failed (move or remove it by hand; %s): %w", path, ErrDamaged, damage, whySafe, err)
		}
		damaged.WithLabelValues("open").Inc()
		log.Error("store file is damaged; moved it aside and started a fresh one",
			"path", path, "moved_to", aside, "damage", damage, "why_safe", whySafe)
		var err2 error
		db, damage, err2 = openChecked(path, opts.CheckBudget, log)
		switch {
		case err2 != nil:
			return nil, err2
		case damage != "":
			return nil, fmt.Errorf("open store %s: the fresh file is damaged too: %s", path, damage)
		}
	}
	if err := os.Remove(marker); err != nil && !errors.Is(err, os.ErrNotExist) {
		_ = db.Close()
		return nil, fmt.Errorf("open store %s: remove damage marker: %w", path, err)
	}
	if opts.Metrics != nil {
		if err := opts.Metrics.Register(damaged); err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("open store %s: register metrics: %w", path, err)
		}
	}
	return &Store{db: db, path: path, log: log, damaged: damaged}, nil
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
	var err error
	if r := guarded(func() { err = s.db.Close() }); r != nil {
		return fmt.Errorf("close store %s: %w (bbolt: %v)", s.path, ErrDamaged, r)
	}
	return err
}

// Key encoding. Row and column are escaped so that 0x00 terminates them and
// the encoding sorts like the raw bytes: 0x00 becomes 0x00 0xff, and the
// terminator is 0x00 0x01.
func appendEscaped(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			dst = append(dst, 0, 0xff)
		} else {
			dst = append(dst, s[i])
		}
	}
	return append(dst, 0, 1)
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

func rowPrefix(row string) []byte { return appendEscaped(nil, row) }

func columnPrefix(row, column string) []byte {
	return appendEscaped(appendEscaped(nil, row), column)
}

func appendVersionKey(dst []byte, row, column string, ts int64) []byte {
	dst = appendEscaped(appendEscaped(dst, row), column)
	return binary.BigEndian.AppendUint64(dst, uint64(math.MaxInt64-ts))
}

type parsedKey struct {
	row, column string
	ts          int64
}

func parseKey(k []byte) (parsedKey, error) {
	row, rest, ok := readEscaped(k)
	if !ok {
		return parsedKey{}, fmt.Errorf("corrupt key %x", k)
	}
	column, rest, ok := readEscaped(rest)
	if !ok || len(rest) != 8 {
		return parsedKey{}, fmt.Errorf("corrupt key %x", k)
	}
	return parsedKey{row: row, column: column, ts: math.MaxInt64 - int64(binary.BigEndian.Uint64(rest))}, nil
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
	return s.call("put", func() error {
		return s.db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte(table))
			if err != nil {
				return err
			}
			return putCells(b, cells)
		})
	})
}

func putCells(b *bolt.Bucket, cells []store.Cell) error {
	// bbolt keeps the key of a Put until the transaction ends: the keys
	// are cut from a few large buffers rather than allocated one by one
	// (a checkpoint puts a million cells).
	var keys []byte
	c := b.Cursor()
	for _, cell := range cells {
		if need := 2*(len(cell.Row)+len(cell.Column)) + 4 + 8; cap(keys)-len(keys) < need {
			keys = make([]byte, 0, max(need, 64<<10))
		}
		at := len(keys)
		keys = appendVersionKey(keys, cell.Row, cell.Column, cell.Timestamp)
		k := keys[at:len(keys):len(keys)]
		if err := b.Put(k, cell.Value); err != nil {
			return err
		}
		if err := prune(c, k[:len(k)-8]); err != nil {
			return err
		}
	}
	return nil
}

// prune deletes the versions of the column whose escaped row and column
// are prefix beyond the newest Versions.
func prune(c *bolt.Cursor, prefix []byte) error {
	for {
		n := 0
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8; k, _ = c.Next() {
			if n++; n > Versions {
				break
			}
		}
		if n <= Versions {
			return nil
		}
		// Delete the first one too many, and look again: a bbolt cursor
		// may skip a key when moved on after a Delete.
		if err := c.Delete(); err != nil {
			return err
		}
	}
}

func (s *Store) Get(ctx context.Context, table, row string, asOf int64) ([]store.Cell, error) {
	if err := checkTable(table); err != nil {
		return nil, err
	}
	if row == "" {
		return nil, fmt.Errorf("%w: empty row", store.ErrInvalid)
	}
	var cells []store.Cell
	err := s.view(ctx, "get", table, func(b *bolt.Bucket) error {
		var r rowReader
		var err error
		cells, err = r.readRow(b.Cursor(), rowPrefix(row), row, asOf)
		return err
	})
	return cells, err
}

func (s *Store) view(ctx context.Context, op, table string, fn func(b *bolt.Bucket) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.call(op, func() error {
		return s.db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte(table))
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
	next  []byte // the key after a row (Scan)
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

// readRow reads row, whose escaped prefix is prefix: per column, the
// newest version <= asOf.
func (r *rowReader) readRow(c *bolt.Cursor, prefix []byte, row string, asOf int64) ([]store.Cell, error) {
	start := len(r.cells)
	var last []byte // the escaped column of the last cell read
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		rest := k[len(prefix):]
		if len(rest) < 8 {
			return nil, fmt.Errorf("corrupt key %x", k)
		}
		col := rest[:len(rest)-8]
		ts := math.MaxInt64 - int64(binary.BigEndian.Uint64(rest[len(rest)-8:]))
		if ts > asOf {
			continue
		}
		if len(r.cells) > start && bytes.Equal(col, last) {
			continue // an older version of a column already read
		}
		column, tail, ok := readEscaped(col)
		if !ok || len(tail) != 0 {
			return nil, fmt.Errorf("corrupt key %x", k)
		}
		r.cells = append(r.cells, store.Cell{Row: row, Column: column, Timestamp: ts, Value: r.value(v)})
		last = col
	}
	if len(r.cells) == start {
		return nil, nil
	}
	return r.cells[start:len(r.cells):len(r.cells)], nil
}

func (s *Store) Scan(ctx context.Context, table, start, stop string, asOf int64, fn func(row string, cells []store.Cell) error) error {
	if err := checkTable(table); err != nil {
		return err
	}
	// Read in chunks so that fn runs outside bbolt's transaction: it may
	// write to the store, and a long read transaction pins pages.
	const chunk = 512
	type rowCells struct {
		row   string
		cells []store.Cell
	}
	from := start
	inclusive := true
	for {
		var rows []rowCells
		err := s.view(ctx, "scan", table, func(b *bolt.Bucket) error {
			var r rowReader
			c := b.Cursor()
			k, _ := c.Seek(rowPrefix(from))
			for k != nil && len(rows) < chunk {
				row, rest, ok := readEscaped(k)
				if !ok {
					return fmt.Errorf("corrupt key %x", k)
				}
				if stop != "" && row >= stop {
					return nil
				}
				// The row's escaped prefix, in the transaction's memory
				// (valid while it lasts), and the first key after the row.
				prefix := k[:len(k)-len(rest)]
				r.next = append(r.next[:0], prefix...)
				r.next[len(r.next)-1] = 2 // prefix ends with the terminator 0x00 0x01
				if row == from && !inclusive {
					k, _ = c.Seek(r.next)
					continue
				}
				cells, err := r.readRow(c, prefix, row, asOf)
				if err != nil {
					return err
				}
				if len(cells) > 0 {
					rows = append(rows, rowCells{row, cells})
				}
				k, _ = c.Seek(r.next)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, r := range rows {
			if err := fn(r.row, r.cells); err != nil {
				return err
			}
		}
		if len(rows) < chunk {
			return nil
		}
		from, inclusive = rows[len(rows)-1].row, false
	}
}

func (s *Store) DeleteNewer(ctx context.Context, table, start, stop string, ts int64) error {
	return s.deleteWhere(ctx, table, start, stop, func(v int64) bool { return v > ts })
}

func (s *Store) DeleteUpTo(ctx context.Context, table, start, stop string, ts int64) error {
	return s.deleteWhere(ctx, table, start, stop, func(v int64) bool { return v <= ts })
}

func (s *Store) deleteWhere(ctx context.Context, table, start, stop string, match func(int64) bool) error {
	if err := checkTable(table); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.call("delete", func() error {
		return s.db.Update(func(tx *bolt.Tx) error { return deleteIn(tx, table, start, stop, match) })
	})
}

func deleteIn(tx *bolt.Tx, table, start, stop string, match func(int64) bool) error {
	b := tx.Bucket([]byte(table))
	if b == nil {
		return nil
	}
	var doomed [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(rowPrefix(start)); k != nil; k, _ = c.Next() {
		pk, err := parseKey(k)
		if err != nil {
			return err
		}
		if stop != "" && pk.row >= stop {
			break
		}
		if match(pk.ts) {
			doomed = append(doomed, bytes.Clone(k))
		}
	}
	for _, k := range doomed {
		if err := b.Delete(k); err != nil {
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
		return s.db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte(table))
			if err != nil {
				return err
			}
			prefix := columnPrefix(row, column)
			k, v := b.Cursor().Seek(prefix)
			exists := k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8
			switch {
			case expected == nil && exists:
				return nil
			case expected != nil && (!exists || !bytes.Equal(v, expected)):
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
