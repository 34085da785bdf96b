package segment

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"
)

// encodeV1 builds a v1 segment, as Freeway wrote before v2.
func encodeV1(blocks ...*Block) []byte {
	buf := []byte(MagicV1)
	for _, b := range blocks {
		buf = AppendBlock(buf, b)
	}
	return buf
}

// encodeV2 builds a v2 segment and returns the offset of each block (and
// of the end).
func encodeV2(blocks ...*Block) ([]byte, []int64) {
	e := NewEncoder()
	buf := e.AppendHeader(nil)
	offs := []int64{int64(len(buf))}
	for _, b := range blocks {
		buf = e.AppendBlock(buf, b)
		offs = append(offs, int64(len(buf)))
	}
	return buf, offs
}

var sample = []*Block{
	{Agent: "agent-1/inc", Seqs: []uint64{42, 43, 90}, ArrivalMs: 1700000000123, Messages: [][]byte{[]byte("a"), {}, []byte("line\nwith newline")}},
	{Messages: [][]byte{[]byte("from a stock client")}, ArrivalMs: -5},
	{Agent: "x", Seqs: []uint64{}},
	{Agent: "y", Seqs: []uint64{7}, Messages: [][]byte{bytes.Repeat([]byte("z"), 300)}},
}

// readAll reads a segment to its end, collecting blocks and damage.
func readAll(t *testing.T, data []byte, offset int64) (blocks []Block, damage []*DamageError, r *Reader) {
	t.Helper()
	r, err := NewReader(bytes.NewReader(data), offset)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	for i := 0; ; i++ {
		if i > 1000 {
			t.Fatal("reader does not end")
		}
		var b Block
		err := r.Next(&b)
		if errors.Is(err, io.EOF) {
			return blocks, damage, r
		}
		var de *DamageError
		if errors.As(err, &de) {
			damage = append(damage, de)
			continue
		}
		if err != nil {
			t.Fatalf("next: %v", err)
		}
		blocks = append(blocks, cloneBlock(b))
	}
}

func cloneBlock(b Block) Block {
	c := Block{Agent: b.Agent, ArrivalMs: b.ArrivalMs, Seqs: append([]uint64(nil), b.Seqs...)}
	for _, m := range b.Messages {
		c.Messages = append(c.Messages, bytes.Clone(m))
	}
	return c
}

func sameBlock(got Block, want *Block) bool {
	if got.Agent != want.Agent || got.ArrivalMs != want.ArrivalMs || len(got.Messages) != len(want.Messages) || fmt.Sprint(got.Seqs) != fmt.Sprint(wantSeqs(want)) {
		return false
	}
	for j := range want.Messages {
		if !bytes.Equal(got.Messages[j], want.Messages[j]) {
			return false
		}
	}
	return true
}

// readsBack checks that the segment data (named name) reads back to its
// end as exactly blocks, undamaged.
func readsBack(t *testing.T, name string, data []byte, blocks []*Block) {
	t.Helper()
	got, damage, r := readAll(t, data, 0)
	if len(damage) != 0 || len(got) != len(blocks) {
		t.Fatalf("%s: %d blocks, damage %v", name, len(got), damage)
	}
	for i, want := range blocks {
		if !sameBlock(got[i], want) {
			t.Errorf("%s block %d = %+v, want %+v", name, i, got[i], want)
		}
	}
	if r.Offset() != int64(len(data)) {
		t.Errorf("%s: offset %d, want %d", name, r.Offset(), len(data))
	}
}

func TestRoundTrip(t *testing.T) {
	v2, offs := encodeV2(sample...)
	readsBack(t, "v1", encodeV1(sample...), sample)
	readsBack(t, "v2", v2, sample)
	if offs[0] != HeaderSizeV2 {
		t.Errorf("first v2 block at %d", offs[0])
	}
}

func TestBlockSizeIsAnUpperBound(t *testing.T) {
	e := NewEncoder()
	for _, b := range append([]*Block{{}}, sample...) {
		if got, bound := len(e.AppendBlock(nil, b)), BlockSize(b); got > bound {
			t.Fatalf("v2 encoded %d bytes, BlockSize %d", got, bound)
		}
		if got, bound := len(AppendBlock(nil, b)), BlockSize(b); got > bound {
			t.Fatalf("v1 encoded %d bytes, BlockSize %d", got, bound)
		}
	}
}

func TestResumeAtOffset(t *testing.T) {
	v2, offs := encodeV2(sample...)
	v1 := encodeV1(sample...)
	v1off := HeaderSize + int64(len(AppendBlock(nil, sample[0])))
	for name, c := range map[string]struct {
		data []byte
		off  int64
	}{"v1": {v1, v1off}, "v2": {v2, offs[1]}} {
		blocks, damage, r := readAll(t, c.data, c.off)
		if len(damage) != 0 || len(blocks) != len(sample)-1 || !sameBlock(blocks[0], sample[1]) {
			t.Fatalf("%s: resumed read: %d blocks, damage %v", name, len(blocks), damage)
		}
		if r.Offset() != int64(len(c.data)) {
			t.Fatalf("%s: offset %d want %d", name, r.Offset(), len(c.data))
		}
	}
}

// TestEveryDamagedByteCostsOneBlock flips each byte of a v2 segment in
// turn (and each bit of one block): the reader returns every other block
// exactly and reports the damage as one block, with its entry count when
// the header survived. A damaged file header costs nothing.
func TestEveryDamagedByteCostsOneBlock(t *testing.T) {
	data, offs := encodeV2(sample...)
	blockOf := func(pos int64) int {
		for i := 0; i+1 < len(offs); i++ {
			if pos >= offs[i] && pos < offs[i+1] {
				return i
			}
		}
		return -1 // file header
	}
	check := func(pos int64, mask byte) {
		bad := bytes.Clone(data)
		bad[pos] ^= mask
		blocks, damage, r := readAll(t, bad, 0)
		lostBlock := blockOf(pos)
		var want []*Block
		for i, b := range sample {
			if i != lostBlock {
				want = append(want, b)
			}
		}
		if len(blocks) != len(want) {
			t.Fatalf("byte %d ^%#x (block %d): %d blocks read, want %d; damage %v", pos, mask, lostBlock, len(blocks), len(want), damage)
		}
		for i := range want {
			if !sameBlock(blocks[i], want[i]) {
				t.Fatalf("byte %d ^%#x: block %d = %+v, want %+v", pos, mask, i, blocks[i], want[i])
			}
		}
		if lostBlock < 0 {
			if len(damage) != 0 || !r.Repaired() {
				t.Fatalf("byte %d of the file header: damage %v, repaired %v", pos, damage, r.Repaired())
			}
			return
		}
		if len(damage) != 1 || damage[0].Blocks != 1 || damage[0].Offset != offs[lostBlock] || !errors.Is(damage[0], ErrCorrupt) {
			t.Fatalf("byte %d ^%#x (block %d at %d): damage %+v", pos, mask, lostBlock, offs[lostBlock], damage)
		}
		inHeader := pos < offs[lostBlock]+BlockHeaderSize
		wantEntries := len(sample[lostBlock].Messages)
		if inHeader {
			wantEntries = -1
		}
		if d := damage[0]; d.Entries != wantEntries || (!d.Resumed && lostBlock != len(sample)-1) {
			t.Fatalf("byte %d ^%#x: damage %+v, want entries %d, resumed", pos, mask, d, wantEntries)
		}
		if r.Offset() != int64(len(data)) {
			t.Fatalf("byte %d: ended at offset %d, want %d", pos, r.Offset(), len(data))
		}
	}
	for pos := int64(0); pos < int64(len(data)); pos++ {
		check(pos, 0xff)
	}
	for pos := offs[1]; pos < offs[2]; pos++ {
		for bit := 0; bit < 8; bit++ {
			check(pos, 1<<bit)
		}
	}
}

func TestV1DamageLosesTheRest(t *testing.T) {
	data := encodeV1(sample...)
	bad := bytes.Clone(data)
	second := HeaderSize + int64(len(AppendBlock(nil, sample[0])))
	bad[second+10] ^= 0xff
	blocks, damage, _ := readAll(t, bad, 0)
	if len(blocks) != 1 || len(damage) != 1 || damage[0].Resumed || damage[0].Entries != -1 || damage[0].Offset != second || !errors.Is(damage[0], ErrCorrupt) {
		t.Fatalf("v1 with a damaged second block: %d blocks, damage %+v", len(blocks), damage)
	}
	huge := []byte(MagicV1 + "\xff\xff\xff\x7f\x00\x00\x00\x00")
	if _, damage, _ := readAll(t, huge, 0); len(damage) != 1 || !errors.Is(damage[0], ErrCorrupt) {
		t.Fatalf("huge length: %v", damage)
	}
}

func TestTornTail(t *testing.T) {
	v2, offs := encodeV2(sample[:2]...)
	v1 := encodeV1(sample[:2]...)
	v1first := HeaderSize + int64(len(AppendBlock(nil, sample[0])))
	for name, c := range map[string]struct {
		data  []byte
		first int64
	}{"v1": {v1, v1first}, "v2": {v2, offs[1]}} {
		for cut := c.first + 1; cut < int64(len(c.data)); cut++ {
			blocks, damage, _ := readAll(t, c.data[:cut], 0)
			if len(blocks) != 1 || len(damage) != 1 || damage[0].Resumed || !errors.Is(damage[0], ErrTruncated) || damage[0].Offset != c.first {
				t.Fatalf("%s cut at %d: %d blocks, damage %+v", name, cut, len(blocks), damage)
			}
		}
	}
}

func TestBadHeaders(t *testing.T) {
	if _, err := NewReader(bytes.NewReader([]byte("NOTASEGMENT")), 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("bad header: %v", err)
	}
	if _, err := NewReader(bytes.NewReader([]byte("FWS")), 0); !errors.Is(err, ErrTruncated) {
		t.Fatalf("short header: %v", err)
	}
	v2, _ := encodeV2()
	if _, err := NewReader(bytes.NewReader(v2[:20]), 0); !errors.Is(err, ErrTruncated) {
		t.Fatalf("short v2 header: %v", err)
	}
	if blocks, damage, _ := readAll(t, v2, 0); len(blocks)+len(damage) != 0 {
		t.Fatalf("empty v2 segment: %v %v", blocks, damage)
	}
	// A damaged header with no block to repair it from.
	bad := bytes.Clone(v2)
	bad[10] ^= 1
	if _, err := NewReader(bytes.NewReader(bad), 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged header of an empty segment: %v", err)
	}
	// Header() of a repaired segment is the original header.
	data, _ := encodeV2(sample...)
	bad = bytes.Clone(data)
	bad[12] ^= 0x40
	r, err := NewReader(bytes.NewReader(bad), 0)
	if err != nil || !r.Repaired() || !bytes.Equal(r.Header(), data[:HeaderSizeV2]) {
		t.Fatalf("repaired header: %v %v", err, r)
	}
}

// TestForgedHeaderInAMessageIsNotABlock: a client who writes what looks
// like a block header (with a marker of its own) into a message cannot
// make a reader that resynchronises take it for a block.
func TestForgedHeaderInAMessageIsNotABlock(t *testing.T) {
	forger := NewEncoder()
	forged := forger.AppendBlock(nil, &Block{Agent: "victim", Seqs: []uint64{1 << 62}, Messages: [][]byte{[]byte("forged")}})
	blocks := []*Block{
		{Messages: [][]byte{[]byte("one")}},
		{Messages: [][]byte{forged, forged}},
		{Messages: [][]byte{[]byte("three")}},
	}
	data, offs := encodeV2(blocks...)
	bad := bytes.Clone(data)
	bad[offs[1]+3] ^= 0xff // damage the header of the block holding the forgery
	got, damage, _ := readAll(t, bad, 0)
	if len(got) != 2 || string(got[0].Messages[0]) != "one" || string(got[1].Messages[0]) != "three" || len(damage) != 1 {
		t.Fatalf("read %d blocks %+v, damage %v", len(got), got, damage)
	}
}

func TestHugeMessageRoundTrips(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 2×33 MiB")
	}
	msg := bytes.Repeat([]byte("m"), 33<<20)
	data, _ := encodeV2(&Block{Messages: [][]byte{msg}}, &Block{Messages: [][]byte{[]byte("after")}})
	blocks, damage, _ := readAll(t, data, 0)
	if len(damage) != 0 || len(blocks) != 2 || !bytes.Equal(blocks[0].Messages[0], msg) {
		t.Fatalf("%d blocks, damage %v", len(blocks), damage)
	}
	// Damage in the header of the huge block: the scan finds the next.
	bad := bytes.Clone(data)
	bad[HeaderSizeV2+17] ^= 1
	blocks, damage, _ = readAll(t, bad, 0)
	if len(damage) != 1 || len(blocks) != 1 || string(blocks[0].Messages[0]) != "after" {
		t.Fatalf("after a damaged huge header: %d blocks, damage %v", len(blocks), damage)
	}
}

func FuzzDecodeBody(f *testing.F) {
	f.Add(AppendBlock(nil, &Block{Agent: "a", Seqs: []uint64{1}, Messages: [][]byte{[]byte("m")}})[8:])
	f.Add(AppendUnstampedAs(nil, &Block{Agent: "a", Seqs: []uint64{1, 2}, Messages: [][]byte{bytes.Repeat([]byte("ab"), 40), []byte("ab")}}, S2)[BlockHeaderSize:])
	shown := func(b *Block) string { return fmt.Sprint(b.Agent, b.ArrivalMs, b.Seqs, b.Messages) }
	f.Fuzz(func(t *testing.T, body []byte) {
		var b Block
		if err := DecodeBody(body, &b); err == nil {
			again := AppendBlock(nil, &b)[8:]
			var b2 Block
			if err := DecodeBody(again, &b2); err != nil || shown(&b2) != shown(&b) {
				t.Fatalf("re-encoding changed the block: %v", err)
			}
		}
	})
}

// FuzzReader: whatever the bytes, the reader ends, and in a v2 segment
// damaged anywhere it returns only blocks that were written.
func FuzzReader(f *testing.F) {
	data, _ := encodeV2(sample...)
	f.Add(data, uint16(40), byte(1), uint16(0), byte(0))
	f.Add(encodeV1(sample...), uint16(12), byte(0xff), uint16(0), byte(0))
	f.Fuzz(func(t *testing.T, seg []byte, p1 uint16, m1 byte, p2 uint16, m2 byte) {
		if len(seg) > 0 {
			seg = bytes.Clone(seg)
			seg[int(p1)%len(seg)] ^= m1
			seg[int(p2)%len(seg)] ^= m2
		}
		r, err := NewReader(bytes.NewReader(seg), 0)
		if err != nil {
			return
		}
		for i := 0; ; i++ {
			if i > len(seg)+1 {
				t.Fatal("reader does not end")
			}
			var b Block
			err := r.Next(&b)
			if errors.Is(err, io.EOF) {
				return
			}
			var de *DamageError
			if err != nil && !errors.As(err, &de) {
				t.Fatalf("next: %v", err)
			}
			if r.Offset() > int64(len(seg)) {
				t.Fatalf("offset %d past the end %d", r.Offset(), len(seg))
			}
		}
	})
}

func wantSeqs(b *Block) []uint64 {
	if b.Seqs != nil {
		return b.Seqs
	}
	return make([]uint64, len(b.Messages))
}

func TestSequenceMustIncrease(t *testing.T) {
	body := AppendBlock(nil, &Block{Agent: "a", Seqs: []uint64{5, 5}, Messages: [][]byte{[]byte("x"), []byte("y")}})[8:]
	var b Block
	if err := DecodeBody(body, &b); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("repeated sequence in an agent block: %v", err)
	}
}

// FuzzStampedIsAppendBlock: blocks encoded ahead of their segment
// (AppendUnstamped, then Stamp) are byte for byte what the encoder's
// AppendBlock writes, one block or several back to back, also when
// stamped twice (another segment's encoder first); a run that is not
// whole blocks is refused.
func FuzzStampedIsAppendBlock(f *testing.F) {
	f.Add("agent/inc", int64(1764583200000), uint64(7), []byte("a\x00bc\xffdef"), uint8(3), uint8(2), uint16(0))
	f.Add("", int64(-1), uint64(0), []byte{}, uint8(0), uint8(1), uint16(5))
	f.Fuzz(func(t *testing.T, agent string, arrival int64, first uint64, data []byte, parts, blocks uint8, cut uint16) {
		e := NewEncoder()
		var want, got []byte
		for k := range int(blocks%4) + 1 {
			b := &Block{Agent: agent, ArrivalMs: arrival + int64(k)}
			// Split data into up to parts messages, sequence numbers
			// increasing from first (none for a stock client's block).
			n := int(parts%8) + 1
			for i := range n {
				b.Messages = append(b.Messages, data[i*len(data)/n:(i+1)*len(data)/n])
				if agent != "" {
					b.Seqs = append(b.Seqs, first+uint64(k*100+i))
				}
			}
			want = e.AppendBlock(want, b)
			got = AppendUnstamped(got, b)
		}
		if err := NewEncoder().Stamp(got); err != nil {
			t.Fatal(err)
		}
		if err := e.Stamp(got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("stamped blocks differ from AppendBlock's:\n%x\n%x", got, want)
		}
		if c := int(cut) % len(got); c > 0 && NewEncoder().Stamp(got[:c]) == nil {
			// A cut that falls exactly between blocks leaves whole blocks.
			r, err := NewReader(bytes.NewReader(append(e.AppendHeader(nil), want[:c]...)), 0)
			if err != nil {
				t.Fatal(err)
			}
			for {
				var b Block
				if err := r.Next(&b); errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					t.Fatalf("Stamp took %d bytes that are not whole blocks: %v", c, err)
				}
			}
		}
	})
}

// cutReader reads data up to cut, then fails every read with err (a
// wrapped end of file, as a dfs reports a stream that ended early).
type cutReader struct {
	data []byte
	cut  int64
	off  int64
	err  error
}

func (r *cutReader) Read(p []byte) (int, error) {
	if r.off >= r.cut {
		return 0, r.err
	}
	n := copy(p[:min(int64(len(p)), r.cut-r.off)], r.data[r.off:])
	r.off += int64(n)
	return n, nil
}

func (r *cutReader) Seek(off int64, whence int) (int64, error) {
	if whence != io.SeekStart {
		return 0, errors.New("only SeekStart")
	}
	r.off = off
	return off, nil
}

// TestWrappedEndIsAReadFailure: a read that fails with an error wrapping
// io.EOF or io.ErrUnexpectedEOF, wherever it falls, is passed on as the
// reader failing, never as a truncated or damaged segment (which its
// readers skip).
func TestWrappedEndIsAReadFailure(t *testing.T) {
	v2, _ := encodeV2(sample...)
	for name, data := range map[string][]byte{"v1": encodeV1(sample...), "v2": v2} {
		for _, end := range []error{io.EOF, io.ErrUnexpectedEOF} {
			failure := fmt.Errorf("read /cat/0/seg: stream ended early: %w", end)
			for cut := range int64(len(data)) {
				r := &cutReader{data: data, cut: cut, err: failure}
				sr, err := NewReader(r, 0)
				if err == nil {
					var b Block
					for err == nil {
						err = sr.Next(&b)
					}
				}
				if !errors.Is(err, failure) {
					t.Fatalf("%s cut at %d of %d by %v: %v, want the read failure", name, cut, len(data), failure, err)
				}
				var de *DamageError
				if errors.As(err, &de) || errors.Is(err, ErrTruncated) || errors.Is(err, ErrCorrupt) {
					t.Fatalf("%s cut at %d: %v reported as damage", name, cut, err)
				}
			}
		}
	}
}
