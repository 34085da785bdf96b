package diskqueue

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func msgOf(seq uint64) string { return fmt.Sprintf("m%03d.", seq) }

// fillSegments appends one entry per call ("m001." for sequence number 1,
// ...) until there are at least three segments and the last holds at
// least three records; it returns the next sequence number.
func fillSegments(t *testing.T, q *Queue, dir string) uint64 {
	t.Helper()
	for seq := uint64(1); ; seq++ {
		mustAppend(t, q, []Entry{{Category: "cat", Message: []byte(msgOf(seq)), Time: int64(seq)}})
		segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
		if len(segs) < 3 {
			continue
		}
		first, _ := parseSegName(filepath.Base(segs[len(segs)-1]))
		if seq+1-first >= 3 {
			return seq + 1
		}
	}
}

// fillV2Segments writes what fillSegments makes, as an agent before
// format v3 did: three v2 segments of four records.
func fillV2Segments(t *testing.T, dir string) uint64 {
	t.Helper()
	inc := newIncarnation(t)
	for first := uint64(1); first <= 9; first += 4 {
		var es []Entry
		for seq := first; seq < first+4; seq++ {
			es = append(es, Entry{Category: "cat", Message: []byte(msgOf(seq)), Time: int64(seq)})
		}
		writeV2Segment(t, dir, first, inc, es)
	}
	return 13
}

// format is a segment format the damage tests run on: how to fill a
// queue with single-entry records, and where a record's message lies
// after its header.
type format struct {
	name   string
	hdr    int64 // record header bytes
	msgOff int64 // from the record's start to its message
	fill   func(t *testing.T, dir string, mut func(*Options)) uint64
}

var formats = []format{
	{name: "v3", hdr: v3RecHeaderSize, msgOff: v3RecHeaderSize + 8 + 1 + 3 + 1,
		fill: func(t *testing.T, dir string, mut func(*Options)) uint64 {
			q, _ := open(t, dir, mut)
			defer q.Close()
			return fillSegments(t, q, dir)
		}},
	{name: "v2", hdr: recHeaderSize, msgOff: recHeaderSize + 8 + 1 + 3,
		fill: func(t *testing.T, dir string, _ func(*Options)) uint64 { return fillV2Segments(t, dir) }},
}

// findRecord returns the segment holding the record of seq and the
// offset of its header.
func findRecord(t *testing.T, dir string, seq uint64, f format) (string, int64) {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	for _, s := range segs {
		b, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.Index(b, []byte(msgOf(seq))); i >= 0 {
			return s, int64(i) - f.msgOff
		}
	}
	t.Fatalf("record %d not found", seq)
	return "", 0
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// A flipped byte in a record, its payload or any byte of its header, used
// to lose every record after it in its segment (or, in the last segment
// at open, everything after it, truncated as a torn tail). Now it loses
// exactly that record, in a sealed segment and in the last one at open,
// counts it in Stats.Lost and logs an error naming the file and offset.
func TestDamageLosesOnlyTheDamagedRecord(t *testing.T) {
	for _, f := range formats {
		offsets := map[string]int64{"payload": f.msgOff + 2}
		for i := range f.hdr {
			offsets[fmt.Sprintf("header byte %d", i)] = i
		}
		for _, where := range []string{"sealed segment", "last segment at open"} {
			for what, delta := range offsets {
				t.Run(f.name+"/"+where+"/"+what, func(t *testing.T) { testDamageLosesOnlyTheDamagedRecord(t, f, where, delta) })
			}
		}
	}
}

func testDamageLosesOnlyTheDamagedRecord(t *testing.T, f format, where string, delta int64) {
	dir := t.TempDir()
	small := func(o *Options) { o.SegmentBytes = 256 }
	next := f.fill(t, dir, small)
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	victim := next - 2
	if where == "sealed segment" {
		victim = 2
	}
	seg, hdr := findRecord(t, dir, victim, f)
	if last := seg == segs[len(segs)-1]; last != (where == "last segment at open") {
		t.Fatalf("record %d is in %s, the last segment is %s", victim, seg, segs[len(segs)-1])
	}
	flipByte(t, seg, hdr+delta)

	q, lb := open(t, dir, small)
	defer q.Close()
	var got []string
	for st := q.Stats(); st.Acked < st.NextSeq; st = q.Stats() {
		b := read(t, q, 1<<20, 1000)
		for i, e := range b.Entries {
			if want := msgOf(b.First + uint64(i)); string(e.Message) != want {
				t.Fatalf("entry %d of a batch from %d is %q, want %q", i, b.First, e.Message, want)
			}
		}
		got = append(got, messages(b.Entries)...)
		if err := q.Ack(b); err != nil {
			t.Fatal(err)
		}
	}
	var want []string
	for s := uint64(1); s < next; s++ {
		if s != victim {
			want = append(want, msgOf(s))
		}
	}
	if strings.Join(got, "") != strings.Join(want, "") {
		t.Fatalf("read %v, want every record but %d: %v", got, victim, want)
	}
	if st := q.Stats(); st.Lost != 1 || st.Bytes != 0 {
		t.Fatalf("stats %+v, want Lost 1 and no bytes left", st)
	}
	logs := lb.String()
	if !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, filepath.Base(seg)) || !strings.Contains(logs, "offset=") {
		t.Fatalf("no error naming the segment and offset: %s", logs)
	}
	if first := mustAppend(t, q, []Entry{{Category: "cat", Message: []byte(msgOf(next))}}); first != next {
		t.Fatalf("append after the damage got %d, want %d", first, next)
	}
	if b := read(t, q, 1<<20, 10); b.First != next || string(b.Entries[0].Message) != msgOf(next) {
		t.Fatalf("read after the damage: %d %v", b.First, messages(b.Entries))
	}
}

// The segment header is written twice: a damaged copy costs nothing. Both
// copies damaged cost that segment's entries, counted exactly.
func TestDamagedSegmentHeader(t *testing.T) {
	for _, c := range []struct {
		name    string
		offsets []int64
		lost    int64
	}{
		{"first copy", []int64{20}, 0},
		{"second copy", []int64{v2BlockSize + 20}, 0},
		{"both copies", []int64{5, v2BlockSize + 9}, -1},
	} {
		for _, f := range formats {
			t.Run(f.name+"/"+c.name, func(t *testing.T) {
				dir := t.TempDir()
				small := func(o *Options) { o.SegmentBytes = 256 }
				next := f.fill(t, dir, small)
				segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
				victim := segs[1]
				first, _ := parseSegName(filepath.Base(victim))
				last, _ := parseSegName(filepath.Base(segs[2]))
				for _, off := range c.offsets {
					flipByte(t, victim, off)
				}
				want := c.lost
				if want < 0 {
					want = int64(last - first)
				}
				q, lb := open(t, dir, small)
				defer q.Close()
				got := len(drain(t, q))
				if st := q.Stats(); st.Lost != want || int64(got)+want != int64(next-1) || st.Bytes != 0 {
					t.Fatalf("read %d of %d, stats %+v, want %d lost", got, next-1, st, want)
				}
				if want > 0 && !strings.Contains(lb.String(), "queue segment header damaged") {
					t.Fatalf("no error about the header: %s", lb.String())
				}
			})
		}
	}
}
