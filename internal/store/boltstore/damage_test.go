package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"

	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// filled writes a store of 3,000 cells in table "t" at path and closes
// it; every cell's value is its row name.
func filled(t *testing.T, path string) {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		var cells []store.Cell
		for j := range 10 {
			row := fmt.Sprintf("r%05d/%d", i, j)
			cells = append(cells, store.Cell{Row: row, Column: "v", Timestamp: 1, Value: []byte(row + strings.Repeat(".", 80))})
		}
		if err := s.Put(context.Background(), "t", cells); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// opened opens path with a log and a registry the test reads.
func opened(t *testing.T, path string) (*Store, *testkit.LogBuffer, *prometheus.Registry, error) {
	t.Helper()
	var log testkit.LogBuffer
	reg := prometheus.NewPedanticRegistry()
	s, err := OpenWith(path, Options{Log: slog.New(slog.NewTextHandler(&log, nil)), Metrics: reg})
	if err == nil {
		t.Cleanup(func() { s.Close() })
	}
	return s, &log, reg, err
}

func damageCount(t *testing.T, s *Store, found string) float64 {
	t.Helper()
	return testutil.ToFloat64(s.damaged.WithLabelValues(found))
}

// asides lists the files a damaged path was moved to.
func asides(t *testing.T, path string) []string {
	t.Helper()
	m, err := filepath.Glob(path + ".damaged-*")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// wantMovedAside checks that opening the damaged file at path moved it
// aside, byte for byte, said so once with the reason, counted it, and
// gave a fresh, working, empty store.
func wantMovedAside(t *testing.T, path string, damaged []byte, reason string) {
	t.Helper()
	s, log, _, err := opened(t, path)
	if err != nil {
		t.Fatalf("open of a damaged file: %v", err)
	}
	moved := asides(t, path)
	if len(moved) != 1 {
		t.Fatalf("moved aside to %v", moved)
	}
	if b, err := os.ReadFile(moved[0]); err != nil || !bytes.Equal(b, damaged) {
		t.Fatalf("the file moved aside is not the damaged file (%v)", err)
	}
	if strings.Count(log.String(), "level=ERROR") != 1 || !strings.Contains(log.String(), "store file is damaged; moved it aside and started a fresh one") ||
		!strings.Contains(log.String(), reason) || !strings.Contains(log.String(), "re-reading the segments from the dfs") ||
		!strings.Contains(log.String(), filepath.Base(moved[0])) {
		t.Fatalf("log:\n%s\nwant one error line with %q", log, reason)
	}
	if n := damageCount(t, s, "open"); n != 1 {
		t.Fatalf("damage at open counted %v times", n)
	}
	ctx := context.Background()
	if cells, err := s.Get(ctx, "t", "r00000/0", store.Latest); err != nil || len(cells) != 0 {
		t.Fatalf("fresh store: %v %v", cells, err)
	}
	if err := s.Put(ctx, "t", []store.Cell{{Row: "a", Column: "c", Timestamp: 1, Value: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	if cells, err := s.Get(ctx, "t", "a", store.Latest); err != nil || len(cells) != 1 {
		t.Fatalf("fresh store after a put: %v %v", cells, err)
	}
}

// pages lists the page ids of the file by type ("branch", "leaf",
// "meta", "freelist"), and gives the page size and the bytes in use
// (bbolt grows a file ahead of its use).
func pages(t *testing.T, path string) (map[string][]int, int, int64) {
	t.Helper()
	db, err := bolt.Open(path, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out := map[string][]int{}
	var used int64
	err = db.View(func(tx *bolt.Tx) error {
		used = tx.Size()
		for id := 0; ; id++ {
			info, err := tx.Page(id)
			if err != nil {
				return err
			}
			if info == nil {
				return nil
			}
			out[info.Type] = append(out[info.Type], id)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, db.Info().PageSize, used
}

func damage(t *testing.T, path string, fn func(b []byte)) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fn(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestTruncatedFileIsMovedAside(t *testing.T) {
	for _, c := range []struct {
		name   string
		keep   func(used int64, size int) int64
		reason string
	}{
		{"half", func(used int64, size int) int64 { return used / 2 }, "cut short"},
		{"last page", func(used int64, size int) int64 { return used - int64(size) }, "cut short"},
		{"meta pages only", func(used int64, size int) int64 { return int64(2 * size) }, "cut short"},
		{"into the meta pages", func(used int64, size int) int64 { return 5000 }, "bbolt could not open it"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "store.db")
			filled(t, path)
			_, size, used := pages(t, path)
			b := damage(t, path, func(b []byte) {})
			b = b[:c.keep(used, size)]
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			wantMovedAside(t, path, b, c.reason)
		})
	}
	// bbolt grows its file ahead of use: a cut of the unused tail loses
	// nothing and is not damage.
	path := filepath.Join(t.TempDir(), "store.db")
	filled(t, path)
	_, _, used := pages(t, path)
	if err := os.Truncate(path, used); err != nil {
		t.Fatal(err)
	}
	s, _, _, err := opened(t, path)
	if err != nil || len(asides(t, path)) != 0 {
		t.Fatalf("%v %v", err, asides(t, path))
	}
	if got, err := s.Get(context.Background(), "t", "r00299/9", store.Latest); err != nil || len(got) != 1 {
		t.Fatalf("%v %v", got, err)
	}
}

func TestFlippedPageBytesAreFound(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	filled(t, path)
	kinds, size, _ := pages(t, path)
	if len(kinds["branch"]) == 0 || len(kinds["leaf"]) < 2 || len(kinds["freelist"]) == 0 {
		t.Fatalf("pages %v: the test tests too little", kinds)
	}
	pristine, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		page   int
		damage func(p []byte)
		reason string
	}{
		{"branch page id", kinds["branch"][0], func(p []byte) { p[0] ^= 0x5a }, "self identifies"},
		{"leaf page type", kinds["leaf"][1], func(p []byte) { p[8] = 0x40 }, "panicked"},
		// The count (a uint16 at 10) raised by 256, past the elements
		// the page holds. (One lowered hides the last keys of the leaf
		// and is not found: bbolt keeps no checksums. Flipping the low
		// byte raised the count of a 4 KiB leaf, of fewer than 128 keys
		// here, but lowers that of a 16 KiB one.)
		{"leaf element count", kinds["leaf"][1], func(p []byte) { p[11] ^= 0x01 }, ""},
		{"leaf key bytes", kinds["leaf"][1], func(p []byte) {
			for i := 100; i < size; i += 37 {
				p[i] ^= 0xff
			}
		}, ""},
		{"both meta pages", 0, func(p []byte) { p[16+4] ^= 1; p[size+16+4] ^= 1 }, "bbolt could not open it"},
		{"freelist page", kinds["freelist"][0], func(p []byte) { p[16] ^= 0x01 }, ""},
		// A count of 0xffff says the real count is the first uint64: a
		// large one sends the free list's reader past the mapping, which
		// must happen under guard, not in bbolt's check goroutine. Twice
		// the file in ids: past the read-only mapping, which is the file
		// rounded up to a power of two (the file itself is grown 16 MiB
		// at a time once the writer's mapping is larger).
		{"freelist count", kinds["freelist"][0], func(p []byte) {
			p[10], p[11] = 0xff, 0xff
			binary.LittleEndian.PutUint64(p[16:], uint64(len(pristine))/8*2)
		}, "bbolt could not open it"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := os.WriteFile(path, pristine, 0o644); err != nil {
				t.Fatal(err)
			}
			for _, m := range asides(t, path) {
				os.Remove(m)
			}
			b := damage(t, path, func(b []byte) { c.damage(b[c.page*size:]) })
			wantMovedAside(t, path, b, c.reason)
		})
	}
}

// TestRandomDamageNeverKillsTheProcess: random bytes flipped in random
// pages never crash Open or a read; the file is moved aside, or it opens
// and every read either answers or fails with an error. (bbolt keeps no
// checksum of data pages, so a flip inside a value can go unseen.)
func TestRandomDamageNeverKillsTheProcess(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "store.db")
	filled(t, path)
	pristine, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The pages in use: bbolt grows the file ahead of them (16 MiB at a
	// time with the store's mapping), and a flip in that tail is no
	// damage to find.
	_, size, used := pages(t, path)
	rng := rand.New(rand.NewPCG(1, 2))
	found := 0
	const rounds = 60
	for round := range rounds {
		b := bytes.Clone(pristine)
		page := 2 + rng.IntN(int(used)/size-2)
		for range 1 + rng.IntN(8) {
			b[page*size+rng.IntN(size)] ^= byte(1 + rng.IntN(255))
		}
		p := filepath.Join(dir, fmt.Sprintf("r%d.db", round))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := OpenWith(p, Options{})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if len(asides(t, p)) == 1 {
			found++
		}
		err = s.Scan(context.Background(), "t", "", "", store.Latest, func(string, []store.Cell) error { return nil })
		if err != nil && !errors.Is(err, ErrDamaged) {
			t.Logf("round %d: scan: %v", round, err)
		}
		s.Close()
	}
	t.Logf("%d of %d damaged files found at open", found, rounds)
	if found == 0 {
		t.Fatal("no damage found: the test tests nothing")
	}
}

// TestDamageWhileRunning: a page damaged under an open store makes the
// call that meets it fail with ErrDamaged instead of panicking, every
// later call too, is counted, and the next open moves the file aside
// even though nothing else is wrong with it.
func TestDamageWhileRunning(t *testing.T) {
	for _, c := range []struct {
		name   string
		damage func(path string, root, size int)
		want   string
	}{
		{"flipped page id", func(path string, root, size int) {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte{0xee}, int64(root*size)); err != nil {
				t.Fatal(err)
			}
		}, "self identifies"},
		{"truncated", func(path string, root, size int) {
			if err := os.Truncate(path, int64(2*size)); err != nil {
				t.Fatal(err)
			}
		}, "invalid memory address"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "store.db")
			filled(t, path)
			kinds, size, _ := pages(t, path)
			s, log, reg, err := opened(t, path)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if cells, err := s.Get(ctx, "t", "r00010/3", store.Latest); err != nil || len(cells) != 1 {
				t.Fatalf("%v %v", cells, err)
			}
			c.damage(path, kinds["branch"][0], size)
			_, err = s.Get(ctx, "t", "r00010/3", store.Latest)
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "restart") {
				t.Fatalf("read of a damaged page: %v", err)
			}
			if err := s.Put(ctx, "t", []store.Cell{{Row: "a", Column: "c", Value: []byte("x")}}); !errors.Is(err, ErrDamaged) {
				t.Fatalf("put after damage: %v", err)
			}
			if _, err := s.CheckAndPut(ctx, "t", "a", "c", nil, []store.Cell{{Row: "a", Column: "c", Value: []byte("x")}}); !errors.Is(err, ErrDamaged) {
				t.Fatalf("check-and-put after damage: %v", err)
			}
			if n := damageCount(t, s, "run"); n != 1 {
				t.Fatalf("damage while running counted %v times", n)
			}
			if got, err := testutil.GatherAndCount(reg, "freeway_store_damaged_total"); err != nil || got != 2 {
				t.Fatalf("registered series: %d %v", got, err)
			}
			if strings.Count(log.String(), "store file is damaged; every call fails until a restart moves it aside") != 1 {
				t.Fatalf("log:\n%s", log)
			}
			s.Close()
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			wantMovedAside(t, path, b, "a call of an earlier run found it damaged")
			if _, err := os.Stat(path + markerSuffix); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("marker left behind: %v", err)
			}
		})
	}
}

// TestCheckBudget: a check cut short by its budget says so and opens the
// file.
func TestCheckBudget(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var cells []store.Cell
	for i := range 10_000 {
		cells = append(cells, store.Cell{Row: fmt.Sprint(i), Column: "v", Value: []byte("x")})
	}
	if err := s.Put(context.Background(), "t", cells); err != nil {
		t.Fatal(err)
	}
	s.Close()
	var log testkit.LogBuffer
	s, err = OpenWith(path, Options{Log: slog.New(slog.NewTextHandler(&log, nil)), CheckBudget: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !strings.Contains(log.String(), "store file too large to check in full at open") || len(asides(t, path)) != 0 {
		t.Fatalf("log:\n%s", log.String())
	}
	if got, err := s.Get(context.Background(), "t", "9999", store.Latest); err != nil || len(got) != 1 {
		t.Fatalf("%v %v", got, err)
	}
}
