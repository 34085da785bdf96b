// Package store is the contract for Freeway's durable table store: Puma's
// checkpoints and the copier's progress. It is an embedded bbolt file on
// one machine and HBase (through its Thrift2 gateway) on a cluster, so its
// shape is HBase's, reduced to what Freeway needs:
//
//   - A table holds rows; a row holds columns; a column holds versions,
//     each a value with an int64 timestamp chosen by the writer.
//   - Reads take an as-of timestamp and see, per column, the newest version
//     whose timestamp is at most as-of. That is how Puma recovers exactly:
//     it writes a checkpoint's cells with the checkpoint epoch as their
//     timestamp, commits by writing one commit row last, and on recovery
//     reads cells as of the committed epoch, ignoring later versions that
//     were written but never committed.
//   - CheckAndPut is atomic on one row: the commit point, and the fence that
//     stops a stale owner from committing over a newer one.
//   - Puts are atomic per row, not across rows.
//
// Tables are created on first use. Implementations keep at least
// MinVersions versions per column. storetest holds the conformance suite
// every implementation passes.
package store

import (
	"context"
	"errors"
	"math"
)

// Latest, as an as-of timestamp, reads the newest version.
const Latest int64 = math.MaxInt64

// MinVersions is how many versions of a column every implementation keeps
// at least (HBase's VERSIONS of the column family). Older ones may vanish.
const MinVersions = 3

// ErrInvalid wraps errors caused by arguments, such as an empty row key or a
// negative timestamp.
var ErrInvalid = errors.New("invalid argument")

// Cell is one version of one column of one row.
type Cell struct {
	Row       string
	Column    string
	Timestamp int64
	Value     []byte
}

// Store is a versioned table store.
type Store interface {
	// Put writes cells. Cells of one row are written atomically. A cell
	// with the same row, column and timestamp as an existing one replaces
	// it. Timestamps must be >= 0.
	Put(ctx context.Context, table string, cells []Cell) error

	// Get returns, for each column of row, the newest version with
	// timestamp <= asOf, sorted by column. A missing row gives no cells and
	// no error.
	Get(ctx context.Context, table, row string, asOf int64) ([]Cell, error)

	// Scan calls fn for each row whose key is in [start, stop) (stop ""
	// means no end) in key order, with that row's cells as Get would return
	// them. Rows with no version <= asOf are skipped. fn's error stops the
	// scan and is returned.
	Scan(ctx context.Context, table, start, stop string, asOf int64, fn func(row string, cells []Cell) error) error

	// DeleteNewer deletes every version with timestamp > ts of every column
	// of the rows in [start, stop). Recovery uses it to drop what an
	// uncommitted checkpoint left behind. Do not put a version again at a
	// timestamp deleted this way: on HBase, the delete marker keeps hiding
	// it until a major compaction.
	DeleteNewer(ctx context.Context, table, start, stop string, ts int64) error

	// DeleteBetween is DeleteNewer for the versions with timestamp > after
	// and <= upTo only: versions put above upTo, by a writer that knew of
	// no version up to it, are kept (Puma's recovery, purging what
	// attempts before its claim wrote, must not delete the cells of an
	// owner that claimed after it). Same caveat as DeleteNewer.
	DeleteBetween(ctx context.Context, table, start, stop string, after, upTo int64) error

	// DeleteUpTo deletes every version with timestamp <= ts of every
	// column of the rows in [start, stop): retention. Later puts must use
	// timestamps > ts, for the same reason as above.
	DeleteUpTo(ctx context.Context, table, start, stop string, ts int64) error

	// CheckAndPut atomically compares the newest version of row/column
	// with expected (nil: the column must not exist) and, if equal, writes
	// cells, which must all be in row. It reports whether it wrote.
	CheckAndPut(ctx context.Context, table, row, column string, expected []byte, cells []Cell) (bool, error)

	// String describes the store for logs, for example its URL.
	String() string

	// Close releases the store.
	Close() error
}

// PrefixEnd returns the smallest key greater than every key that starts
// with prefix: Scan(prefix, PrefixEnd(prefix)) visits exactly the rows with
// that prefix. It returns "" (no end) if there is no such key.
func PrefixEnd(prefix string) string {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return ""
}

// ValidTable reports whether name can name a table in every store: 1 to
// 200 letters, digits, "_", "." and "-", starting with a letter or digit
// (what HBase allows in a qualifier, after Freeway's table prefix).
func ValidTable(name string) bool {
	if name == "" || len(name) > 200 || !alnum(name[0]) {
		return false
	}
	for i := 1; i < len(name); i++ {
		if c := name[i]; !alnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

func alnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}
