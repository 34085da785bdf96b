// The part of HBase's Thrift2 gateway API that internal/store/hbasestore
// uses (THBaseService, served by org.apache.hadoop.hbase.thrift2.ThriftServer).
//
// Source: hbase-thrift/src/main/resources/org/apache/hadoop/hbase/thrift2/hbase.thrift
// of Apache HBase 2.6.1 (as shipped in org.apache.hbase:hbase-thrift:2.6.1,
// branch-2.6). This is a hand-written subset, not a copy: every struct,
// field, enum value and method kept here has the id, type and default of the
// original, because only those travel on the wire. Fields left out are ones
// we never send; when the gateway sends them (TColumnValue.tags and .type,
// TResult.stale and .partial) the generated readers skip them.
//
// Semantics worth knowing, from HBase's documentation of the same structs:
//   - TTimeRange is [minStamp, maxStamp): the upper bound is exclusive.
//   - A TDelete without columns deletes the whole row; with timestamp set, only
//     versions <= timestamp. Without a timestamp HBase uses the server's clock,
//     which would mask every later put at a smaller timestamp: always set one.
//   - TDelete.deleteType defaults to DELETE_COLUMNS (all versions <= the
//     column's timestamp); DELETE_COLUMN removes exactly one version.
//   - checkAndPut with value unset checks that the column does not exist.

namespace go hbase

struct TTimeRange {
  1: required i64 minStamp,
  2: required i64 maxStamp
}

// A column family and optionally a qualifier and timestamp.
struct TColumn {
  1: required binary family,
  2: optional binary qualifier,
  3: optional i64 timestamp
}

// One cell. HBase 2.6 also has 5: optional binary tags, 6: optional byte type.
struct TColumnValue {
  1: required binary family,
  2: required binary qualifier,
  3: required binary value,
  4: optional i64 timestamp
}

// A row's cells, sorted by family then qualifier. An absent row has no row
// and no columnValues. HBase 2.6 also has 3: stale, 4: partial (bools).
struct TResult {
  1: optional binary row,
  2: required list<TColumnValue> columnValues
}

enum TDeleteType {
  DELETE_COLUMN = 0,
  DELETE_COLUMNS = 1,
  DELETE_FAMILY = 2,
  DELETE_FAMILY_VERSION = 3
}

// A read of one row. If timestamp and timeRange are both set, HBase ignores
// the range. HBase 2.6 has fields up to 15 (filters, consistency, ...).
struct TGet {
  1: required binary row,
  2: optional list<TColumn> columns,
  3: optional i64 timestamp,
  4: optional TTimeRange timeRange,
  5: optional i32 maxVersions
}

// A write to one row, atomic on that row. Cells without a timestamp get the
// put's timestamp, or the server's clock. HBase 2.6 also has 5: attributes,
// 6: durability, 7: cellVisibility.
struct TPut {
  1: required binary row,
  2: required list<TColumnValue> columnValues,
  3: optional i64 timestamp
}

// A delete on one row. HBase 2.6 also has 6: attributes, 7: durability.
struct TDelete {
  1: required binary row,
  2: optional list<TColumn> columns,
  3: optional i64 timestamp,
  4: optional TDeleteType deleteType = 1
}

// A range scan over [startRow, stopRow). HBase 2.6 has fields up to 18
// (filters, reversed, limit, ...).
struct TScan {
  1: optional binary startRow,
  2: optional binary stopRow,
  3: optional list<TColumn> columns,
  4: optional i32 caching,
  5: optional i32 maxVersions = 1,
  6: optional TTimeRange timeRange,
  12: optional bool cacheBlocks
}

struct TTableName {
  1: optional binary ns,
  2: required binary qualifier
}

// HBase 2.6 has fields up to 20 (bloom filter, compression, TTL, ...).
struct TColumnFamilyDescriptor {
  1: required binary name,
  10: optional i32 maxVersions,
  11: optional i32 minVersions
}

// HBase 2.6 also has 3: attributes, 4: durability.
struct TTableDescriptor {
  1: required TTableName tableName,
  2: optional list<TColumnFamilyDescriptor> columns
}

// Any error from HBase, as the Java exception's class and message.
exception TIOError {
  1: optional string message,
  2: optional bool canRetry
}

exception TIllegalArgument {
  1: optional string message
}

service THBaseService {
  TResult get(
    1: required binary table,
    2: required TGet tget
  ) throws (1: TIOError io)

  void putMultiple(
    1: required binary table,
    2: required list<TPut> tputs
  ) throws (1: TIOError io)

  // value unset: the column must not exist. The Go code always sends field 5
  // (an argument cannot be optional), so a nil value arrives as an empty one;
  // HBase's region server treats an empty expected value exactly like an
  // absent one (it matches a missing column or an empty newest value).
  bool checkAndPut(
    1: required binary table,
    2: required binary row,
    3: required binary family,
    4: required binary qualifier,
    5: binary value,
    6: required TPut tput
  ) throws (1: TIOError io)

  // Always returns an empty list; a failure is a TIOError.
  list<TDelete> deleteMultiple(
    1: required binary table,
    2: required list<TDelete> tdeletes
  ) throws (1: TIOError io)

  i32 openScanner(
    1: required binary table,
    2: required TScan tscan
  ) throws (1: TIOError io)

  // Between zero and numRows rows; fewer than numRows means the scan ended.
  list<TResult> getScannerRows(
    1: required i32 scannerId,
    2: i32 numRows = 1
  ) throws (1: TIOError io, 2: TIllegalArgument ia)

  void closeScanner(
    1: required i32 scannerId
  ) throws (1: TIOError io, 2: TIllegalArgument ia)

  bool tableExists(
    1: TTableName tableName
  ) throws (1: TIOError io)

  // Synchronous: returns once the table's regions are online. HBase 2.6 also
  // has 2: optional list<binary> splitKeys; left unset, the table starts with
  // one region.
  void createTable(
    1: required TTableDescriptor desc
  ) throws (1: TIOError io)

  void disableTable(
    1: required TTableName tableName
  ) throws (1: TIOError io)

  void deleteTable(
    1: required TTableName tableName
  ) throws (1: TIOError io)
}
