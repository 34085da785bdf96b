// Package boltstore implements store.Store in one embedded bbolt file: the
// default store on one machine (bolt:///path/to/file.db).
//
// A table is a bbolt bucket. Each version is one key, built so that bbolt's
// byte order is the store's order: escaped row, escaped column, then the
// timestamp inverted, so the newest version of a column comes first. Every
// write is a bbolt transaction, fsynced before it returns.
package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/freeway-dev/freeway/internal/store"
)

// Versions is how many versions of a column are kept; older ones are
// pruned when a newer one is written.
const Versions = store.MinVersions

// Store is a store.Store in a bbolt file.
type Store struct {
	db   *bolt.DB
	path string
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the bbolt file at path. It fails if
// another process holds the file.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o644, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open store %s: locked by another process", path)
		}
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return &Store{db: db, path: path}, nil
}

func (s *Store) String() string { return "bolt://" + s.path }

func (s *Store) Close() error { return s.db.Close() }

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

func versionKey(row, column string, ts int64) []byte {
	k := columnPrefix(row, column)
	return binary.BigEndian.AppendUint64(k, uint64(math.MaxInt64-ts))
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
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(table))
		if err != nil {
			return err
		}
		return putCells(b, cells)
	})
}

func putCells(b *bolt.Bucket, cells []store.Cell) error {
	for _, c := range cells {
		if err := b.Put(versionKey(c.Row, c.Column, c.Timestamp), c.Value); err != nil {
			return err
		}
		if err := prune(b, c.Row, c.Column); err != nil {
			return err
		}
	}
	return nil
}

// prune deletes the versions of row/column beyond the newest Versions.
func prune(b *bolt.Bucket, row, column string) error {
	prefix := columnPrefix(row, column)
	c := b.Cursor()
	n := 0
	var stale [][]byte
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8; k, _ = c.Next() {
		n++
		if n > Versions {
			stale = append(stale, append([]byte(nil), k...))
		}
	}
	for _, k := range stale {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) Get(ctx context.Context, table, row string, asOf int64) ([]store.Cell, error) {
	if err := checkTable(table); err != nil {
		return nil, err
	}
	if row == "" {
		return nil, fmt.Errorf("%w: empty row", store.ErrInvalid)
	}
	var cells []store.Cell
	err := s.view(ctx, table, func(b *bolt.Bucket) error {
		var err error
		cells, err = readRow(b.Cursor(), rowPrefix(row), asOf)
		return err
	})
	return cells, err
}

func (s *Store) view(ctx context.Context, table string, fn func(b *bolt.Bucket) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(table))
		if b == nil {
			return nil
		}
		return fn(b)
	})
}

// readRow reads the row whose escaped prefix is prefix: per column, the
// newest version <= asOf.
func readRow(c *bolt.Cursor, prefix []byte, asOf int64) ([]store.Cell, error) {
	var cells []store.Cell
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		pk, err := parseKey(k)
		if err != nil {
			return nil, err
		}
		if pk.ts > asOf {
			continue
		}
		if n := len(cells); n > 0 && cells[n-1].Column == pk.column {
			continue // an older version of a column already read
		}
		cells = append(cells, store.Cell{Row: pk.row, Column: pk.column, Timestamp: pk.ts, Value: bytes.Clone(v)})
	}
	return cells, nil
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
		err := s.view(ctx, table, func(b *bolt.Bucket) error {
			c := b.Cursor()
			k, _ := c.Seek(rowPrefix(from))
			for k != nil && len(rows) < chunk {
				pk, err := parseKey(k)
				if err != nil {
					return err
				}
				if stop != "" && pk.row >= stop {
					return nil
				}
				prefix := rowPrefix(pk.row)
				if pk.row == from && !inclusive {
					k, _ = c.Seek(nextRowKey(prefix))
					continue
				}
				cells, err := readRow(c, prefix, asOf)
				if err != nil {
					return err
				}
				if len(cells) > 0 {
					rows = append(rows, rowCells{pk.row, cells})
				}
				k, _ = c.Seek(nextRowKey(prefix))
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

// nextRowKey is the first key after every key with the escaped row prefix.
func nextRowKey(prefix []byte) []byte {
	// prefix ends with the terminator 0x00 0x01; no key of this row sorts
	// after prefix[:len-1]+0x02.
	k := bytes.Clone(prefix)
	k[len(k)-1] = 2
	return k
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
	return s.db.Update(func(tx *bolt.Tx) error {
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
	})
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
	err := s.db.Update(func(tx *bolt.Tx) error {
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
	return applied, err
}
