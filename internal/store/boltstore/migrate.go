package boltstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The layout before (files written up to 2026-12-02): every table a
// bucket at the top level, every version of a column one key: the
// escaped row, the escaped column, then the timestamp inverted (8 bytes,
// big-endian) so that the newest version comes first.

type oldKey struct {
	row, column string
	ts          int64
}

// parseOldKey parses a key of the layout before.
func parseOldKey(k []byte) (oldKey, error) {
	row, rest, ok := readEscaped(k)
	if !ok {
		return oldKey{}, fmt.Errorf("corrupt key %x", k)
	}
	column, rest, ok := readEscaped(rest)
	if !ok || len(rest) != 8 {
		return oldKey{}, fmt.Errorf("corrupt key %x", k)
	}
	return oldKey{row: row, column: column, ts: math.MaxInt64 - int64(binary.BigEndian.Uint64(rest))}, nil
}

// migrateChunk is how many keys of the layout before one transaction of
// the migration moves at most (and the rest of the versions of its last
// column): a transaction holds what it writes in memory.
const migrateChunk = 1 << 18

// errCorruptOld marks a key of the layout before that does not parse:
// damage.
var errCorruptOld = errors.New("corrupt key")

// migrate moves every table of the layout before into tablesBucket,
// rewriting its keys, and returns the number of columns moved. Each
// transaction moves whole columns from the front of one old table
// (deleting them there) and the last one deletes the emptied table, so
// that a crash at any point leaves every column in exactly one of the
// two layouts, with all its versions, and the next open goes on from
// there. opts.migrateChunk bounds the keys a transaction moves (0:
// migrateChunk); opts.migrateHook, if set, runs in each transaction
// before its commit ("moved") and after it ("committed"): tests. It logs
// its start with the keys to move, its progress every
// migrateProgressEvery (by opts.Now) and its end: it takes tens of
// seconds a million cells, before the store opens and any port answers.
func migrate(db *bolt.DB, log *slog.Logger, opts Options) (int, error) {
	chunk, hook, now := opts.migrateChunk, opts.migrateHook, opts.Now
	if chunk <= 0 {
		chunk = migrateChunk
	}
	if hook == nil {
		hook = func(string) {}
	}
	if now == nil {
		now = time.Now
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists([]byte(tablesBucket))
		return err
	}); err != nil {
		return 0, err
	}
	start := now()
	columns, tables := 0, 0
	var total, moved int // keys of the layout before: all, and moved so far
	lastLog := start
	for {
		var name []byte
		err := db.View(func(tx *bolt.Tx) error {
			return tx.ForEach(func(n []byte, _ *bolt.Bucket) error {
				if oldTable(n) {
					name = bytes.Clone(n)
					return errStop
				}
				return nil
			})
		})
		if err != nil && !errors.Is(err, errStop) {
			return columns, err
		}
		if name == nil {
			break
		}
		if tables++; tables == 1 {
			if err := db.View(func(tx *bolt.Tx) error {
				total = oldKeys(tx)
				return nil
			}); err != nil {
				return columns, err
			}
			log.Info("store file is of the layout before; migrating it before the store opens (no port answers until it is done; a stop resumes at the next start)",
				"path", db.Path(), "keys", total)
		}
		for done := false; !done; {
			var n, keys int
			err := db.Update(func(tx *bolt.Tx) error {
				var err error
				n, keys, done, err = migrateSome(tx, name, chunk)
				if err == nil {
					hook("moved")
				}
				return err
			})
			if err != nil {
				return columns, fmt.Errorf("migrate table %q: %w", name, err)
			}
			columns += n
			moved += keys
			hook("committed")
			if t := now(); t.Sub(lastLog) >= migrateProgressEvery {
				lastLog = t
				log.Info("migrating store file", "path", db.Path(), "table", string(name), "keys_moved", moved, "keys", total,
					"percent", fmt.Sprintf("%.1f", 100*float64(moved)/float64(max(total, 1))), "columns", columns, "elapsed", t.Sub(start).Round(time.Second).String())
			}
		}
	}
	if tables > 0 {
		log.Info("store file migrated", "path", db.Path(), "tables", tables, "columns", columns, "keys", moved, "took", now().Sub(start).Round(time.Millisecond).String())
	}
	return columns, nil
}

var errStop = errors.New("stop")

// oldTable reports whether a top-level bucket is a table of the layout
// before (not the tables, not a part's record).
func oldTable(name []byte) bool {
	return string(name) != tablesBucket && string(name) != partsBucket
}

// migrateProgressEvery is how often a migration logs its progress.
const migrateProgressEvery = 5 * time.Second

// oldKeys counts the keys of the tables of the layout before.
func oldKeys(tx *bolt.Tx) int {
	n := 0
	_ = tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		if oldTable(name) {
			n += b.Stats().KeyN
		}
		return nil
	})
	return n
}

// migrateSome moves the first columns of the old table name into the
// new layout, about chunk keys of them, and deletes them there; keys
// counts the keys of the layout before it moved, and done says the old
// table is gone.
func migrateSome(tx *bolt.Tx, name []byte, chunk int) (columns, keys int, done bool, err error) {
	old := tx.Bucket(name)
	nb, err := tx.Bucket([]byte(tablesBucket)).CreateBucketIfNotExists(name)
	if err != nil {
		return 0, 0, false, err
	}
	var a arena
	var doomed [][]byte
	var key, scratch, val []byte // the column being gathered: its key, a key read, its value
	versions := 0
	flush := func() error {
		if key == nil {
			return nil
		}
		// A column is never in both layouts, but were it so, both lists
		// of versions are merged rather than one lost.
		if prev := nb.Get(key); prev != nil {
			rest, err := versionsOf(val)
			if err != nil {
				return err
			}
			merged := prev
			for len(rest) > 0 {
				ts, v, next, err := nextVersion(rest)
				if err != nil {
					return err
				}
				if merged, err = putVersion(nil, merged, ts, v); err != nil {
					return err
				}
				rest = next
			}
			val = merged
		}
		columns++
		return nb.Put(key, a.take(append(a.room(len(val)), val...)))
	}
	c := old.Cursor()
	k, v := c.First()
	for ; k != nil; k, v = c.Next() {
		if v == nil {
			return 0, 0, false, fmt.Errorf("%w %x: a nested table, which this store never writes", errCorruptOld, k)
		}
		pk, err := parseOldKey(k)
		if err != nil {
			return 0, 0, false, fmt.Errorf("%w %x", errCorruptOld, k)
		}
		scratch = appendCellKey(scratch[:0], pk.row, pk.column)
		if key == nil || !bytes.Equal(scratch, key) {
			if len(doomed) >= chunk {
				break
			}
			if err := flush(); err != nil {
				return 0, 0, false, err
			}
			key = a.take(append(a.room(len(scratch)), scratch...))
			val = append(val[:0], versionsFormat)
			versions = 0
		}
		// The layout before gives a column's versions newest first and
		// kept no more than Versions of them (more are dropped here, as
		// its next put would have).
		if versions < Versions {
			val = appendVersion(val, pk.ts, v)
			versions++
		}
		doomed = append(doomed, a.take(append(a.room(len(k)), k...)))
	}
	if err := flush(); err != nil {
		return 0, 0, false, err
	}
	if k == nil {
		return columns, len(doomed), true, tx.DeleteBucket(name)
	}
	for _, d := range doomed {
		if err := old.Delete(d); err != nil {
			return 0, 0, false, err
		}
	}
	return columns, len(doomed), false, nil
}
