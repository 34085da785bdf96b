//go:build linux

package diskqueue

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/testkit"
)

// crashSim is a FileHook that, before each change the queue makes to its
// files, takes what a crash at that moment would leave: killed (every
// byte written and every name as they are) and powered off (only what
// was synced: each file's bytes at its last sync, the segment names as
// the last directory sync left them). It follows files by inode, for a
// reused segment file is written under the name it was opened with.
type crashSim struct {
	t   *testing.T
	dir string
	// state of the workload, set by it between calls (one goroutine)
	returned, acked uint64

	nameIno  map[string]uint64 // every name seen, and its file
	synced   map[uint64][]byte // a file's bytes at its last sync
	dirNames map[string]uint64 // the segment names at the last directory sync
	snaps    []crashSnap
	spares   int // segment files kept for reuse
	rng      *rand.Rand
}

type crashSnap struct {
	at              string // the operation about to be made
	killed, powered map[string][]byte
	torn            map[string][]byte // powered off with some sectors written since the last sync
	returned, acked uint64            // entries before returned were answered; before acked, acknowledged
}

func newCrashSim(t *testing.T, dir string) *crashSim {
	return &crashSim{t: t, dir: dir, nameIno: map[string]uint64{}, synced: map[uint64][]byte{}, dirNames: map[string]uint64{}, rng: rand.New(rand.NewPCG(7, 7))}
}

// scan returns the files in dir by name, with their inodes.
func (c *crashSim) scan() map[string]uint64 {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		c.t.Error(err)
		return nil
	}
	m := map[string]uint64{}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		m[e.Name()] = fi.Sys().(*syscall.Stat_t).Ino
		c.nameIno[e.Name()] = m[e.Name()]
	}
	return m
}

func (c *crashSim) read(name string) []byte {
	b, err := os.ReadFile(filepath.Join(c.dir, name))
	if err != nil {
		c.t.Error(err)
	}
	return b
}

func isSegFile(name string) bool { return strings.Contains(name, segSuffix) }

func (c *crashSim) hook(op FileOp, path string) error {
	if filepath.Dir(path) != c.dir && path != c.dir {
		return nil // the directory's parent, at open
	}
	names := c.scan()
	s := crashSnap{at: string(op) + " " + filepath.Base(path), killed: map[string][]byte{}, powered: map[string][]byte{},
		returned: c.returned, acked: c.acked}
	for name, ino := range names {
		b := c.read(name)
		s.killed[name] = b
		if !isSegFile(name) {
			// The id and LOCK, and the ack file, whose first sync is
			// not the hook's: as they are unless synced since.
			if d, ok := c.synced[ino]; ok {
				b = d
			}
			s.powered[name] = b
		}
	}
	for name, ino := range c.dirNames {
		s.powered[name] = c.synced[ino] // nil: never synced, empty
	}
	// Torn: of what was written since the last sync, some sectors
	// reached the disk and some did not, and the size either.
	s.torn = maps.Clone(s.powered)
	for name, ino := range c.dirNames {
		now, ok := s.killed[name]
		if !ok || names[name] != ino {
			continue
		}
		old := c.synced[ino]
		b := make([]byte, len(old))
		if c.rng.IntN(2) == 0 {
			b = make([]byte, len(now))
		}
		for off := 0; off < len(b); off += 512 {
			src := old
			if c.rng.IntN(2) == 0 {
				src = now
			}
			for i := off; i < min(off+512, len(b)); i++ {
				if i < len(src) {
					b[i] = src[i]
				}
			}
		}
		s.torn[name] = b
	}
	c.snaps = append(c.snaps, s)
	switch op {
	case OpRename:
		if strings.HasPrefix(filepath.Base(path), "spare-") {
			c.spares++
		}
	case OpSync:
		ino, ok := c.nameIno[filepath.Base(path)]
		if !ok {
			c.t.Errorf("sync of %s, never seen", path)
			return nil
		}
		for name, i := range names {
			if i == ino {
				c.synced[ino] = c.read(name)
			}
		}
	case OpSyncDir:
		c.dirNames = map[string]uint64{}
		for name, ino := range names {
			if isSegFile(name) {
				c.dirNames[name] = ino
			}
		}
	}
	return nil
}

// TestCrashAtEveryFileOperation runs appends, reads and acknowledgements
// through many segment rolls (reusing acknowledged segments' files) and
// clean restarts, and opens what a crash would have left before each
// change to the files, killed or powered off: the entries read back are
// exactly those from the acknowledged position on, each once and with
// its number, every answered one among them, and nothing stale.
func TestCrashAtEveryFileOperation(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 4} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { testCrashAtEveryFileOperation(t, seed) })
	}
}

func testCrashAtEveryFileOperation(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 99))
	dir := testkit.MemDir(t, "diskqueue-crash-")
	sim := newCrashSim(t, dir)
	opts := func(o *Options) {
		o.SegmentBytes, o.Compress, o.CompressAbove, o.FileHook = 2048, seed%2 == 0, 0, sim.hook
	}
	q, _ := open(t, dir, opts)
	defer func() { q.Close() }()
	msgs := map[uint64]string{}
	var unacked []Batch
	readTo := uint64(1)
	for i := range 200 {
		es := make([]Entry, 1+rng.IntN(3))
		for j := range es {
			m := fmt.Sprintf("e%04d.%d-", i, j)
			es[j] = Entry{Category: "cat", Message: []byte(m + strings.Repeat("y", rng.IntN(400))), Time: int64(i)}
		}
		first := mustAppend(t, q, es)
		for j := range es {
			msgs[first+uint64(j)] = string(es[j].Message)
		}
		sim.returned = first + uint64(len(es))
		if rng.IntN(2) == 0 && readTo < sim.returned {
			b := read(t, q, 1<<20, 1+rng.IntN(6))
			if b.First != readTo {
				t.Fatalf("read from %d, want %d", b.First, readTo)
			}
			for j, e := range b.Entries {
				if want := msgs[b.First+uint64(j)]; string(e.Message) != want {
					t.Fatalf("read entry %d %.12q, want %.12q", b.First+uint64(j), e.Message, want)
				}
			}
			readTo = b.End()
			unacked = append(unacked, b)
		}
		if len(unacked) > 0 && rng.IntN(3) == 0 {
			k := rng.IntN(len(unacked))
			if err := q.Ack(unacked[k]); err != nil {
				t.Fatal(err)
			}
			sim.acked = unacked[k].End()
			unacked = unacked[k+1:]
		}
		if rng.IntN(60) == 0 {
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}
			q, _ = open(t, dir, opts)
			unacked, readTo = nil, q.Stats().Acked
		}
	}
	seen := map[uint64]bool{}
	checked := 0
	for i, s := range sim.snaps {
		for _, m := range []struct {
			name  string
			files map[string][]byte
		}{{"killed", s.killed}, {"powered off", s.powered}, {"torn", s.torn}} {
			h := fnv.New64a()
			_, _ = fmt.Fprint(h, s.returned, s.acked) // a hash's writes never fail
			for _, name := range slices.Sorted(maps.Keys(m.files)) {
				_, _ = fmt.Fprintf(h, "%s %d ", name, len(m.files[name]))
				h.Write(m.files[name])
			}
			if seen[h.Sum64()] {
				continue
			}
			seen[h.Sum64()] = true
			checked++
			if err := checkCrash(t, m.files, s, msgs, m.name != "torn"); err != nil {
				t.Fatalf("crash %d (%s) before %s: %v", i, m.name, s.at, err)
			}
		}
	}
	if st := q.Stats(); st.Lost != 0 {
		t.Fatalf("%d entries lost", st.Lost)
	}
	if sim.spares == 0 {
		t.Fatal("no segment file was kept for reuse: nothing is tested")
	}
	t.Logf("%d entries, %d crash points, %d distinct states checked, %d spares", len(msgs), len(sim.snaps), checked, sim.spares)
}

// checkCrash opens files as a queue directory and reads it through.
// With strict, no entry may be missing, not even of the append under way,
// and Open logs no error (a crash leaves a prefix of what was written).
func checkCrash(t *testing.T, files map[string][]byte, s crashSnap, msgs map[uint64]string, strict bool) error {
	dir := testkit.MemDir(t, "diskqueue-crash-")
	for name, b := range files {
		if name == "LOCK" {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	lb := &testkit.LogBuffer{}
	q, err := Open(Options{Dir: dir, MaxBytes: 1 << 30, SegmentBytes: 2048, Logger: slog.New(slog.NewTextHandler(lb, nil))})
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer q.Close()
	if strict && strings.Contains(lb.String(), "level=ERROR") {
		// Damage is a torn write's only: a crash that left a prefix
		// of what was written has nothing to report as an error.
		return fmt.Errorf("opened with an error logged: %s", lb.String())
	}
	st := q.Stats()
	if st.Acked < s.acked {
		return fmt.Errorf("acknowledged position %d, was %d", st.Acked, s.acked)
	}
	// Every entry from the acknowledged position to the last answered
	// one, in order, once each, with its number; after them, entries of
	// the append under way (not answered: some may be missing).
	next := st.Acked
	for next < st.NextSeq {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		b, err := q.Read(ctx, 1<<20, 1000)
		cancel()
		if err != nil {
			return fmt.Errorf("read from %d (next %d): %w", next, st.NextSeq, err)
		}
		if b.First != next && (b.First < next || next < s.returned) {
			return fmt.Errorf("batch starts at %d, want %d", b.First, next)
		}
		for i, e := range b.Entries {
			if want, ok := msgs[b.First+uint64(i)]; !ok || string(e.Message) != want {
				return fmt.Errorf("entry %d is %.12q, want %.12q", b.First+uint64(i), e.Message, want)
			}
		}
		next = b.End()
		if err := q.Ack(b); err != nil {
			return err
		}
	}
	if next < s.returned {
		return fmt.Errorf("read up to %d, but entries up to %d were answered", next, s.returned)
	}
	if st := q.Stats(); strict && st.Lost != 0 {
		return fmt.Errorf("%d entries lost", st.Lost)
	}
	return nil
}
