// Package segment is the format of bucket files: what calligraphus writes,
// ptail reads and the copier copies.
//
// A bucket of a category is a directory <category>/<bucket>/ of segment
// files. A segment is named <epoch>-<seq>.seg, both fixed-width hex, so
// that file-name order is write order: epoch is the writer's fencing epoch
// (a newer owner of the bucket has a higher one) and seq counts the
// segments of one epoch. A segment is written under a hidden temporary
// name and published by a rename once closed, so a published segment is
// complete and never changes.
//
// A segment starts with an 8-byte header (Magic) and holds blocks. A block
// is one batch of entries of one bucket:
//
//	u32 body length | u32 CRC-32C of body | body
//	body: u8 flags | uvarint len(agent) | agent | varint arrival unix ms |
//	      uvarint count | count × (uvarint seq delta | uvarint len | message)
//
// Each entry carries its sequence number in its agent's stream, as the
// difference from the previous entry's (the first from 0): a batch split
// across buckets leaves gaps, and the numbers are what lets Puma drop an
// entry it has already counted when an agent re-sends it. Agent "" means a
// stock Scribe client, whose entries carry sequence 0. A reader positioned at a block boundary can always resume
// there, and a torn tail (a block cut short by a crash of the writer) is
// detected by its length or CRC and reported as ErrTruncated.
package segment

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
)

// Magic opens every segment file: "FWSEG", a version byte and a newline.
const Magic = "FWSEG\x00\x01\n"

// HeaderSize is the length of Magic: the offset of the first block.
const HeaderSize = int64(len(Magic))

// MaxBlockSize bounds a block's body so that a corrupt length cannot make
// a reader allocate without limit.
const MaxBlockSize = 64 << 20

// Ext is the file extension of a published segment.
const Ext = ".seg"

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
}

// AppendBlock appends the encoding of b to dst.
func AppendBlock(dst []byte, b *Block) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, 8)...)
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
	body := dst[start+8:]
	binary.LittleEndian.PutUint32(dst[start:], uint32(len(body)))
	binary.LittleEndian.PutUint32(dst[start+4:], crc32.Checksum(body, crcTable))
	return dst
}

// BlockSize is the encoded size of b.
func BlockSize(b *Block) int {
	n := 8 + 1 + uvarintLen(uint64(len(b.Agent))) + len(b.Agent) + 10 + uvarintLen(uint64(len(b.Messages)))
	for _, m := range b.Messages {
		n += 10 + uvarintLen(uint64(len(m))) + len(m)
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

// DecodeBody decodes a block body (after the length and CRC). Messages
// alias body.
func DecodeBody(body []byte, b *Block) error {
	if len(body) < 1 {
		return fmt.Errorf("%w: empty body", ErrCorrupt)
	}
	if body[0] != 0 {
		return fmt.Errorf("%w: unknown flags %#x", ErrCorrupt, body[0])
	}
	p := body[1:]
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

// Name is the file name of segment seq of epoch.
func Name(epoch int64, seq uint64) string {
	return fmt.Sprintf("%016x-%016x%s", uint64(epoch), seq, Ext)
}

// ParseName parses a segment file name made by Name.
func ParseName(name string) (epoch int64, seq uint64, ok bool) {
	base, found := strings.CutSuffix(name, Ext)
	if !found || len(base) != 33 || base[16] != '-' {
		return 0, 0, false
	}
	e, err1 := strconv.ParseUint(base[:16], 16, 64)
	s, err2 := strconv.ParseUint(base[17:], 16, 64)
	if err1 != nil || err2 != nil || e > 1<<63-1 {
		return 0, 0, false
	}
	return int64(e), s, true
}

// Dir is the directory of a bucket.
func Dir(category string, bucket int) string {
	return category + "/" + strconv.Itoa(bucket)
}
