package hbasestore

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/thrift/gen/hbase"
)

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
	return s.DeleteBetween(ctx, table, start, stop, ts, math.MaxInt64)
}

// DeleteBetween is DeleteNewer over the versions in (after, upTo] (a
// scan over [after+1, upTo+1)).
func (s *Store) DeleteBetween(ctx context.Context, table, start, stop string, after, upTo int64) error {
	if err := s.checkTable(table); err != nil {
		return err
	}
	// Nothing is stored at MaxInt64, so nothing is newer than MaxInt64-1.
	if after >= math.MaxInt64-1 || upTo <= after || (stop != "" && stop <= start) {
		return nil
	}
	if ok, err := s.ensureTable(ctx, table, false); err != nil || !ok {
		return err
	}
	// Versions hidden behind VERSIONS newer ones reappear once those are
	// deleted (until a compaction drops them), so a row that showed the
	// full VERSIONS versions of a column is scanned again on its own.
	again, err := s.deleteNewer(ctx, table, start, stop, after, upTo)
	for _, row := range again {
		// Each pass deletes at least Versions versions of the row; the
		// bound only guards against a gateway that ignores deletes.
		for pass := 0; err == nil && pass < 1000; pass++ {
			var more []string
			if more, err = s.deleteNewer(ctx, table, row, row+"\x00", after, upTo); len(more) == 0 {
				break
			}
		}
	}
	if err != nil {
		s.noteError(table, err)
	}
	return err
}

// deleteNewer is one pass of DeleteBetween; it returns the rows to scan
// again.
func (s *Store) deleteNewer(ctx context.Context, table, start, stop string, after, upTo int64) ([]string, error) {
	name := s.dataName(table)
	stamp := int64(math.MaxInt64) // the range's end is exclusive
	if upTo < math.MaxInt64-1 {
		stamp = upTo + 1
	}
	scan := s.newScan(start, stop, &hbase.TTimeRange{MinStamp: max(after+1, 0), MaxStamp: stamp})
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
		// The frame carries the expected value too: a commit row's is as
		// large as the put.
		return false, tooBig(err, putSize(put)+len(expected))
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
