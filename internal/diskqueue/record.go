package diskqueue

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
)

const (
	segMagic  = "FWDQ"
	segSuffix = ".seg"
	tmpSuffix = ".tmp"

	// Format v1, written by earlier versions, read only: a 16-byte
	// segment header and records of length u32 | crc32c(payload) u32 |
	// payload.
	v1HeaderSize    = 16
	v1RecHeaderSize = 8
	v1MaxPayload    = 64 << 20

	// Format v2, written by earlier versions, read only: the segment
	// header is a 36-byte block written twice (a damaged byte in one copy
	// costs nothing); a record (one entry) header carries the payload
	// length, the record's sequence number, the payload CRC and a CRC of
	// the header itself, so that a damaged record can be skipped alone
	// and the next one found by scanning.
	v2Version     = 2
	v2BlockSize   = 36
	segHeaderSize = 2 * v2BlockSize
	recHeaderSize = 20

	// Format v3 (written now): v2's segment header with version 3, and
	// records of several entries, compressed (record3.go).
	segVersion = 3

	// minPayload is the smallest valid payload: a timestamp, a one-byte
	// varint and a one-byte category. It makes an all-zero region (what a
	// crash can leave after the last fsynced byte) invalid in v1, whose
	// record headers have no CRC of their own.
	minPayload = 8 + 1 + 1
	// MaxRecordBytes bounds an entry's RecordSize (a v2 record, header
	// and payload) and a v3 record's body, encoded or decoded: a Scribe
	// call may be up to 256 MiB and a single message nearly that, so a
	// record must hold 256 MiB plus room for the category. It also
	// bounds the length a damaged header (or a compressed body's decoded
	// length) can make the reader allocate.
	MaxRecordBytes = 256<<20 + 1<<20
	maxPayload     = MaxRecordBytes - recHeaderSize
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// errDamaged marks a record (or segment header) that fails its checks.
var errDamaged = errors.New("damaged record")

// Entry is one Scribe entry as the queue keeps it.
type Entry struct {
	Category string
	Message  []byte
	// Time is when the agent accepted the entry, Unix milliseconds.
	Time int64
}

func payloadSize(e *Entry) int {
	return 8 + uvarintLen(uint64(len(e.Category))) + len(e.Category) + len(e.Message)
}

// RecordSize is the bytes e takes as a record of its own, uncompressed
// (a v2 record): the measure of a batch's size (Read's maxBytes). The
// queue's byte bound counts the bytes on disk instead, usually far fewer
// (Options.MaxBytes).
func RecordSize(e *Entry) int { return recHeaderSize + payloadSize(e) }

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// incarnation is the random identity of one run of the queue. It is a
// secret (a client that knew it could forge entries Puma would take for
// the agent's): it goes into segment headers and, as the key of the
// record CRCs, into every record's checks, and out only in Batch.
type incarnation [16]byte

func (i incarnation) String() string { return hex.EncodeToString(i[:]) }

// crcKey is the CRC state after the incarnation: record CRCs are
// crc32c(incarnation || bytes), so that a record only verifies inside a
// segment of its own incarnation, and bytes a client chose (a message
// that embeds something shaped like a record) do not pass for a record
// when the reader scans for the next valid one after damage.
func (i incarnation) crcKey() uint32 { return crc32.Update(0, crcTable, i[:]) }

// recHeader is a parsed record header.
type recHeader struct {
	pl  int    // payload length (v3: the body's, on disk)
	seq uint64 // v2 and v3 only; the reader fills it in for v1 (v3: the first entry's)
	crc uint32 // expected payload CRC
	// v3 only: the number of entries, and whether the body is compressed.
	count      int
	compressed bool
	// Filled in by the scanner's peek: size is the entry's RecordSize
	// (v1, v2: the record's), the measure of a batch; disk the bytes on
	// disk taking it passes (v3: the record's with its last entry, else 0).
	size, disk int64
}

// parseV2Header checks a v2 record header: its own CRC (with sums) and a
// plausible length. Without sums the CRC is not computed: only for bytes
// this process encoded that never left its memory (mem.go).
func parseV2Header(h []byte, key uint32, sums bool) (recHeader, error) {
	if sums && crc32.Update(key, crcTable, h[:16]) != binary.LittleEndian.Uint32(h[16:]) {
		return recHeader{}, fmt.Errorf("%w: header checksum mismatch", errDamaged)
	}
	n := binary.LittleEndian.Uint32(h)
	if n < minPayload || n > maxPayload {
		return recHeader{}, fmt.Errorf("%w: length %d", errDamaged, n)
	}
	return recHeader{pl: int(n), seq: binary.LittleEndian.Uint64(h[4:]), crc: binary.LittleEndian.Uint32(h[12:]), count: 1}, nil
}

// parseV1Header checks what a v1 record header allows: a plausible length.
func parseV1Header(h []byte) (recHeader, error) {
	n := binary.LittleEndian.Uint32(h)
	if n < minPayload || n > v1MaxPayload {
		return recHeader{}, fmt.Errorf("%w: length %d", errDamaged, n)
	}
	return recHeader{pl: int(n), crc: binary.LittleEndian.Uint32(h[4:])}, nil
}

// decodePayload checks p against crc (keyed with key; with sums, as for
// parseV2Header) and splits it.
func decodePayload(p []byte, key, crc uint32, sums bool) (t int64, cat, msg []byte, err error) {
	if sums && crc32.Update(key, crcTable, p) != crc {
		return 0, nil, nil, fmt.Errorf("%w: checksum mismatch", errDamaged)
	}
	t = int64(binary.LittleEndian.Uint64(p))
	n, k := binary.Uvarint(p[8:])
	if k <= 0 || n == 0 || n > uint64(len(p)-8-k) {
		return 0, nil, nil, fmt.Errorf("%w: bad category length", errDamaged)
	}
	cat = p[8+k : 8+k+int(n)]
	return t, cat, p[8+k+int(n):], nil
}

// segHeader returns a v2 or v3 segment header: the block
// magic | version u32 | first u64 | incarnation [16] | crc32c(the 32 bytes before) u32,
// twice.
func segHeader(first uint64, inc incarnation, version uint32) []byte {
	b := make([]byte, 0, segHeaderSize)
	b = append(b, segMagic...)
	b = binary.LittleEndian.AppendUint32(b, version)
	b = binary.LittleEndian.AppendUint64(b, first)
	b = append(b, inc[:]...)
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
	return append(b, b...)
}

func v1SegHeader(first uint64) []byte {
	b := make([]byte, 0, v1HeaderSize)
	b = append(b, segMagic...)
	b = binary.LittleEndian.AppendUint32(b, 1)
	return binary.LittleEndian.AppendUint64(b, first)
}

// errTornHeader marks a segment whose header never reached the disk (a
// v1 segment created just before a crash): it holds nothing durable.
var errTornHeader = errors.New("segment header never written")

// parseSegHeader reads the header at the start of b (the first bytes of
// the segment whose name says s.first) and fills in s's format. The error
// never quotes the header's bytes: they hold the incarnation.
func parseSegHeader(b []byte, s *segment) error {
	if len(b) >= v2BlockSize && parseV2Block(b[:v2BlockSize], s) {
		return nil
	}
	if len(b) >= segHeaderSize && parseV2Block(b[v2BlockSize:segHeaderSize], s) {
		return nil
	}
	if len(b) >= v1HeaderSize && string(b[:4]) == segMagic && binary.LittleEndian.Uint32(b[4:]) == 1 &&
		binary.LittleEndian.Uint64(b[8:]) == s.first {
		s.version, s.hdrSize, s.recHdr = 1, v1HeaderSize, v1RecHeaderSize
		return nil
	}
	if len(b) < v1HeaderSize || isZero(b[:v1HeaderSize]) {
		return errTornHeader
	}
	return fmt.Errorf("%w: segment header fails its checks", errDamaged)
}

// parseV2Block checks one copy of a v2 or v3 segment header.
func parseV2Block(b []byte, s *segment) bool {
	version := binary.LittleEndian.Uint32(b[4:])
	if string(b[:4]) != segMagic || (version != v2Version && version != segVersion) ||
		binary.LittleEndian.Uint64(b[8:]) != s.first ||
		crc32.Checksum(b[:32], crcTable) != binary.LittleEndian.Uint32(b[32:]) {
		return false
	}
	var inc incarnation
	copy(inc[:], b[16:32])
	s.version, s.hdrSize, s.recHdr = int(version), segHeaderSize, recHeaderSize
	if version == segVersion {
		s.recHdr = v3RecHeaderSize
	}
	s.inc, s.key = inc.String(), inc.crcKey()
	return true
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func segName(first uint64) string { return fmt.Sprintf("%020d%s", first, segSuffix) }

func parseSegName(name string) (uint64, bool) {
	s, ok := strings.CutSuffix(name, segSuffix)
	if !ok || len(s) != 20 {
		return 0, false
	}
	v, err := strconv.ParseUint(s, 10, 64)
	return v, err == nil
}

// spareName is the name an acknowledged segment whose first record was
// first is kept under for reuse (Queue.spare); Open removes it as it does
// unfinished segments.
func spareName(first uint64) string {
	return fmt.Sprintf("spare-%d%s%s", first, segSuffix, tmpSuffix)
}
