package diskqueue

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"slices"
	"sync"

	"github.com/klauspost/compress/s2"
)

// Format v3: one record per Append call (a call of more than
// maxRecordRaw entry bytes is split into several), its body compressed
// when that makes it smaller.
//
//	length u32 | first seq u64 | count u32 | flags u32 | crc32c(K || body) u32 | crc32c(K || the 24 header bytes before) u32 | body
//	body     = entries, or their Snappy block encoding if flags has flagCompressed
//	entries  = count × (received unix ms u64 | uvarint len(category) | category | uvarint len(message) | message)
//
// The record holds the entries first .. first+count-1. The body CRC is
// over the bytes on disk, so damage is found before anything is
// decoded; the decoded length (the Snappy block's own header) is checked
// against maxRecordBody before anything is allocated for it.
const (
	v3RecHeaderSize = 28
	flagCompressed  = 1
	// maxRecordRaw is the entry bytes at which Append closes a record and
	// starts the next: big enough for the compression to find the
	// repetition between lines, small enough that the reader decodes a
	// record at a time into modest buffers. A single entry larger than
	// this gets a record of its own. An uncompressed record of this size
	// fills a chunk buffer exactly.
	maxRecordRaw = chunkBytes - v3RecHeaderSize
	// maxRecordBody bounds a record's body, encoded or decoded: one entry
	// of the largest RecordSize fits.
	maxRecordBody = MaxRecordBytes
	// minEntryBytes is the smallest encoded entry: a timestamp, a
	// one-byte category and its length, an empty message's length.
	minEntryBytes = 8 + 1 + 1 + 1
)

// entryBytes is the bytes e takes in a v3 record's decoded body.
func entryBytes(e *Entry) int {
	return 8 + uvarintLen(uint64(len(e.Category))) + len(e.Category) +
		uvarintLen(uint64(len(e.Message))) + len(e.Message)
}

func appendEntry(b []byte, e *Entry) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(e.Time))
	b = binary.AppendUvarint(b, uint64(len(e.Category)))
	b = append(b, e.Category...)
	b = binary.AppendUvarint(b, uint64(len(e.Message)))
	return append(b, e.Message...)
}

// encoded is one Append call's v3 records, encoded (and compressed)
// before the call takes the queue's lock. Their headers lack the
// sequence number and the header CRC: number fills them in once the
// numbers are handed out.
type encoded struct {
	data []byte
	recs []encodedRec
	raw  []byte // scratch: a record's entries before compression
}

type encodedRec struct {
	off, n int // where the record (header and body) lies in data
	count  int
}

// size is the bytes the records take on disk: what the queue's bound counts.
func (enc *encoded) size() int64 { return int64(len(enc.data)) }

// maxPooledEncoding bounds the buffers of an encoded kept for reuse: a
// call of a few megabytes reuses them, a larger one is left to the
// garbage collector.
const maxPooledEncoding = 4 << 20

// encoders keeps encodeds for reuse: an Append encodes into one of them
// and gives it back. (Not a sync.Pool: the garbage collector empties
// those, and each encoded holds a megabyte or so.)
type encoders struct {
	mu   sync.Mutex
	free []*encoded
}

// maxEncoders bounds the encodeds kept: the Appends usually in progress at once.
const maxEncoders = 16

func (p *encoders) get() *encoded {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		enc := p.free[n-1]
		p.free[n-1] = nil
		p.free = p.free[:n-1]
		return enc
	}
	return new(encoded)
}

func (p *encoders) put(enc *encoded) {
	if cap(enc.data) > maxPooledEncoding || cap(enc.raw) > maxPooledEncoding {
		return // grown for a large call: left to the garbage collector
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.free) < maxEncoders {
		p.free = append(p.free, enc)
	}
}

// encodeRecords encodes entries into v3 records keyed with key,
// compressed with compress when that is smaller. Uncompressed, a
// record's entries are encoded right after its header, where they stay;
// compressed, into the scratch buffer first, which the compressor reads.
func encodeRecords(enc *encoded, entries []Entry, key uint32, compress bool) {
	enc.data, enc.recs = enc.data[:0], enc.recs[:0]
	for i := 0; i < len(entries); {
		j, n := i+1, entryBytes(&entries[i])
		for j < len(entries) && n+entryBytes(&entries[j]) <= maxRecordRaw {
			n += entryBytes(&entries[j])
			j++
		}
		if compress {
			enc.raw = appendEntries(enc.raw[:0], entries[i:j])
			enc.addCompressed(enc.raw, j-i, key)
		} else {
			enc.addPlain(entries[i:j], n, key)
		}
		i = j
	}
}

func appendEntries(b []byte, entries []Entry) []byte {
	for i := range entries {
		b = appendEntry(b, &entries[i])
	}
	return b
}

// addPlain appends the uncompressed record of entries, whose encoding
// takes n bytes.
func (enc *encoded) addPlain(entries []Entry, n int, key uint32) {
	start := len(enc.data)
	enc.data = slices.Grow(enc.data, v3RecHeaderSize+n)
	enc.data = enc.data[:start+v3RecHeaderSize]
	enc.data = appendEntries(enc.data, entries)
	enc.finish(start, len(entries), 0, key)
}

// addCompressed appends the record of count entries whose encoding is
// raw: its Snappy encoding if that is smaller, else raw itself.
func (enc *encoded) addCompressed(raw []byte, count int, key uint32) {
	start := len(enc.data)
	need := start + v3RecHeaderSize + s2.MaxEncodedLen(len(raw))
	if cap(enc.data) < need {
		enc.data = append(make([]byte, 0, need+need/4), enc.data...)
	}
	c := s2.EncodeSnappy(enc.data[start+v3RecHeaderSize:need], raw)
	if len(c) >= len(raw) {
		enc.data = append(enc.data[:start+v3RecHeaderSize], raw...)
		enc.finish(start, count, 0, key)
		return
	}
	// EncodeSnappy wrote the body in place, right after the header.
	enc.data = enc.data[:start+v3RecHeaderSize+len(c)]
	enc.finish(start, count, flagCompressed, key)
}

// finish fills in the header of the record that starts at start and
// runs to the end of enc.data, all but its sequence number and header
// CRC (number), and lists the record.
func (enc *encoded) finish(start, count int, flags uint32, key uint32) {
	h := enc.data[start : start+v3RecHeaderSize]
	body := enc.data[start+v3RecHeaderSize:]
	binary.LittleEndian.PutUint32(h[0:], uint32(len(body)))
	binary.LittleEndian.PutUint64(h[4:], 0)
	binary.LittleEndian.PutUint32(h[12:], uint32(count))
	binary.LittleEndian.PutUint32(h[16:], flags)
	binary.LittleEndian.PutUint32(h[20:], crc32.Update(key, crcTable, body))
	binary.LittleEndian.PutUint32(h[24:], 0)
	enc.recs = append(enc.recs, encodedRec{off: start, n: len(enc.data) - start, count: count})
}

// number gives record r the sequence number seq and completes its header.
func (enc *encoded) number(r encodedRec, key uint32, seq uint64) []byte {
	b := enc.data[r.off : r.off+r.n]
	binary.LittleEndian.PutUint64(b[4:], seq)
	binary.LittleEndian.PutUint32(b[24:], crc32.Update(key, crcTable, b[:24]))
	return b
}

// parseV3Header checks a v3 record header: its own CRC (with sums), a
// plausible length and count. pl is the body's length on disk.
func parseV3Header(h []byte, key uint32, sums bool) (recHeader, error) {
	if sums && crc32.Update(key, crcTable, h[:24]) != binary.LittleEndian.Uint32(h[24:]) {
		return recHeader{}, fmt.Errorf("%w: header checksum mismatch", errDamaged)
	}
	n := binary.LittleEndian.Uint32(h)
	count := binary.LittleEndian.Uint32(h[12:])
	flags := binary.LittleEndian.Uint32(h[16:])
	if n == 0 || n > maxRecordBody || count == 0 || uint64(count)*minEntryBytes > maxRecordBody || flags&^flagCompressed != 0 {
		return recHeader{}, fmt.Errorf("%w: length %d, %d entries, flags %#x", errDamaged, n, count, flags)
	}
	return recHeader{pl: int(n), seq: binary.LittleEndian.Uint64(h[4:]), crc: binary.LittleEndian.Uint32(h[20:]),
		count: int(count), compressed: flags&flagCompressed != 0}, nil
}

// decodedLen returns the length of a compressed body once decoded,
// checked against maxRecordBody before anything is allocated for it.
func decodedLen(body []byte) (int, error) {
	n, err := s2.DecodedLen(body)
	if err != nil {
		return 0, fmt.Errorf("%w: compressed body: %w", errDamaged, err)
	}
	if n < minEntryBytes || n > maxRecordBody {
		return 0, fmt.Errorf("%w: compressed body of %d bytes decoded", errDamaged, n)
	}
	return n, nil
}

// decompress decodes body into dst, which has room for exactly
// decodedLen(body) bytes.
func decompress(dst, body []byte) error {
	out, err := s2.Decode(dst, body)
	if err != nil || len(out) != len(dst) || (len(out) > 0 && &out[0] != &dst[0]) {
		return fmt.Errorf("%w: compressed body does not decode", errDamaged)
	}
	return nil
}

// checkEntries checks that b holds exactly count entries.
func checkEntries(b []byte, count int) error {
	for range count {
		_, _, _, rest, err := nextEntry(b)
		if err != nil {
			return err
		}
		b = rest
	}
	if len(b) != 0 {
		return fmt.Errorf("%w: %d bytes after the record's last entry", errDamaged, len(b))
	}
	return nil
}

// nextEntry splits the first entry off a v3 body.
func nextEntry(b []byte) (t int64, cat, msg, rest []byte, err error) {
	if len(b) < minEntryBytes {
		return 0, nil, nil, nil, fmt.Errorf("%w: entry cut short", errDamaged)
	}
	t = int64(binary.LittleEndian.Uint64(b))
	b = b[8:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n == 0 || n > uint64(len(b)-k) {
		return 0, nil, nil, nil, fmt.Errorf("%w: bad category length", errDamaged)
	}
	cat, b = b[k:k+int(n):k+int(n)], b[k+int(n):]
	n, k = binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return 0, nil, nil, nil, fmt.Errorf("%w: bad message length", errDamaged)
	}
	msg = b[k : k+int(n) : k+int(n)]
	return t, cat, msg, b[k+int(n):], nil
}
