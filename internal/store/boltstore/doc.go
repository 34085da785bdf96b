// Package boltstore implements store.Store in one embedded bbolt file: the
// default store on one machine (bolt:///path/to/file.db).
//
// Layout. A table is a bbolt bucket inside the bucket "\x00tables". Each
// column of a row is one key: the row escaped (0x00 becomes 0x00 0xff,
// then the terminator 0x00 0x01) and the column as is, so that bbolt's
// byte order is (row, column) order. Its value is a format byte (1) and
// the column's versions, newest first, at most Versions of them: each
// its timestamp and length as uvarints, then its bytes. A Put of a cell
// reads that value and writes it back with the new version in, one Get
// and one Put of one key; a Put of cells in key order (a checkpoint's)
// reads the old values with one cursor walked forward instead of a
// search each. The leaves a Put's commit splits are filled by half
// (bbolt's default: room for the next versions of their cells), but
// those of a run, a Put of new keys in ascending order with no stored
// key among them (a shard's first checkpoint, a new window's cells), are
// filled fully: half the pages to write, split by half again when their
// cells get their next versions. The fill is not part of the file's
// format: any version of this package reads either.
//
// Page size. Files this package creates have 16 KiB pages (since
// 2026-12-03; bbolt's default, the OS page of 4 KiB, before): fewer
// branch levels and a quarter of the pwrites for a checkpoint of many
// cells, at the cost of a whole 16 KiB leaf written for a few changed
// cells in it. bbolt records the page size in the file's meta pages and
// reads it from there: a file made with 4 KiB pages keeps them, and
// every version of this package reads both (no migration).
//
// Files of the layout before (up to 2026-12-02: tables at the top level,
// one key per version, the escaped row and column then the inverted
// timestamp) are migrated when opened, before Open returns: in
// transactions of about 256 Ki old keys, each moving whole columns from
// the front of an old table into the new layout and deleting them there,
// the last one deleting the emptied table, logging its start (the keys
// to move), its progress every 5 s and its end. A file of the layout
// before is recognised by any table at the top level. A binary from before this
// layout that opens a migrated file finds a nested table where it never
// writes one and treats the file as damaged (below): it moves the file
// aside and rebuilds.
//
// Parts (since 2026-12-03). A new store is several bbolt files, one a
// CPU up to four: the file at its path and <path>.part1, .part2, ...;
// each row lives in one of them by a hash of the row, and a Put of rows
// in several parts writes them in one transaction a part, all at once on
// goroutines of their own, so that a checkpoint of a million cells is
// bbolt's work on every core rather than one (parts.go). Every file of
// such a store records the store's identity, its index and the number
// of parts; a part missing, damaged or of another store damages the
// whole store (below). A file made before parts holds no such record
// and stays a store of one file; any version of this package reads
// either. A binary from before parts that opens the first file of a
// store of several finds a top-level bucket it takes for a table of the
// layout before, whose keys do not parse: it treats the file as damaged
// (moves it aside and rebuilds), never reads half the rows.
//
// What survives a crash. Every write is a bbolt transaction a part,
// fsynced before it returns: a crash keeps every call that returned, and
// of one that did not, none of any row (a Put of several rows may keep
// those of some parts: atomic per row, as store.Store says). A crash
// during a migration leaves each column in exactly one of the two
// layouts with all its versions; the next open goes on migrating from
// there (TestMigrationKilled kills a migrating process inside a
// transaction and between two).
//
// A damaged file. bbolt panics on a page that makes no sense, and a file
// cut short faults when its missing pages are read, which used to kill
// the process again at every start. Open checks the file (pages past its
// end; every key, and every value of the current layout, read back;
// bbolt's consistency check, within Options.CheckBudget) and recovers
// bbolt's panics and faults; a damaged file (or one whose migration
// meets a key that does not parse) is renamed to <file>.damaged-<UTC
// time> (never deleted), with every other file of its store, and a
// fresh one is created, with one error line
// saying what it costs: the store holds only Puma's checkpoints, which
// Puma rebuilds by re-reading the segments from the dfs, and the copier's
// progress, which it recopies idempotently. The rebuild is exact while
// the dfs holds every segment of a bucket; once dfs_retention deleted
// some, Puma's answers over their time say they are incomplete (README,
// "A damaged store is rebuilt"). Damage found by a call while
// running (a panic or fault recovered into an error) makes that call and
// every later one fail with ErrDamaged, and leaves a <file>.damaged
// marker so that the next start moves the file aside even if its check
// passes. Both are counted in freeway_store_damaged_total. bbolt keeps no
// checksums of data pages: a changed byte inside a value is not found
// here unless it breaks the versions' encoding; the reader of the value
// finds it only if the value no longer decodes (Puma then reports the
// shard failed).
package boltstore
