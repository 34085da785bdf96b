// Package segment is the format of bucket files: what calligraphus writes,
// ptail reads and the copier copies. Where they live and how they are
// named is internal/layout's business.
//
// A segment is a file header and a sequence of blocks. A block is one
// batch of entries of one bucket. Format v2, written since blocks could
// be resynchronised:
//
//	header: "FWSEG\x00\x02\n" | sync (16 random bytes) | u32 0 | u32 CRC-32C of the 28 bytes before
//	block:  sync | u32 body length | u32 entry count | u32 CRC-32C of body | u32 CRC-32C of the 28 bytes before | body
//
// Every block header starts with the segment's sync marker, random per
// segment and unknown to the clients whose messages fill the bodies, and
// carries a CRC of itself. So damage costs one block: a block whose body
// fails its CRC is skipped by its length, which its header's CRC vouches
// for, with its entry count known; a block whose header is damaged is
// skipped by scanning for the next valid header (the marker followed by a
// matching CRC), which a message cannot forge without knowing the marker.
// A damaged file header is repaired from the first block's header, which
// carries the same marker.
//
// Format v1, still read (segments written before v2, and the ones tests
// build by hand with Magic and AppendBlock):
//
//	header: "FWSEG\x00\x01\n"
//	block:  u32 body length | u32 CRC-32C of body | body
//
// where damage to a block makes the rest of the segment unreadable.
//
// The body is the same in both:
//
//	u8 flags | uvarint len(agent) | agent | varint arrival unix ms |
//	uvarint count | count × (uvarint seq delta | uvarint len | message)
//
// or, in v2, compressed (flags 1, Compression S2): the flags byte, then
// the rest of that body as one S2 block. The block header's length and
// CRC are the stored (compressed) body's, so what checks, skips, copies
// or salvages blocks never decompresses them; its entry count is the
// block's entries either way.
//
// Each entry carries its sequence number in its agent's stream, as the
// difference from the previous entry's (the first from 0): a batch split
// across buckets leaves gaps, and the numbers are what lets Puma drop an
// entry it has already counted when an agent re-sends it. Agent "" means a
// stock Scribe client, whose entries carry sequence 0.
//
// A segment is written under a hidden temporary name and published by a
// rename once closed, so a published segment is complete and never
// changes: damage in it is damage, not a write in progress. A reader
// positioned at a block boundary can always resume there. A torn tail (a
// block cut short by a crash of the writer, only ever in an unpublished
// segment) is reported as ErrTruncated.
package segment

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"

	"github.com/klauspost/compress/s2"

	"github.com/freeway-dev/freeway/internal/layout"
)

// MagicV1 opens a v1 segment: "FWSEG", a version byte and a newline.
const MagicV1 = "FWSEG\x00\x01\n"

// MagicV2 opens a v2 segment.
const MagicV2 = "FWSEG\x00\x02\n"

// Magic is MagicV1, and AppendBlock writes v1 blocks: kept for segments
// built by hand (tests, tools), which Freeway still reads. Freeway writes
// v2 with an Encoder.
const Magic = MagicV1

// HeaderSize is the length of the v1 file header: the offset of a v1
// segment's first block.
const HeaderSize = int64(len(MagicV1))

// HeaderSizeV2 is the length of the v2 file header.
const HeaderSizeV2 = int64(32)

// SyncSize is the length of a v2 segment's sync marker.
const SyncSize = 16

// BlockHeaderSize is the length of a v2 block header.
const BlockHeaderSize = 32

// MaxBlockSize bounds a block's body. A Scribe call is at most 256 MiB
// plus its envelope, and a block never holds more than one call's
// entries of one bucket, which encode in no more bytes than they took on
// the wire; the bound is that plus a margin. It keeps a damaged v1 length
// from making a reader allocate without limit.
const MaxBlockSize = 256<<20 + 1<<20

// Ext is the file extension of a published segment.
const Ext = layout.SegmentExt

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrTruncated reports a block cut short: the end of a segment that a
// writer did not finish.
var ErrTruncated = errors.New("truncated block")

// ErrCorrupt reports a block whose checksum or structure is wrong.
var ErrCorrupt = errors.New("corrupt block")

// Block is one batch of entries.
type Block struct {
	Agent     string // "" for entries from stock Scribe clients
	ArrivalMs int64  // when the batch was accepted, Unix milliseconds
	Messages  [][]byte
	// Seqs[i] is the sequence number of Messages[i] in Agent's stream,
	// increasing; nil means all zero (stock clients).
	Seqs []uint64
	// unpacked holds a compressed body's bytes once decompressed, which
	// Messages then alias: reused by the block's next DecodeBody.
	unpacked []byte
}

// Compression is how a v2 block's body is stored: its flags byte.
type Compression byte

const (
	// Uncompressed bodies are stored as they are encoded.
	Uncompressed Compression = 0
	// S2 bodies store what follows the flags byte as one S2 block
	// (github.com/klauspost/compress/s2: Snappy's format, faster). Log
	// lines compress about five times: that many fewer bytes to write,
	// sync, replicate, copy and keep, for about a millisecond of one
	// core a MiB.
	S2 Compression = 1
)

// ParseCompression parses a compression's name: "s2" or "none".
func ParseCompression(name string) (Compression, error) {
	switch name {
	case "s2":
		return S2, nil
	case "none":
		return Uncompressed, nil
	}
	return 0, fmt.Errorf("unknown compression %q (s2 or none)", name)
}

func (c Compression) String() string {
	switch c {
	case Uncompressed:
		return "none"
	case S2:
		return "s2"
	}
	return fmt.Sprintf("compression(%d)", byte(c))
}

// Encoder writes the v2 segment of one sync marker.
type Encoder struct {
	sync [SyncSize]byte
}

// NewEncoder returns an encoder with a fresh random sync marker: one per
// segment.
func NewEncoder() *Encoder {
	e := &Encoder{}
	rand.Read(e.sync[:])
	return e
}

// AppendHeader appends the file header.
func (e *Encoder) AppendHeader(dst []byte) []byte {
	return appendHeaderV2(dst, e.sync)
}

func appendHeaderV2(dst []byte, sync [SyncSize]byte) []byte {
	start := len(dst)
	dst = append(dst, MagicV2...)
	dst = append(dst, sync[:]...)
	dst = binary.LittleEndian.AppendUint32(dst, 0)
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], crcTable))
}

// AppendBlock appends the encoding of b.
func (e *Encoder) AppendBlock(dst []byte, b *Block) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, BlockHeaderSize)...)
	dst = appendBody(dst, b)
	body := dst[start+BlockHeaderSize:]
	h := dst[start : start+BlockHeaderSize]
	copy(h, e.sync[:])
	binary.LittleEndian.PutUint32(h[16:], uint32(len(body)))
	binary.LittleEndian.PutUint32(h[20:], uint32(len(b.Messages)))
	binary.LittleEndian.PutUint32(h[24:], crc32.Checksum(body, crcTable))
	binary.LittleEndian.PutUint32(h[28:], crc32.Checksum(h[:28], crcTable))
	return dst
}

// AppendUnstamped appends the v2 encoding of b without the two parts of
// its header that depend on the segment it goes into: the sync marker
// and the header's own CRC (left zero). The body, its length, its entry
// count and its CRC are all there, so that the costly part of encoding
// (copying the messages, the body CRC) can be done before the segment
// is known, by whoever holds the messages; Stamp finishes the blocks
// once it is. Stamp(AppendUnstamped(nil, b)) is AppendBlock(nil, b).
func AppendUnstamped(dst []byte, b *Block) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, BlockHeaderSize)...)
	dst = appendBody(dst, b)
	body := dst[start+BlockHeaderSize:]
	h := dst[start : start+BlockHeaderSize]
	binary.LittleEndian.PutUint32(h[16:], uint32(len(body)))
	binary.LittleEndian.PutUint32(h[20:], uint32(len(b.Messages)))
	binary.LittleEndian.PutUint32(h[24:], crc32.Checksum(body, crcTable))
	return dst
}

// AppendUnstampedAs is AppendUnstamped with the body stored as c says.
// A compressed body is kept only where it is smaller than the body
// itself; otherwise the block is stored uncompressed.
func AppendUnstampedAs(dst []byte, b *Block, c Compression) []byte {
	if c != S2 {
		return AppendUnstamped(dst, b)
	}
	bufs := scratchPool.Get().(*scratch)
	defer bufs.put()
	bufs.raw = appendBody(bufs.raw[:0], b)
	packed := bufs.raw
	if n := s2.MaxEncodedLen(len(bufs.raw) - 1); n > 0 {
		if cap(bufs.packed) < 1+n {
			bufs.packed = make([]byte, 1+n)
		}
		bufs.packed = bufs.packed[:1+n]
		bufs.packed[0] = byte(S2)
		if enc := s2.Encode(bufs.packed[1:], bufs.raw[1:]); 1+len(enc) < len(bufs.raw) {
			packed = bufs.packed[:1+len(enc)]
		}
	}
	start := len(dst)
	dst = append(dst, make([]byte, BlockHeaderSize)...)
	dst = append(dst, packed...)
	h := dst[start : start+BlockHeaderSize]
	binary.LittleEndian.PutUint32(h[16:], uint32(len(packed)))
	binary.LittleEndian.PutUint32(h[20:], uint32(len(b.Messages)))
	binary.LittleEndian.PutUint32(h[24:], crc32.Checksum(packed, crcTable))
	return dst
}

// scratch is AppendUnstampedAs's buffers: the body, and its compression.
type scratch struct{ raw, packed []byte }

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// maxPooledScratch bounds the buffers kept for the next block: a huge
// call's are left to the collector.
const maxPooledScratch = 4 << 20

func (s *scratch) put() {
	if cap(s.raw) > maxPooledScratch || cap(s.packed) > maxPooledScratch {
		return
	}
	scratchPool.Put(s)
}

// Stamp finishes, in place, the blocks AppendUnstamped wrote into
// blocks (one or more, back to back, nothing else): it writes the
// encoder's sync marker into each header and the header's CRC. Stamping
// again with another encoder re-stamps them for its segment. It fails,
// leaving the blocks unstamped from the bad one on, if blocks is not a
// run of whole blocks.
func (e *Encoder) Stamp(blocks []byte) error {
	for off := 0; off < len(blocks); {
		if len(blocks)-off < BlockHeaderSize {
			return fmt.Errorf("%w: %d bytes left for a block header", ErrCorrupt, len(blocks)-off)
		}
		h := blocks[off : off+BlockHeaderSize]
		n := int(binary.LittleEndian.Uint32(h[16:]))
		if n > len(blocks)-off-BlockHeaderSize {
			return fmt.Errorf("%w: block body of %d bytes past the end", ErrCorrupt, n)
		}
		copy(h, e.sync[:])
		binary.LittleEndian.PutUint32(h[28:], crc32.Checksum(h[:28], crcTable))
		off += BlockHeaderSize + n
	}
	return nil
}

// AppendBlock appends the v1 encoding of b (see Magic).
func AppendBlock(dst []byte, b *Block) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, 8)...)
	dst = appendBody(dst, b)
	body := dst[start+8:]
	binary.LittleEndian.PutUint32(dst[start:], uint32(len(body)))
	binary.LittleEndian.PutUint32(dst[start+4:], crc32.Checksum(body, crcTable))
	return dst
}

func appendBody(dst []byte, b *Block) []byte {
	dst = append(dst, 0) // flags: no compression
	dst = binary.AppendUvarint(dst, uint64(len(b.Agent)))
	dst = append(dst, b.Agent...)
	dst = binary.AppendVarint(dst, b.ArrivalMs)
	dst = binary.AppendUvarint(dst, uint64(len(b.Messages)))
	var prev uint64
	for i, m := range b.Messages {
		var seq uint64
		if b.Seqs != nil {
			seq = b.Seqs[i]
		}
		dst = binary.AppendUvarint(dst, seq-prev)
		prev = seq
		dst = binary.AppendUvarint(dst, uint64(len(m)))
		dst = append(dst, m...)
	}
	return dst
}

// BlockSize is an upper bound of the encoded size of b (header included),
// in either format.
func BlockSize(b *Block) int {
	return BlockHeaderSize + BodySizeBound(len(b.Agent)) + messagesBound(b.Messages)
}

// BodySizeBound bounds the body bytes of a block with an agent of
// agentLen bytes and no messages.
func BodySizeBound(agentLen int) int {
	return 1 + uvarintLen(uint64(agentLen)) + agentLen + 10 + 10
}

// EntrySizeBound bounds the bytes a message of msgLen bytes adds to a
// block body.
func EntrySizeBound(msgLen int) int {
	return 10 + uvarintLen(uint64(msgLen)) + msgLen
}

func messagesBound(msgs [][]byte) int {
	n := 0
	for _, m := range msgs {
		n += EntrySizeBound(len(m))
	}
	return n
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// DecodeBody decodes a block body (after the block header). Messages
// alias body, or, for a compressed body, a buffer of b's own that its
// next DecodeBody reuses.
func DecodeBody(body []byte, b *Block) error {
	if len(body) < 1 {
		return fmt.Errorf("%w: empty body", ErrCorrupt)
	}
	var p []byte
	switch Compression(body[0]) {
	case Uncompressed:
		p = body[1:]
	case S2:
		n, err := s2.DecodedLen(body[1:])
		if err != nil {
			return fmt.Errorf("%w: compressed body: %w", ErrCorrupt, err)
		}
		if n > MaxBlockSize {
			return fmt.Errorf("%w: compressed body of %d bytes decompressed, over %d", ErrCorrupt, n, MaxBlockSize)
		}
		if cap(b.unpacked) < n || cap(b.unpacked) > maxPooledScratch && cap(b.unpacked) > 4*n {
			// Grown, or shrunk back after a huge block: a Block lives
			// as long as its reader (a Puma shard's, for its run).
			b.unpacked = make([]byte, n)
		}
		if p, err = s2.Decode(b.unpacked[:n], body[1:]); err != nil {
			return fmt.Errorf("%w: compressed body: %w", ErrCorrupt, err)
		}
	default:
		return fmt.Errorf("%w: unknown flags %#x", ErrCorrupt, body[0])
	}
	agentLen, n := binary.Uvarint(p)
	if n <= 0 || agentLen > uint64(len(p)-n) {
		return fmt.Errorf("%w: agent length", ErrCorrupt)
	}
	p = p[n:]
	b.Agent = string(p[:agentLen])
	p = p[agentLen:]
	if b.ArrivalMs, n = binary.Varint(p); n <= 0 {
		return fmt.Errorf("%w: arrival time", ErrCorrupt)
	}
	p = p[n:]
	count, n := binary.Uvarint(p)
	if n <= 0 || count > uint64(len(p)) {
		return fmt.Errorf("%w: message count", ErrCorrupt)
	}
	p = p[n:]
	b.Messages = b.Messages[:0]
	b.Seqs = b.Seqs[:0]
	var seq uint64
	for i := uint64(0); i < count; i++ {
		d, n := binary.Uvarint(p)
		if n <= 0 || (i > 0 && d == 0 && b.Agent != "") {
			return fmt.Errorf("%w: message %d sequence", ErrCorrupt, i)
		}
		p = p[n:]
		seq += d
		b.Seqs = append(b.Seqs, seq)
		l, n := binary.Uvarint(p)
		if n <= 0 || l > uint64(len(p)-n) {
			return fmt.Errorf("%w: message %d length", ErrCorrupt, i)
		}
		p = p[n:]
		b.Messages = append(b.Messages, p[:l:l])
		p = p[l:]
	}
	if len(p) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(p))
	}
	return nil
}
