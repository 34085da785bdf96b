package boltstore

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ErrDamaged marks the errors of a store whose file is damaged.
var ErrDamaged = errors.New("store file is damaged")

// DefaultCheckBudget bounds the consistency check at open. bbolt checks
// about 500 MB a second from the page cache, so the budget only cuts the
// check of a file of many gigabytes short.
const DefaultCheckBudget = 30 * time.Second

// whySafe is what the log line of a damaged file says about the data it
// held.
const whySafe = "the store holds only Puma checkpoints and copier progress: Puma rebuilds its state by " +
	"re-reading the segments from the dfs, exactly while the dfs still holds every segment of a bucket (once " +
	"dfs_retention deleted some, answers over their time say incomplete), and the copier copies again " +
	"idempotently, skipping what its destination already has"

// markerSuffix names the file that records damage found while running,
// so that the next open moves the file aside even if its check passes.
const markerSuffix = ".damaged"

// guarded runs fn, which reads bbolt pages, turning a panic (bbolt
// panics on pages that make no sense) or a memory fault (a page beyond
// the end of a truncated file) into a returned value.
func guarded(fn func()) (panicked any) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() { panicked = recover() }()
	fn()
	return nil
}

// openChecked opens the bbolt file at path and checks it. It returns the
// open database, or damage saying why the file is damaged, or err for
// failures that say nothing about the file (locked, permissions, I/O).
//
// The file is opened read-only twice before it is opened for writing.
// The first open reads only the meta pages, to find a file cut short
// before anything reads a page it lost (the free list, read at a
// read-write open, is written at the end, so a cut usually takes it). The
// second loads the free list under guard, so that bbolt's consistency
// check, which runs in a goroutine of its own where a fault cannot be
// recovered, finds it loaded.
func openChecked(path string, opts Options, log *slog.Logger) (db *bolt.DB, damage string, err error) {
	budget := opts.CheckBudget
	if info, err := os.Stat(path); err == nil && info.Size() > 0 && budget >= 0 {
		ro, damage, err := boltOpen(path, true, false)
		if err != nil || damage != "" {
			return nil, damage, err
		}
		var used int64
		r := guarded(func() { err = ro.View(func(tx *bolt.Tx) error { used = tx.Size(); return nil }) })
		guarded(func() { _ = ro.Close() })
		switch {
		case r != nil:
			return nil, fmt.Sprintf("bbolt panicked reading it: %v", r), nil
		case err != nil:
			return nil, "", fmt.Errorf("open store %s: %w", path, err)
		case used > info.Size():
			return nil, fmt.Sprintf("the file is %d bytes but its pages reach byte %d: it was cut short", info.Size(), used), nil
		}
		ro, damage, err = boltOpen(path, true, true)
		if err != nil || damage != "" {
			return nil, damage, err
		}
		damage = check(ro, info.Size(), path, budget, log)
		guarded(func() { _ = ro.Close() })
		if damage != "" {
			return nil, damage, nil
		}
	}
	db, damage, err = boltOpen(path, false, true)
	if err != nil || damage != "" {
		return nil, damage, err
	}
	var merr error
	r := guarded(func() { _, merr = migrate(db, log, opts) })
	switch {
	case r != nil:
		damage = fmt.Sprintf("bbolt panicked migrating it: %v", r)
	case errors.Is(merr, errCorruptOld):
		damage = "migrating it: " + merr.Error()
	case merr != nil:
		err = fmt.Errorf("open store %s: %w", path, merr)
	default:
		return db, "", nil
	}
	guarded(func() { _ = db.Close() })
	return nil, damage, err
}

// validColumn checks a key and value of a table.
func validColumn(k, v []byte) error {
	if _, _, err := parseCellKey(k); err != nil {
		return err
	}
	rest, err := versionsOf(v)
	for err == nil && len(rest) > 0 {
		_, _, rest, err = nextVersion(rest)
	}
	if err != nil {
		return fmt.Errorf("key %x: %w", k, err)
	}
	return nil
}

// mmapSize is the least size of the file's mapping when open for
// writing: bbolt maps the file again whenever it outgrows the mapping,
// which copies every key and value the writing transaction holds out of
// the old mapping first (a checkpoint's chunk of 64 Ki cells) and waits
// for every reader. Address space only: what is not in the file is never
// read.
const mmapSize = 1 << 30

// pageSize is the page size of the files this package creates. bbolt
// writes each page of a commit with a pwrite of its own and searches a
// key down one page per level; 16 KiB pages (bbolt's default is the OS
// page, 4 KiB) make the first checkpoint of 1 M new cells a fifth
// faster (one branch level fewer, a quarter of the pwrites), and a
// later checkpoint that changes 10 % of the cells faster still, but one
// that changes 1 % writes about twice the bytes (a changed cell
// writes its whole leaf): bench/PROFILE.md, "(ckpt4)". It is written in
// the file's meta pages, and bbolt reads it from there when it opens an
// existing file: files made with another page size keep theirs (no
// migration), and any version of this package reads either.
const pageSize = 16 << 10

// boltOpen opens path with bbolt, turning its panics and faults, and its
// errors that mean a damaged file, into damage. freeList loads the free
// list at open (always done for writing).
func boltOpen(path string, readOnly, freeList bool) (db *bolt.DB, damage string, err error) {
	var file *os.File
	opts := &bolt.Options{Timeout: time.Second, ReadOnly: readOnly, PreLoadFreelist: freeList, OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
		f, err := os.OpenFile(name, flag, perm)
		file = f
		return f, err
	}}
	if !readOnly {
		opts.InitialMmapSize = mmapSize
		opts.PageSize = pageSize
	}
	if r := guarded(func() { db, err = bolt.Open(path, 0o644, opts) }); r != nil {
		// Release the file and its lock; bbolt's mapping of the damaged
		// file cannot be undone from here and stays until the process
		// ends.
		if file != nil {
			_ = file.Close()
		}
		return nil, fmt.Sprintf("bbolt could not open it: %v", r), nil
	}
	if err != nil {
		switch {
		case errors.Is(err, berrors.ErrTimeout):
			return nil, "", fmt.Errorf("open store %s: locked by another process", path)
		case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch),
			strings.HasPrefix(err.Error(), "file size too small"):
			return nil, "bbolt could not open it: " + err.Error(), nil
		}
		return nil, "", fmt.Errorf("open store %s: %w", path, err)
	}
	return db, "", nil
}

// check looks for damage in a file open read-only, with its free list
// loaded and no page past its end: every key of every table read back
// (bbolt panics on a page that makes no sense), then bbolt's own
// consistency check (page references, the free list, key order). It
// stops reading keys after budget, and runs bbolt's check only when
// reading the keys took less than a third of it: bbolt's check reads
// every page again and cannot be stopped.
func check(db *bolt.DB, size int64, path string, budget time.Duration, log *slog.Logger) (damage string) {
	start := time.Now()
	var keys int
	var partly bool // the budget cut the check short
	var err error
	r := guarded(func() {
		err = db.View(func(tx *bolt.Tx) error {
			readKeys := func(name []byte, b *bolt.Bucket, valid func(k, v []byte) error) error {
				c := b.Cursor()
				for k, v := c.First(); k != nil; k, v = c.Next() {
					if v == nil {
						return fmt.Errorf("table %q holds a nested table %x, which this store never writes", name, k)
					}
					if err := valid(k, v); err != nil {
						return fmt.Errorf("table %q: %w", name, err)
					}
					if keys++; keys%4096 == 0 && time.Since(start) > budget {
						return errBudgetSpent
					}
				}
				return nil
			}
			err := tx.ForEach(func(name []byte, b *bolt.Bucket) error {
				if string(name) == partsBucket {
					_, _, err := readParts(tx) // what it says is checked by openParts
					return err
				}
				if string(name) != tablesBucket {
					// A table of the layout before, to migrate.
					return readKeys(name, b, func(k, _ []byte) error { _, err := parseOldKey(k); return err })
				}
				c := b.Cursor()
				for name, v := c.First(); name != nil; name, v = c.Next() {
					if v != nil {
						return fmt.Errorf("the tables hold a key %x that is not a table", name)
					}
					if err := readKeys(name, b.Bucket(name), validColumn); err != nil {
						return err
					}
				}
				return nil
			})
			if errors.Is(err, errBudgetSpent) {
				partly = true
				return nil
			}
			if err != nil {
				return err
			}
			if time.Since(start) > budget/3 {
				partly = true
				return nil
			}
			var errs []string
			for err := range tx.Check() {
				if len(errs) < 3 {
					errs = append(errs, err.Error())
				}
			}
			if len(errs) > 0 {
				return fmt.Errorf("bbolt's consistency check: %s", strings.Join(errs, "; "))
			}
			return nil
		})
	})
	switch {
	case r != nil:
		return fmt.Sprintf("bbolt panicked reading it: %v", r)
	case err == nil && partly:
		log.Warn("store file too large to check in full at open; checked part of it",
			"path", path, "bytes", size, "keys_read", keys, "budget", budget)
		return ""
	case err != nil:
		return err.Error()
	}
	log.Debug("store file checked", "path", path, "bytes", size, "keys", keys, "took", time.Since(start))
	return ""
}

var errBudgetSpent = errors.New("check budget spent")

// moveAside renames a damaged file to <path>.damaged-<UTC time>, never
// over an existing file, and makes the rename durable.
func moveAside(path string, now time.Time) (string, error) {
	base := path + ".damaged-" + now.UTC().Format("20060102T150405Z")
	aside := base
	for i := 2; ; i++ {
		if _, err := os.Lstat(aside); errors.Is(err, os.ErrNotExist) {
			break
		}
		aside = fmt.Sprintf("%s-%d", base, i)
	}
	if err := os.Rename(path, aside); err != nil {
		return "", err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync() // best effort: the file is aside either way, and a rename lost in a crash is found damaged again
		_ = d.Close()
	}
	return aside, nil
}
