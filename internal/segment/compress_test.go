package segment

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"testing"
)

// encodeV2As builds a v2 segment as the writer does (AppendUnstampedAs,
// then Stamp), its bodies stored as c says, and returns the offset of
// each block (and of the end).
func encodeV2As(t *testing.T, c Compression, blocks ...*Block) ([]byte, []int64) {
	t.Helper()
	e := NewEncoder()
	buf := e.AppendHeader(nil)
	offs := []int64{int64(len(buf))}
	for _, b := range blocks {
		start := len(buf)
		buf = AppendUnstampedAs(buf, b, c)
		if err := e.Stamp(buf[start:]); err != nil {
			t.Fatal(err)
		}
		offs = append(offs, int64(len(buf)))
	}
	return buf, offs
}

// logLines is a block of JSON log lines like the ones Freeway carries.
func logLines(n int) *Block {
	b := &Block{Agent: "host-1/7", ArrivalMs: 1796330585166}
	for i := range n {
		b.Messages = append(b.Messages, fmt.Appendf(nil, `{"ts":%d,"key":"k%07d","value":%d,"host":"web-%d","method":"GET","path":"/api/v1/items/%d","status":200}`,
			1796330585166+int64(i), i*7919%10000, i*31%1000, i%64, i*104729%100000))
		b.Seqs = append(b.Seqs, uint64(100+i))
	}
	return b
}

// flagsOf returns the flags byte of the block at off.
func flagsOf(data []byte, off int64) Compression {
	return Compression(data[off+BlockHeaderSize])
}

func TestCompressedBlocksRoundTripSmaller(t *testing.T) {
	blocks := append([]*Block{logLines(1000)}, sample...)
	blocks = append(blocks, logLines(3))
	plain, _ := encodeV2As(t, Uncompressed, blocks...)
	packed, offs := encodeV2As(t, S2, blocks...)
	readsBack(t, "none", plain, blocks)
	readsBack(t, "s2", packed, blocks)
	if flagsOf(packed, offs[0]) != S2 {
		t.Errorf("1,000 log lines stored with flags %v, want s2", flagsOf(packed, offs[0]))
	}
	if len(packed)*3 > len(plain) {
		t.Errorf("compressed segment %d bytes, uncompressed %d: not a third", len(packed), len(plain))
	}
	// A block that compression would not shrink is stored as it is.
	if i := 3; flagsOf(packed, offs[i]) != Uncompressed {
		t.Errorf("block %d (no message) stored with flags %v", i, flagsOf(packed, offs[i]))
	}
	if p, _ := encodeV2As(t, Uncompressed, blocks...); len(p) != len(plain) {
		t.Fatal("encoding is not deterministic")
	}
}

func TestIncompressibleBlockIsStoredAsItIs(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	msg := make([]byte, 4096)
	for i := range msg {
		msg[i] = byte(rnd.Uint32())
	}
	b := &Block{Agent: "a", Seqs: []uint64{1}, Messages: [][]byte{msg}}
	if got, want := AppendUnstampedAs(nil, b, S2), AppendUnstamped(nil, b); !bytes.Equal(got, want) {
		t.Errorf("random bytes stored as %d bytes (flags %#x), want the uncompressed %d", len(got), got[BlockHeaderSize], len(want))
	}
}

// TestReusedBlockDecodesEachBody: one Block decoded again and again, as
// ptail and Puma do, compressed and plain bodies in turn (the plain ones
// alias the reader's buffer, the compressed ones the block's own).
func TestReusedBlockDecodesEachBody(t *testing.T) {
	blocks := []*Block{logLines(500), sample[0], logLines(20), logLines(900), sample[3], logLines(1)}
	data, _ := encodeV2As(t, S2, blocks...)
	r, err := NewReader(bytes.NewReader(data), 0)
	if err != nil {
		t.Fatal(err)
	}
	var b Block
	for i, want := range blocks {
		if err := r.Next(&b); err != nil {
			t.Fatalf("block %d: %v", i, err)
		}
		if !sameBlock(b, want) {
			t.Fatalf("block %d = %d messages %q..., want %d", i, len(b.Messages), b.Messages[:min(1, len(b.Messages))], len(want.Messages))
		}
	}
}

// TestDamagedCompressedBlockCostsOneBlock: a compressed body is checked
// by its CRC before it is decompressed; one whose CRC holds but whose
// S2 data does not decode (or claims more than a block can hold) is one
// damaged block too, and the reader goes on after it.
func TestDamagedCompressedBlockCostsOneBlock(t *testing.T) {
	blocks := []*Block{logLines(50), logLines(60), logLines(70)}
	data, offs := encodeV2As(t, S2, blocks...)
	for pos := offs[1]; pos < offs[2]; pos++ {
		bad := bytes.Clone(data)
		bad[pos] ^= 0x55
		got, damage, _ := readAll(t, bad, 0)
		if len(got) != 2 || !sameBlock(got[0], blocks[0]) || !sameBlock(got[1], blocks[2]) || len(damage) != 1 || damage[0].Offset != offs[1] {
			t.Fatalf("byte %d damaged: %d blocks, damage %v", pos, len(got), damage)
		}
	}
	forge := func(body []byte) []byte {
		bad := bytes.Clone(data[:offs[1]])
		h := bytes.Clone(data[offs[1] : offs[1]+BlockHeaderSize])
		binary.LittleEndian.PutUint32(h[16:], uint32(len(body)))
		binary.LittleEndian.PutUint32(h[24:], crc32.Checksum(body, crcTable))
		binary.LittleEndian.PutUint32(h[28:], crc32.Checksum(h[:28], crcTable))
		bad = append(append(append(bad, h...), body...), data[offs[2]:]...)
		return bad
	}
	for name, body := range map[string][]byte{
		"not s2":        append([]byte{byte(S2)}, bytes.Repeat([]byte{0xfe}, 40)...),
		"huge claimed":  append([]byte{byte(S2)}, binary.AppendUvarint(nil, 1<<31)...),
		"unknown flags": {7, 1, 2, 3},
	} {
		got, damage, _ := readAll(t, forge(body), 0)
		if len(got) != 2 || !sameBlock(got[1], blocks[2]) || len(damage) != 1 || !damage[0].Resumed || !errors.Is(damage[0], ErrCorrupt) {
			t.Errorf("%s: %d blocks, damage %v", name, len(got), damage)
		}
	}
}

func TestParseCompression(t *testing.T) {
	for _, c := range []Compression{Uncompressed, S2} {
		if got, err := ParseCompression(c.String()); err != nil || got != c {
			t.Errorf("ParseCompression(%q) = %v, %v", c.String(), got, err)
		}
	}
	if _, err := ParseCompression("zstd"); err == nil {
		t.Error("zstd accepted")
	}
}

// TestSkipChecksWithoutDecoding: Skip passes over each block by its
// header and stored CRC, reporting the header's count, without decoding:
// a body it cannot decode (unknown flags, CRC right) passes; a body
// whose CRC fails is damage, as Next reports it, and a torn tail ends.
func TestSkipChecksWithoutDecoding(t *testing.T) {
	blocks := []*Block{logLines(50), logLines(60), logLines(70), logLines(80)}
	data, offs := encodeV2As(t, S2, blocks...)
	body := data[offs[1]+BlockHeaderSize : offs[2]]
	body[0] = 7 // flags no version knows
	binary.LittleEndian.PutUint32(data[offs[1]+24:], crc32.Checksum(body, crcTable))
	binary.LittleEndian.PutUint32(data[offs[1]+28:], crc32.Checksum(data[offs[1]:offs[1]+28], crcTable))
	data[offs[2]+BlockHeaderSize+5] ^= 0x01 // block 2's body
	data = data[:len(data)-3]               // block 3 torn
	r, err := NewReader(bytes.NewReader(data), 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []int{50, 60} {
		if n, err := r.Skip(); err != nil || n != want || r.Offset() != offs[i+1] {
			t.Fatalf("block %d: %d entries, %v, at %d; want %d at %d", i, n, err, r.Offset(), want, offs[i+1])
		}
	}
	var de *DamageError
	if _, err := r.Skip(); !errors.As(err, &de) || !de.Resumed || de.Entries != 70 || r.Offset() != offs[3] {
		t.Fatalf("block 2: %v at %d, want damage of 70 entries resumed at %d", err, r.Offset(), offs[3])
	}
	if _, err := r.Skip(); !errors.As(err, &de) || de.Resumed || !errors.Is(err, ErrTruncated) {
		t.Fatalf("block 3: %v, want a torn tail", err)
	}
	if _, err := r.Skip(); err != io.EOF {
		t.Fatalf("after the tail: %v, want io.EOF", err)
	}
}

// TestBlockLetsGoOfAHugeBlocksBuffer: a Block decoded from a huge
// compressed body, then from small ones, does not keep the huge buffer
// (a Puma shard keeps its Block for its whole run).
func TestBlockLetsGoOfAHugeBlocksBuffer(t *testing.T) {
	huge := &Block{Agent: "a", Seqs: []uint64{1}, Messages: [][]byte{bytes.Repeat([]byte("log line "), 2<<20)}}
	data, _ := encodeV2As(t, S2, huge, logLines(100))
	r, err := NewReader(bytes.NewReader(data), 0)
	if err != nil {
		t.Fatal(err)
	}
	var b Block
	if err := r.Next(&b); err != nil || len(b.Messages[0]) != len(huge.Messages[0]) {
		t.Fatalf("huge block: %v", err)
	}
	if err := r.Next(&b); err != nil || len(b.Messages) != 100 {
		t.Fatalf("small block: %v", err)
	}
	if cap(b.unpacked) > maxPooledScratch {
		t.Errorf("after a small block the Block keeps %d bytes", cap(b.unpacked))
	}
}
