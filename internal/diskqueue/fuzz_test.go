package diskqueue

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// FuzzDamagedQueue damages one file of a queue (bytes XORed from an
// offset, optionally cut there) and opens and reads it again. The queue
// is one written by Append (format v3: calls of one to seven entries,
// compressed records) or by an agent before v3 (format v2, the old
// writer), chosen by bit 0x40 of the first byte. Whatever the damage: no
// panic and no hang; Open either works or says why; every entry read is
// the one appended under its sequence number, in order, once; and every
// entry of the segments the damage did not touch is read.
func FuzzDamagedQueue(f *testing.F) {
	const total = 150
	entryOf := func(seq uint64) Entry {
		return Entry{Category: "cat", Message: []byte(strings.Repeat(msgOf(seq), 8)), Time: int64(seq)}
	}
	type base struct {
		files map[string][]byte
		segs  []string
	}
	load := func(dir string) base {
		b := base{files: map[string][]byte{}}
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if e.Name() == "LOCK" {
				continue
			}
			data, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				f.Fatal(err)
			}
			b.files[e.Name()] = data
			if strings.HasSuffix(e.Name(), segSuffix) {
				b.segs = append(b.segs, e.Name())
			}
		}
		slices.Sort(b.segs)
		if len(b.segs) < 3 {
			f.Fatalf("%d segments, want several", len(b.segs))
		}
		return b
	}
	v3dir := f.TempDir()
	q, err := Open(Options{Dir: v3dir, MaxBytes: 1 << 30, SegmentBytes: 1 << 10, Compress: true})
	if err != nil {
		f.Fatal(err)
	}
	for seq := uint64(1); seq <= total; {
		var es []Entry
		for ; seq <= total && len(es) < 1+int(seq%7); seq++ {
			es = append(es, entryOf(seq))
		}
		if _, err := q.Append(es); err != nil {
			f.Fatal(err)
		}
	}
	if err := q.Close(); err != nil {
		f.Fatal(err)
	}
	v2dir := f.TempDir()
	inc := newIncarnation(f)
	for first := uint64(1); first <= total; first += 30 {
		var es []Entry
		for seq := first; seq < first+30; seq++ {
			es = append(es, entryOf(seq))
		}
		writeV2Segment(f, v2dir, first, inc, es)
	}
	bases := []base{load(v3dir), load(v2dir)}
	// In v3, the last segment is the empty one of the closed
	// incarnation; the records are in the ones before it.
	f.Add([]byte{0, 0, 40, 0xff})
	f.Add([]byte{1, 0, 0, 1, 2, 3, 4})
	f.Add([]byte{2, 0, 33, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0x80 | 2, 0, 100, 7})
	f.Add([]byte{3, 0, 0})
	f.Add([]byte{1, 0, 80, 0xff})
	f.Add([]byte{0x40 | 1, 0, 80, 0xff})
	f.Add([]byte{0x40 | 0x80 | 2, 1, 0, 9})
	f.Fuzz(func(t *testing.T, damage []byte) {
		if len(damage) < 3 {
			return
		}
		b := bases[0]
		if damage[0]&0x40 != 0 {
			b = bases[1]
		}
		files, segs := b.files, b.segs
		target := segs[int(damage[0]&0x3f)%len(segs)]
		cut := damage[0]&0x80 != 0
		off := int(damage[1])<<8 | int(damage[2])
		mask := damage[3:]
		dir := t.TempDir()
		for name, b := range files {
			b = slices.Clone(b)
			if name == target {
				off %= len(b) + 1
				for i, m := range mask {
					if off+i < len(b) {
						b[off+i] ^= m
					}
				}
				if cut {
					b = b[:min(len(b), off+len(mask))]
				}
			}
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		q, err := Open(Options{Dir: dir, MaxBytes: 1 << 30, SegmentBytes: 1 << 10, Compress: true})
		if err != nil {
			if err.Error() == "" {
				t.Fatal("open failed without saying why")
			}
			return
		}
		defer q.Close()
		firstOf := func(name string) uint64 { s, _ := parseSegName(name); return s }
		damagedFrom, damagedTo := firstOf(target), uint64(total+1)
		if i := slices.Index(segs, target); i+1 < len(segs) {
			damagedTo = firstOf(segs[i+1])
		}
		// Everything below the new incarnation's first number is what the
		// damaged queue holds: reading must get past it.
		end := q.Stats().NextSeq
		var got []uint64
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for next := uint64(1); next < end; {
			b, err := q.Read(ctx, 1<<20, 1000)
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("reading stalled before sequence %d (the queue holds up to %d; read %v)", next, end-1, got)
			}
			if err != nil {
				// A read error is allowed only where the damage is.
				break
			}
			next = b.End()
			for i, e := range b.Entries {
				seq := b.First + uint64(i)
				if seq > total {
					t.Fatalf("read sequence %d, only %d were appended", seq, total)
				}
				if want := entryOf(seq); string(e.Message) != string(want.Message) || e.Category != "cat" || e.Time != want.Time {
					t.Fatalf("sequence %d reads %q in %q, want %q", seq, e.Message, e.Category, want.Message)
				}
				if len(got) > 0 && seq <= got[len(got)-1] {
					t.Fatalf("sequence %d read after %d", seq, got[len(got)-1])
				}
				got = append(got, seq)
			}
		}
		for seq := uint64(1); seq <= total; seq++ {
			if (seq < damagedFrom || seq >= damagedTo) && !slices.Contains(got, seq) {
				t.Fatalf("sequence %d, outside the damaged segment %s (%d..%d), was not read (read %v)", seq, target, damagedFrom, damagedTo-1, got)
			}
		}
		if lost := q.Stats().Lost; int(lost)+len(got) > total {
			t.Fatalf("%d read and %d counted lost, of %d", len(got), lost, total)
		}
	})
}
