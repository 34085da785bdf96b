package segment

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Reader reads the blocks of one segment in order.
type Reader struct {
	r      *bufio.Reader
	offset int64
	buf    []byte
}

// NewReader reads blocks from r, which is positioned at offset in its
// segment (HeaderSize or later, at a block boundary). At offset 0 it reads
// and checks the header first.
func NewReader(r io.Reader, offset int64) (*Reader, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	if offset == 0 {
		hdr := make([]byte, HeaderSize)
		if _, err := io.ReadFull(br, hdr); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("read segment header: %w", ErrTruncated)
			}
			return nil, fmt.Errorf("read segment header: %w", err)
		}
		if string(hdr) != Magic {
			return nil, fmt.Errorf("%w: not a segment (header %q)", ErrCorrupt, hdr)
		}
		offset = HeaderSize
	}
	return &Reader{r: br, offset: offset}, nil
}

// Offset is the position after the last block returned: where to resume.
func (r *Reader) Offset() int64 { return r.offset }

// Next decodes the next block into b; b's messages alias a buffer that the
// next call reuses. It returns io.EOF at a clean end, ErrTruncated if the
// segment ends inside a block.
func (r *Reader) Next(b *Block) error {
	var hdr [8]byte
	if _, err := io.ReadFull(r.r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return io.EOF
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("block at offset %d: %w", r.offset, ErrTruncated)
		}
		return err
	}
	n := binary.LittleEndian.Uint32(hdr[:4])
	if n > MaxBlockSize {
		return fmt.Errorf("block at offset %d: %w: length %d over %d", r.offset, ErrCorrupt, n, MaxBlockSize)
	}
	if cap(r.buf) < int(n) {
		r.buf = make([]byte, n)
	}
	body := r.buf[:n]
	if _, err := io.ReadFull(r.r, body); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("block at offset %d: %w", r.offset, ErrTruncated)
		}
		return err
	}
	if crc32.Checksum(body, crcTable) != binary.LittleEndian.Uint32(hdr[4:]) {
		return fmt.Errorf("block at offset %d: %w: checksum mismatch", r.offset, ErrCorrupt)
	}
	if err := DecodeBody(body, b); err != nil {
		return fmt.Errorf("block at offset %d: %w", r.offset, err)
	}
	r.offset += 8 + int64(n)
	return nil
}
