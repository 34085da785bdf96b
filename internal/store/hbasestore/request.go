package hbasestore

import (
	"fmt"
	"math"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/thrift/gen/hbase"
)

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
