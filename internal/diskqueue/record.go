package diskqueue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
)

const (
	segMagic      = "FWDQ"
	segVersion    = 1
	segHeaderSize = 16
	recHeaderSize = 8
	// minPayload is the smallest valid payload: a timestamp, a one-byte
	// varint and a one-byte category. It makes an all-zero region (what a
	// crash can leave after the last fsynced byte) invalid even though the
	// CRC of an empty payload is zero.
	minPayload = 8 + 1 + 1
	// maxPayload bounds a record's claimed length, so that a corrupt
	// length cannot make the reader allocate without limit.
	maxPayload = 64 << 20
	segSuffix  = ".seg"
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// errCorrupt marks a record that fails its checks.
var errCorrupt = errors.New("corrupt record")

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

// RecordSize is the bytes e takes in a segment; the queue's byte bound
// counts this.
func RecordSize(e *Entry) int { return recHeaderSize + payloadSize(e) }

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// appendRecord appends e's record to b.
func appendRecord(b []byte, e *Entry) []byte {
	start := len(b)
	b = binary.LittleEndian.AppendUint64(b, 0) // length and crc, filled below
	b = binary.LittleEndian.AppendUint64(b, uint64(e.Time))
	b = binary.AppendUvarint(b, uint64(len(e.Category)))
	b = append(b, e.Category...)
	b = append(b, e.Message...)
	p := b[start+recHeaderSize:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(p)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(p, crcTable))
	return b
}

// checkHeader validates a record header and returns the payload length.
func checkHeader(h []byte) (int, error) {
	n := binary.LittleEndian.Uint32(h)
	if n < minPayload || n > maxPayload {
		return 0, fmt.Errorf("%w: length %d", errCorrupt, n)
	}
	return int(n), nil
}

// decodePayload checks p against crc and splits it.
func decodePayload(p []byte, crc uint32) (t int64, cat, msg []byte, err error) {
	if crc32.Checksum(p, crcTable) != crc {
		return 0, nil, nil, fmt.Errorf("%w: checksum mismatch", errCorrupt)
	}
	t = int64(binary.LittleEndian.Uint64(p))
	n, k := binary.Uvarint(p[8:])
	if k <= 0 || n == 0 || n > uint64(len(p)-8-k) {
		return 0, nil, nil, fmt.Errorf("%w: bad category length", errCorrupt)
	}
	cat = p[8+k : 8+k+int(n)]
	return t, cat, p[8+k+int(n):], nil
}

func segHeader(first uint64) []byte {
	b := make([]byte, 0, segHeaderSize)
	b = append(b, segMagic...)
	b = binary.LittleEndian.AppendUint32(b, segVersion)
	return binary.LittleEndian.AppendUint64(b, first)
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
