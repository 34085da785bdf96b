package boltstore

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/freeway-dev/freeway/internal/store"
)

// Parts. A store is one bbolt file or several, its parts, each row in
// one of them by a hash of the row (partIndex): bbolt writes one
// transaction at a time per file, and a Put of many rows (a checkpoint
// of a million cells) is bbolt's search and insert of every key on one
// core; split over the parts, their transactions run at once, one
// goroutine a part. A Put is then atomic per row, not across rows, which
// is what store.Store promises (HBase's atomicity). Reads take the row's
// part (Get, CheckAndPut) or merge every part's rows (Scan).
//
// The first file is at the store's path, part i at partPath(path, i).
// Every file of a store of several parts holds, in the top-level bucket
// partsBucket, the store's identity (random, made with it), its index
// and the number of parts, so that a part missing, damaged, or of
// another store is found at open: the parts are then damaged as one
// (moved aside together, see the package comment). A new store gets
// defaultParts() parts; a store keeps the number it was made with (a
// file made before parts is a store of one part, and gets no
// partsBucket). The other parts are made first and the first file's
// record last, so that a crash while a store is made leaves a first
// file without a record and no table: made again at the next open
// (the other files found then are moved aside).

// partsBucket is the top-level bucket of a file of a store of several
// parts: "store" (the identity), "part" (the index), "of" (the number).
const partsBucket = "\x00parts"

// maxParts bounds the parts of a store (and the files a damaged one
// has moved aside).
const maxParts = 16

// defaultParts is the number of parts of a new store: one a CPU, up to
// four (the checkpoints' writers are what runs in parallel).
func defaultParts() int { return max(1, min(runtime.NumCPU(), 4)) }

// partPath is where part i (> 0) of the store at path is.
func partPath(path string, i int) string { return path + ".part" + strconv.Itoa(i) }

// partOf returns the part that holds row.
func (s *Store) partOf(row string) *bolt.DB {
	return s.parts[partIndex(row, len(s.parts))]
}

// partIndex is the part of row among n: a hash of the row's bytes
// (FNV-1a's step eight bytes at a time, then murmur3's finalizer, so that
// its low bits depend on every byte), stable across processes and
// versions: it is part of the format.
func partIndex(row string, n int) int {
	if n == 1 {
		return 0
	}
	h := uint64(14695981039346656037)
	for ; len(row) >= 8; row = row[8:] {
		w := uint64(row[0]) | uint64(row[1])<<8 | uint64(row[2])<<16 | uint64(row[3])<<24 |
			uint64(row[4])<<32 | uint64(row[5])<<40 | uint64(row[6])<<48 | uint64(row[7])<<56
		h = (h ^ w) * 1099511628211
	}
	for i := 0; i < len(row); i++ {
		h = (h ^ uint64(row[i])) * 1099511628211
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	return int(h % uint64(n))
}

// split returns cells by part, each in the order given, and the parts
// that have any.
func (s *Store) split(cells []store.Cell) ([][]store.Cell, []int) {
	if len(s.parts) == 1 {
		return [][]store.Cell{cells}, []int{0}
	}
	by := make([][]store.Cell, len(s.parts))
	for _, c := range cells {
		k := partIndex(c.Row, len(s.parts))
		if by[k] == nil {
			by[k] = make([]store.Cell, 0, len(cells)/len(s.parts)+len(cells)/8+1)
		}
		by[k] = append(by[k], c)
	}
	var ks []int
	for k := range by {
		if len(by[k]) > 0 {
			ks = append(ks, k)
		}
	}
	return by, ks
}

// callParts is call for an operation on the parts ks at once: fn(k) for
// each, on a goroutine of its own but the first's (one part: none). A
// panic or fault in any is damage (call); else the errors are joined.
func (s *Store) callParts(op string, ks []int, fn func(k int) error) error {
	if len(ks) == 1 {
		return s.call(op, func() error { return fn(ks[0]) })
	}
	s.mu.Lock()
	broken := s.broken
	s.mu.Unlock()
	if broken != nil {
		return broken
	}
	errs := make([]error, len(ks))
	panics := make([]any, len(ks))
	var wg sync.WaitGroup
	for i := 1; i < len(ks); i++ {
		wg.Go(func() { panics[i] = guarded(func() { errs[i] = fn(ks[i]) }) })
	}
	panics[0] = guarded(func() { errs[0] = fn(ks[0]) })
	wg.Wait()
	for _, r := range panics {
		if r != nil {
			return s.markDamaged(op, r)
		}
	}
	return errors.Join(errs...)
}

// allParts lists every part's index.
func (s *Store) allParts() []int {
	ks := make([]int, len(s.parts))
	for k := range ks {
		ks[k] = k
	}
	return ks
}

// partsRecord is what partsBucket holds.
type partsRecord struct {
	id      string
	part, n int
}

// readParts reads the parts record of a file: found false if it has
// none; an error if what it has does not parse.
func readParts(tx *bolt.Tx) (rec partsRecord, found bool, err error) {
	b := tx.Bucket([]byte(partsBucket))
	if b == nil {
		return rec, false, nil
	}
	rec.id = string(b.Get([]byte("store")))
	part, err1 := strconv.Atoi(string(b.Get([]byte("part"))))
	n, err2 := strconv.Atoi(string(b.Get([]byte("of"))))
	if rec.id == "" || err1 != nil || err2 != nil || n < 2 || n > maxParts || part < 0 || part >= n {
		return rec, true, fmt.Errorf("its parts record does not parse (store %q, part %q of %q)",
			b.Get([]byte("store")), b.Get([]byte("part")), b.Get([]byte("of")))
	}
	rec.part, rec.n = part, n
	return rec, true, nil
}

func writeParts(db *bolt.DB, rec partsRecord) error {
	return db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(partsBucket))
		if err != nil {
			return err
		}
		for k, v := range map[string]string{"store": rec.id, "part": strconv.Itoa(rec.part), "of": strconv.Itoa(rec.n)} {
			if err := b.Put([]byte(k), []byte(v)); err != nil {
				return err
			}
		}
		return nil
	})
}

// openParts opens and checks every file of the store at path, making a
// new store of opts.parts parts (0: defaultParts) if the first file has
// no table and no parts record. It returns the open parts, or damage
// saying why the store is damaged (a file damaged, a part missing or of
// another store), or err for failures that say nothing about the files.
// The part files there are checked at the same time as the first one
// (openFiles), before its record says how many it has: the check reads
// every key.
func openParts(path string, opts Options, log *slog.Logger) (dbs []*bolt.DB, damage string, err error) {
	paths := []string{path}
	for i := 1; i < maxParts; i++ {
		p := partPath(path, i)
		if _, err := os.Lstat(p); err != nil {
			break
		}
		paths = append(paths, p)
	}
	files := openFiles(paths, opts, log)
	closeFrom := func(k int) {
		for _, f := range files[k:] {
			if f.db != nil {
				guarded(func() { _ = f.db.Close() })
			}
		}
	}
	if files[0].err != nil || files[0].damage != "" {
		closeFrom(1)
		return nil, files[0].damage, files[0].err
	}
	db0 := files[0].db
	fail := func(damage string, err error) ([]*bolt.DB, string, error) {
		closeFrom(0)
		for _, db := range dbs[min(len(dbs), len(files)):] {
			guarded(func() { _ = db.Close() })
		}
		return nil, damage, err
	}
	var rec partsRecord
	var found, empty bool
	var rerr error
	if r := guarded(func() {
		err = db0.View(func(tx *bolt.Tx) error {
			rec, found, rerr = readParts(tx)
			tables := tx.Bucket([]byte(tablesBucket))
			empty = tables == nil
			if !empty {
				k, _ := tables.Cursor().First()
				empty = k == nil
			}
			return nil
		})
	}); r != nil {
		return fail(fmt.Sprintf("bbolt panicked reading it: %v", r), nil)
	}
	switch {
	case err != nil:
		return fail("", fmt.Errorf("open store %s: %w", path, err))
	case rerr != nil:
		return fail(rerr.Error(), nil)
	case found && rec.part != 0:
		return fail(fmt.Sprintf("it is part %d of %d of a store, not its first file", rec.part, rec.n), nil)
	case found:
		for i := 1; i < rec.n; i++ {
			p := partPath(path, i)
			if i >= len(files) {
				return fail(fmt.Sprintf("its part %d of %d, %s, is missing", i, rec.n, p), nil)
			}
			if f := files[i]; f.err != nil || f.damage != "" {
				return fail(prefixed("part "+p+": ", f.damage), f.err)
			}
			db := files[i].db
			var got partsRecord
			var ok bool
			if r := guarded(func() { err = db.View(func(tx *bolt.Tx) error { got, ok, rerr = readParts(tx); return nil }) }); r != nil {
				return fail(fmt.Sprintf("part %s: bbolt panicked reading it: %v", p, r), nil)
			}
			switch {
			case err != nil:
				return fail("", fmt.Errorf("open store %s: %w", p, err))
			case rerr != nil:
				return fail("part "+p+": "+rerr.Error(), nil)
			case !ok || got != partsRecord{rec.id, i, rec.n}:
				return fail(fmt.Sprintf("part %s is not part %d of %d of this store (its record: %+v)", p, i, rec.n, got), nil)
			}
		}
		closeFrom(rec.n) // files beyond its parts: of no store, left as they are
		for _, f := range files[:rec.n] {
			dbs = append(dbs, f.db)
		}
		return dbs, "", nil
	case !empty:
		closeFrom(1)
		return []*bolt.DB{db0}, "", nil // made before parts: one part
	}
	closeFrom(1)
	files = files[:1]
	dbs = []*bolt.DB{db0}
	n := opts.parts
	if n == 0 {
		n = defaultParts()
	}
	if n == 1 {
		return dbs, "", nil
	}
	id := make([]byte, 8)
	if _, err := rand.Read(id); err != nil {
		return fail("", fmt.Errorf("open store %s: %w", path, err))
	}
	rec = partsRecord{id: hex.EncodeToString(id), n: min(n, maxParts)}
	for i := 1; i < rec.n; i++ {
		p := partPath(path, i)
		if _, err := os.Lstat(p); err == nil {
			aside, err := moveAside(p, opts.Now())
			if err != nil {
				return fail("", fmt.Errorf("open store %s: move aside %s, a file of no store: %w", path, p, err))
			}
			log.Warn("a part file without the store's first file (or of an earlier store) was moved aside; a new store is made",
				"path", p, "moved_to", aside)
		}
		db, damage, err := openChecked(p, opts, log)
		if err != nil || damage != "" {
			return fail(prefixed("part "+p+": ", damage), err)
		}
		dbs = append(dbs, db)
		if err := writeParts(db, partsRecord{rec.id, i, rec.n}); err != nil {
			return fail("", fmt.Errorf("open store %s: %w", p, err))
		}
	}
	if err := writeParts(db0, rec); err != nil {
		return fail("", fmt.Errorf("open store %s: %w", path, err))
	}
	log.Info("new store", "path", path, "parts", rec.n)
	return dbs, "", nil
}

// openedFile is what openChecked gave for one file.
type openedFile struct {
	db     *bolt.DB
	damage string
	err    error
}

// openFiles opens and checks the files at paths at once, one goroutine
// each but the first's.
func openFiles(paths []string, opts Options, log *slog.Logger) []openedFile {
	files := make([]openedFile, len(paths))
	var wg sync.WaitGroup
	for k := 1; k < len(paths); k++ {
		wg.Go(func() { files[k].db, files[k].damage, files[k].err = openChecked(paths[k], opts, log) })
	}
	files[0].db, files[0].damage, files[0].err = openChecked(paths[0], opts, log)
	wg.Wait()
	return files
}

func prefixed(prefix, damage string) string {
	if damage == "" {
		return ""
	}
	return prefix + damage
}

// moveAsideAll moves every file of the store at path aside (moveAside):
// the first file and any part file there is.
func moveAsideAll(path string, now time.Time) ([]string, error) {
	var asides []string
	for i := range maxParts {
		p := path
		if i > 0 {
			p = partPath(path, i)
			if _, err := os.Lstat(p); err != nil {
				continue
			}
		}
		aside, err := moveAside(p, now)
		if err != nil {
			return asides, err
		}
		asides = append(asides, aside)
	}
	return asides, nil
}
