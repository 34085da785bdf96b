package segment

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
)

// DamageError reports a damaged stretch of a segment that Reader.Next
// passed over. After it, Next goes on with the rest of the segment
// (Resumed: v2 segments) or reports io.EOF (the rest is lost: v1
// segments, a torn tail, a v2 segment whose remaining bytes hold no valid
// block header).
type DamageError struct {
	// Offset is where the damaged block starts.
	Offset int64
	// Resumed: reading goes on at Reader.Offset, the next valid block.
	Resumed bool
	// Blocks is how many blocks were lost: exactly one when a damaged
	// body was skipped by its length; at least one otherwise.
	Blocks int
	// Entries is how many entries were lost, or -1 if unknown (the count
	// is in a header that was damaged, or the rest of a v1 segment).
	Entries int
	// Err wraps ErrCorrupt or ErrTruncated, with what was wrong.
	Err error
}

func (e *DamageError) Error() string {
	return fmt.Sprintf("block at offset %d: %v", e.Offset, e.Err)
}

func (e *DamageError) Unwrap() error { return e.Err }

// Reader reads the blocks of one segment in order.
type Reader struct {
	r       *bufio.Reader
	offset  int64
	buf     []byte
	version int
	sync    [SyncSize]byte
	// repaired: the v2 file header was damaged and its marker was taken
	// from the first block header.
	repaired bool
	ended    bool // the rest of the segment is lost
}

// readerBufSize is the read buffer, also the window a resync scans at a
// time.
const readerBufSize = 256 << 10

// NewReader reads the header of the segment r and positions the reader
// at offset, which is 0 (the first block), or a block boundary an
// earlier Reader reported by Offset. A file header that is damaged
// beyond repair is ErrCorrupt (or ErrTruncated when the file is too short
// to hold one): the whole segment is unreadable.
func NewReader(r io.ReadSeeker, offset int64) (*Reader, error) {
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("seek segment header: %w", err)
	}
	hdr := make([]byte, HeaderSizeV2+BlockHeaderSize)
	n, err := io.ReadFull(r, hdr)
	if err != nil && !atEnd(err) {
		return nil, fmt.Errorf("read segment header: %w", err)
	}
	hdr = hdr[:n]
	rd := &Reader{}
	switch {
	case len(hdr) >= len(MagicV1) && string(hdr[:len(MagicV1)]) == MagicV1:
		rd.version = 1
	case int64(len(hdr)) >= HeaderSizeV2 && validFileHeader(hdr[:HeaderSizeV2]):
		rd.version = 2
		copy(rd.sync[:], hdr[len(MagicV2):])
	case int64(len(hdr)) >= HeaderSizeV2+BlockHeaderSize && selfValidBlockHeader(hdr[HeaderSizeV2:]):
		// The file header is damaged; the first block's header carries
		// the marker and vouches for itself.
		rd.version = 2
		rd.repaired = true
		copy(rd.sync[:], hdr[HeaderSizeV2:])
	case len(hdr) < len(MagicV1) || int64(len(hdr)) < HeaderSizeV2 && string(hdr[:len(MagicV2)]) == MagicV2:
		return nil, fmt.Errorf("read segment header: %w", ErrTruncated)
	default:
		return nil, fmt.Errorf("%w: not a segment, or its header is damaged (header %q)", ErrCorrupt, hdr[:min(len(hdr), 8)])
	}
	start := rd.HeaderSize()
	if offset < start {
		offset = start
	}
	if _, err := r.Seek(offset, io.SeekStart); err != nil {
		return nil, fmt.Errorf("seek segment to %d: %w", offset, err)
	}
	rd.r = bufio.NewReaderSize(r, readerBufSize)
	rd.offset = offset
	return rd, nil
}

// Version is the segment's format version, 1 or 2.
func (r *Reader) Version() int { return r.version }

// HeaderSize is the length of the segment's file header.
func (r *Reader) HeaderSize() int64 {
	if r.version == 1 {
		return HeaderSize
	}
	return HeaderSizeV2
}

// Header is a valid file header for the segment (a repaired one if it was
// damaged): what a copy of its blocks starts with.
func (r *Reader) Header() []byte {
	if r.version == 1 {
		return []byte(MagicV1)
	}
	return appendHeaderV2(nil, r.sync)
}

// Repaired reports whether the file header was damaged and the sync
// marker was taken from the first block instead (nothing was lost).
func (r *Reader) Repaired() bool { return r.repaired }

// Offset is the position after the last block returned (or damage passed
// over): where to resume.
func (r *Reader) Offset() int64 { return r.offset }

// Next decodes the next block into b; b's messages alias a buffer that the
// next call reuses. It returns io.EOF at the end, and a *DamageError for
// a damaged stretch, after which it can be called again (see
// DamageError). Any other error is the underlying reader failing, also
// one that wraps io.EOF or io.ErrUnexpectedEOF: only those values
// themselves end the segment (callers compare with io.EOF, not
// errors.Is).
func (r *Reader) Next(b *Block) error {
	if r.ended {
		return io.EOF
	}
	if r.version == 1 {
		return r.nextV1(b)
	}
	return r.nextV2(b)
}

// lost ends the segment after damage that leaves nothing to resume at.
func (r *Reader) lost(start int64, entries int, err error) error {
	r.ended = true
	return &DamageError{Offset: start, Blocks: 1, Entries: entries, Err: err}
}

func (r *Reader) nextV1(b *Block) error {
	start := r.offset
	var hdr [8]byte
	if _, err := io.ReadFull(r.r, hdr[:]); err != nil {
		if err == io.EOF { // only the end itself (atEnd)
			return io.EOF
		}
		if atEnd(err) {
			return r.lost(start, -1, ErrTruncated)
		}
		return err
	}
	n := binary.LittleEndian.Uint32(hdr[:4])
	if n > MaxBlockSize {
		return r.lost(start, -1, fmt.Errorf("%w: length %d over %d", ErrCorrupt, n, MaxBlockSize))
	}
	body, err := r.readBody(int(n))
	if err != nil {
		if atEnd(err) {
			return r.lost(start, -1, ErrTruncated)
		}
		return err
	}
	if crc32.Checksum(body, crcTable) != binary.LittleEndian.Uint32(hdr[4:]) {
		return r.lost(start, -1, fmt.Errorf("%w: checksum mismatch", ErrCorrupt))
	}
	if err := DecodeBody(body, b); err != nil {
		return r.lost(start, -1, err)
	}
	r.offset += 8 + int64(n)
	return nil
}

func (r *Reader) nextV2(b *Block) error {
	start := r.offset
	body, count, err := r.storedV2()
	if err != nil {
		return err
	}
	if err := DecodeBody(body, b); err != nil {
		return &DamageError{Offset: start, Resumed: true, Blocks: 1, Entries: count, Err: err}
	}
	if len(b.Messages) != count {
		return &DamageError{Offset: start, Resumed: true, Blocks: 1, Entries: count, Err: fmt.Errorf("%w: %d entries, the header says %d", ErrCorrupt, len(b.Messages), count)}
	}
	return nil
}

// Skip passes over the next block after checking its header and the CRC
// of its body as stored, without decoding (decompressing) the body: what
// moves whole blocks (a salvage) checks no more, so that a block a
// reader of this version cannot decode (a compression of a later
// version) is moved all the same. It returns the entry count of the
// block's header (v2; a v1 block, which has none, is decoded for it).
// The end and damage are reported as by Next.
func (r *Reader) Skip() (entries int, err error) {
	if r.ended {
		return 0, io.EOF
	}
	if r.version == 1 {
		var b Block
		if err := r.nextV1(&b); err != nil {
			return 0, err
		}
		return len(b.Messages), nil
	}
	_, count, err := r.storedV2()
	return count, err
}

// storedV2 reads the next v2 block and checks its header and its body's
// CRC: it returns the body as stored and the header's entry count.
func (r *Reader) storedV2() (body []byte, count int, err error) {
	start := r.offset
	hdr, err := r.r.Peek(BlockHeaderSize)
	if len(hdr) == 0 && atEnd(err) {
		return nil, 0, io.EOF
	}
	if err != nil && !atEnd(err) {
		return nil, 0, err
	}
	if len(hdr) < BlockHeaderSize || !r.validBlockHeader(hdr) {
		// The length cannot be trusted: find the next block by its header.
		return nil, 0, r.resync(start, len(hdr) < BlockHeaderSize)
	}
	n := int(binary.LittleEndian.Uint32(hdr[16:]))
	count = int(binary.LittleEndian.Uint32(hdr[20:]))
	want := binary.LittleEndian.Uint32(hdr[24:])
	r.discard(BlockHeaderSize)
	body, err = r.readBody(n)
	if err != nil {
		if atEnd(err) {
			r.offset += int64(len(body))
			return nil, 0, r.lost(start, count, ErrTruncated)
		}
		return nil, 0, err
	}
	r.offset += int64(n)
	if crc32.Checksum(body, crcTable) != want {
		return nil, 0, &DamageError{Offset: start, Resumed: true, Blocks: 1, Entries: count, Err: fmt.Errorf("%w: body checksum mismatch", ErrCorrupt)}
	}
	return body, count, nil
}

// resync skips a damaged block header at start: it scans for the next
// valid header and reports the damage.
func (r *Reader) resync(start int64, short bool) error {
	what := fmt.Errorf("%w: damaged block header", ErrCorrupt)
	if short {
		what = fmt.Errorf("%w: block header cut short", ErrTruncated)
	}
	r.discard(1)
	for {
		win, err := r.r.Peek(readerBufSize)
		if err != nil && !atEnd(err) {
			return err
		}
		atEOF := err != nil
		i := bytes.Index(win, r.sync[:])
		switch {
		case i < 0 && atEOF:
			r.discard(len(win))
			return r.lost(start, -1, what)
		case i < 0:
			// Keep what could be the start of a marker cut by the window.
			r.discard(len(win) - (SyncSize - 1))
		case i+BlockHeaderSize > len(win) && atEOF:
			r.discard(len(win))
			return r.lost(start, -1, what)
		case i+BlockHeaderSize > len(win):
			r.discard(i) // the next window starts with the candidate
		case r.validBlockHeader(win[i : i+BlockHeaderSize]):
			r.discard(i)
			return &DamageError{Offset: start, Resumed: true, Blocks: 1, Entries: -1, Err: what}
		default:
			r.discard(i + 1)
		}
	}
}

func (r *Reader) discard(n int) {
	m, _ := r.r.Discard(n)
	r.offset += int64(m)
}

// readBody reads n bytes. The buffer grows with the bytes that arrive, so
// that a damaged length costs no more memory than the bytes that are
// there.
func (r *Reader) readBody(n int) ([]byte, error) {
	if cap(r.buf) >= n {
		body := r.buf[:n]
		m, err := io.ReadFull(r.r, body)
		return body[:m], err
	}
	body := r.buf[:0]
	for len(body) < n {
		chunk := min(n-len(body), max(len(body), 1<<20))
		body = slices.Grow(body, chunk)
		m, err := io.ReadFull(r.r, body[len(body):len(body)+chunk])
		body = body[:len(body)+m]
		if err != nil {
			r.buf = body[:0]
			return body, err
		}
	}
	r.buf = body[:0]
	return body, nil
}

// atEnd reports whether err is the end of the segment's bytes: io.EOF
// or io.ErrUnexpectedEOF itself, as an io.Reader, bufio and io.ReadFull
// return them at the end of a file. An error that wraps one of them is
// the reader failing (a dfs naming its file, a network stream that ended
// early), after which the bytes may still come: it is no truncation.
func atEnd(err error) bool {
	return err == io.EOF || err == io.ErrUnexpectedEOF //nolint:errorlint // the bare values only: see above
}

// validBlockHeader checks a v2 block header against the segment's marker.
func (r *Reader) validBlockHeader(h []byte) bool {
	return bytes.Equal(h[:SyncSize], r.sync[:]) && selfValidBlockHeader(h)
}

// selfValidBlockHeader checks a v2 block header's own CRC and length.
func selfValidBlockHeader(h []byte) bool {
	return crc32.Checksum(h[:28], crcTable) == binary.LittleEndian.Uint32(h[28:32]) &&
		binary.LittleEndian.Uint32(h[16:]) <= MaxBlockSize
}

func validFileHeader(h []byte) bool {
	return string(h[:len(MagicV2)]) == MagicV2 &&
		crc32.Checksum(h[:28], crcTable) == binary.LittleEndian.Uint32(h[28:32])
}
