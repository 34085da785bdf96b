package thriftsrv

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/apache/thrift/lib/go/thrift"
)

// Call is the message header of a call, read from the first bytes of its
// frame before the rest arrives.
type Call struct {
	Name  string
	Type  thrift.TMessageType // CALL or ONEWAY
	SeqID int32
	// Bytes is the frame's size.
	Bytes int64
}

// protocolError says that the peer does not speak framed binary Thrift:
// the connection is closed at once.
type protocolError struct{ what string }

func (e *protocolError) Error() string { return e.what }

// malformedError is a framed call whose message header is broken.
type malformedError struct{ what string }

func (e *malformedError) Error() string { return e.what }

var httpMethods = []string{"GET ", "PUT ", "POST", "HEAD", "DELE", "OPTI", "PATC", "CONN", "TRAC", "PRI "}

// sniffSize reads the four bytes where a frame size should be and names
// what else they may be: another transport or protocol, TLS, HTTP. None
// of these can be taken for a frame size the server accepts (they are
// negative or over 256MiB), so a framed client is never misjudged.
func sniffSize(h [4]byte) (int64, error) {
	switch {
	case h[0] == 0x80 && h[1] == 0x01:
		return 0, &protocolError{"unframed (buffered) transport with the binary protocol; this port needs framed transport"}
	case h[0] == 0x82:
		return 0, &protocolError{"compact protocol, unframed; this port needs framed transport and the binary protocol"}
	case h[0] == 0x16 && h[1] == 0x03:
		return 0, &protocolError{"a TLS handshake; this port speaks plain TCP"}
	}
	for _, m := range httpMethods {
		if string(h[:]) == m {
			return 0, &protocolError{"an HTTP request; this port speaks Thrift (framed, binary)"}
		}
	}
	size := int64(binary.BigEndian.Uint32(h[:]))
	switch {
	case size&0x80000000 != 0:
		return 0, &protocolError{fmt.Sprintf("bytes %x are not a frame size", h)}
	case size == 0:
		return 0, &malformedError{"empty frame"}
	}
	return size, nil
}

// readHeader reads the message header at the start of a frame of size
// bytes from r. It returns the header and the bytes it read (the frame's
// first bytes), and never reads past the frame.
func readHeader(r io.Reader, size int64, buf []byte) (Call, []byte, error) {
	call := Call{Bytes: size}
	buf = buf[:0]
	need := func(n int) ([]byte, error) {
		if int64(len(buf)+n) > size {
			return nil, errShortFrame
		}
		start := len(buf)
		buf = append(buf, make([]byte, n)...)
		if _, err := io.ReadFull(r, buf[start:]); err != nil {
			return nil, err
		}
		return buf[start:], nil
	}
	classify := func(err error) (Call, []byte, error) {
		if errors.Is(err, errShortFrame) || isMalformed(err) {
			// A non-strict header sent unframed: the "frame size" was the
			// name's length, the frame the name.
			if len(buf) > 0 && printable(buf) {
				return call, buf, &protocolError{"unframed (buffered) transport with a non-strict binary header; this port needs framed transport"}
			}
			if errors.Is(err, errShortFrame) {
				return call, buf, &malformedError{fmt.Sprintf("frame of %d bytes too short for a message header", size)}
			}
		}
		return call, buf, err
	}
	if size < 4 {
		if _, err := need(int(size)); err != nil {
			return call, buf, err
		}
		return classify(errShortFrame)
	}
	first, err := need(4)
	if err != nil {
		return call, buf, err
	}
	v := binary.BigEndian.Uint32(first)
	var nameLen uint32
	strict := v&0x80000000 != 0
	if strict {
		switch {
		case first[0] == 0x82:
			return call, buf, &protocolError{"compact protocol; this port needs the binary protocol"}
		case v&0xffff0000 != 0x80010000:
			return call, buf, &malformedError{fmt.Sprintf("bad binary protocol version %#x", v)}
		}
		call.Type = thrift.TMessageType(v & 0xff)
		b, err := need(4)
		if err != nil {
			return classify(err)
		}
		nameLen = binary.BigEndian.Uint32(b)
	} else {
		if first[0] == 0x0f && first[1] == 0xff {
			return call, buf, &protocolError{"THeader transport; this port needs framed transport"}
		}
		nameLen = v
	}
	if nameLen == 0 || nameLen > maxMethodName {
		return classify(&malformedError{fmt.Sprintf("method name of %d bytes", nameLen)})
	}
	name, err := need(int(nameLen))
	if err != nil {
		return classify(err)
	}
	if !printable(name) {
		return call, buf, &malformedError{"method name is not printable ASCII"}
	}
	call.Name = string(name)
	if !strict {
		b, err := need(1)
		if err != nil {
			return classify(err)
		}
		call.Type = thrift.TMessageType(b[0])
	}
	seq, err := need(4)
	if err != nil {
		return classify(err)
	}
	call.SeqID = int32(binary.BigEndian.Uint32(seq))
	if call.Type != thrift.CALL && call.Type != thrift.ONEWAY {
		return call, buf, &malformedError{fmt.Sprintf("message type %d is not a call", call.Type)}
	}
	return call, buf, nil
}

var errShortFrame = errors.New("frame ends inside the message header")

func isMalformed(err error) bool {
	var me *malformedError
	return errors.As(err, &me)
}

func printable(b []byte) bool {
	for _, c := range b {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

// frameReader holds one frame in pooled chunks and reads it as a Thrift
// transport.
type frameReader struct {
	budget *Budget
	chunks []*[]byte
	left   int64 // bytes not yet read
	ci     int   // current chunk
	off    int   // offset in it
	csize  int   // size of the chunks
	size   int64
	// whole is the frame in one slice, its only chunk, from the flats:
	// read whole (fill), or its unread bytes copied (rest).
	whole *[]byte
	got   int64 // bytes of the frame read by fill so far
}

// held is the chunk bytes of the frame being read.
func (f *frameReader) held() int64 {
	c := int64(chunkFor(f.size))
	return (f.size + c - 1) / c * c
}

// charger takes each chunk's share of the budget before fill reads it.
type charger interface {
	// take takes n bytes; false: there is no room for them.
	take(n int64) bool
}

// errNoRoom: fill stopped at a chunk there was no room for in the budget.
var errNoRoom = errors.New("no room for the next chunk of the call under max_inflight_bytes")

// fill reads a frame of size bytes whose first bytes are head and the
// rest come from r. With ch, the frame is read in chunks, each charged
// to the budget (twice: the chunk and its share of what decoding
// allocates) before it is read, so a call holds what has arrived; if
// ch has no room fill returns errNoRoom, and got is what was read.
// Without it the frame's charge was taken before.
func (f *frameReader) fill(r io.Reader, head []byte, size int64, ch charger) error {
	f.release()
	f.size, f.left, f.csize, f.got = size, size, chunkFor(size), int64(len(head))
	if ch == nil && size > int64(f.csize) && size <= maxFlatPooled {
		// A frame of several chunks, up to the size of a pooled flat
		// buffer (a Scribe call of a few thousand lines), is read into
		// one slice, its only chunk: rest then hands the arguments out
		// in place instead of copying them out of the chunks. It holds
		// no more than the chunks would (held, Charge).
		w := f.budget.getFlat()
		if int64(cap(*w)) < size {
			*w = make([]byte, size)
		}
		*w = (*w)[:size]
		f.whole, f.csize = w, int(size)
		f.chunks = append(f.chunks, w)
		m := copy(*w, head)
		_, err := io.ReadFull(r, (*w)[m:])
		return err
	}
	for done := int64(0); done < size; {
		if ch != nil && !ch.take(2*int64(f.csize)) {
			return errNoRoom
		}
		c := f.budget.getChunk(f.csize)
		f.chunks = append(f.chunks, c)
		n := int(min(int64(f.csize), size-done))
		dst := (*c)[:n]
		m := 0
		if done < int64(len(head)) {
			m = copy(dst, head[done:])
		}
		if _, err := io.ReadFull(r, dst[m:]); err != nil {
			return err
		}
		done += int64(n)
		f.got = done
	}
	return nil
}

// release returns the chunks to the pool; the frame is gone.
func (f *frameReader) release() {
	if f.whole != nil {
		f.budget.putFlat(f.whole)
		f.whole = nil
	} else {
		for _, c := range f.chunks {
			f.budget.putChunk(c)
		}
	}
	clear(f.chunks)
	f.chunks = f.chunks[:0]
	f.left, f.ci, f.off = 0, 0, 0
}

func (f *frameReader) cur() []byte {
	n := int(min(int64(f.csize-f.off), f.left))
	return (*f.chunks[f.ci])[f.off : f.off+n]
}

func (f *frameReader) advance(n int) {
	f.off += n
	f.left -= int64(n)
	if f.off == f.csize {
		f.ci++
		f.off = 0
	}
}

func (f *frameReader) Read(p []byte) (int, error) {
	if f.left == 0 {
		return 0, io.EOF
	}
	n := copy(p, f.cur())
	f.advance(n)
	return n, nil
}

func (f *frameReader) ReadByte() (byte, error) {
	if f.left == 0 {
		return 0, io.EOF
	}
	c := f.cur()[0]
	f.advance(1)
	return c, nil
}

// readString reads n bytes (n <= left) as a string with one allocation.
func (f *frameReader) readString(n int) string {
	if n == 0 {
		return ""
	}
	if c := f.cur(); len(c) >= n {
		s := string(c[:n])
		f.advance(n)
		return s
	}
	b := make([]byte, n)
	_, _ = io.ReadFull(f, b) // cannot fail: n <= left, and the frame is in memory
	return string(b)
}

func (f *frameReader) RemainingBytes() uint64          { return uint64(f.left) }
func (f *frameReader) Write([]byte) (int, error)       { return 0, errReadOnly }
func (f *frameReader) WriteByte(byte) error            { return errReadOnly }
func (f *frameReader) WriteString(string) (int, error) { return 0, errReadOnly }
func (f *frameReader) Flush(context.Context) error     { return nil }
func (f *frameReader) Close() error                    { return nil }
func (f *frameReader) Open() error                     { return nil }
func (f *frameReader) IsOpen() bool                    { return true }

var errReadOnly = errors.New("thriftsrv: a call's frame is read-only")

// Decoding cost estimates, in bytes of Go memory: a string or []byte is
// its bytes plus a header; an element of a container (a pointer and a
// small struct, or a map slot) about 64 bytes.
const (
	costPerString  = 16
	costPerElement = 64
	// costStep: more budget is taken in steps of this.
	costStep = 64 << 10
)

// errOverBudget ends a decode that found no room for what it holds.
var errOverBudget = errors.New("no room under max_inflight_bytes for what decoding the call holds")

// callProtocol decodes a call from its frame in memory, charging what the
// decoded values will hold to the budget: the frame's size is reserved
// for them in advance; beyond it (many tiny entries), more is taken if
// free now, else waited for (grow), and without room in time decoding
// stops and the call is refused as busy.
type callProtocol struct {
	*thrift.TBinaryProtocol
	frame *frameReader
	cfg   *thrift.TConfiguration
	// grow waits for n more bytes of the budget for a call that holds
	// held, returning what it took (less than n once the call holds the
	// whole budget); nil: nothing is waited for.
	grow func(held, n int64) (int64, bool)

	held     int64 // the frame's charge
	reserved int64 // budget held for decoded values
	used     int64 // estimated decoded bytes
	extra    int64 // taken beyond the initial reservation
	exceeded bool
	alone    bool // it holds the whole budget
}

func newCallProtocol(f *frameReader, cfg *thrift.TConfiguration) *callProtocol {
	return &callProtocol{TBinaryProtocol: thrift.NewTBinaryProtocolConf(f, cfg), frame: f, cfg: cfg}
}

// reset readies p for a call whose frame's charge, held, reserves what
// the frame's chunks do not hold for decoded values.
func (p *callProtocol) reset(held, frame int64) {
	p.held, p.reserved, p.used, p.extra, p.exceeded, p.alone = held, held-frame, 0, 0, false, false
}

func (p *callProtocol) charge(n int64) error {
	p.used += n
	if p.used <= p.reserved {
		return nil
	}
	more := (p.used - p.reserved + costStep - 1) / costStep * costStep
	got, ok := more, p.frame.budget.TryAcquire(more)
	if !ok && p.grow != nil {
		// Not refused because others hold the budget now: such a call,
		// sent again, would be refused again whenever the server is
		// busy, and for ever if it needs more than the whole budget.
		got, ok = p.grow(p.held+p.extra, more)
	}
	if !ok {
		p.exceeded = true
		return thrift.NewTProtocolExceptionWithType(thrift.SIZE_LIMIT, errOverBudget)
	}
	p.extra += got
	p.reserved += more
	if got < more {
		// It holds the whole budget: it runs alone, and takes no more.
		p.alone, p.reserved = true, math.MaxInt64
	}
	return nil
}

func (p *callProtocol) readSize(ctx context.Context) (int, error) {
	size, err := p.ReadI32(ctx)
	if err != nil {
		return 0, err
	}
	if size < 0 {
		return 0, thrift.NewTProtocolExceptionWithType(thrift.NEGATIVE_SIZE, fmt.Errorf("negative size %d", size))
	}
	if int64(size) > p.frame.left {
		return 0, thrift.NewTProtocolExceptionWithType(thrift.SIZE_LIMIT, fmt.Errorf("string of %d bytes runs past the end of the frame (%d bytes left)", size, p.frame.left))
	}
	if err := p.charge(int64(size) + costPerString); err != nil {
		return 0, err
	}
	return int(size), nil
}

// ReadBinary allocates exactly the bytes read (thrift's own grows a
// buffer by doubling, doubling what a large message costs).
func (p *callProtocol) ReadBinary(ctx context.Context) ([]byte, error) {
	n, err := p.readSize(ctx)
	if err != nil {
		return nil, err
	}
	b := make([]byte, n)
	_, _ = io.ReadFull(p.frame, b) // cannot fail: readSize checked n <= left, and the frame is in memory
	return b, nil
}

func (p *callProtocol) ReadString(ctx context.Context) (string, error) {
	n, err := p.readSize(ctx)
	if err != nil {
		return "", err
	}
	return p.frame.readString(n), nil
}

func (p *callProtocol) ReadListBegin(ctx context.Context) (thrift.TType, int, error) {
	t, n, err := p.TBinaryProtocol.ReadListBegin(ctx)
	if err == nil {
		err = p.charge(int64(n) * costPerElement)
	}
	return t, n, err
}

func (p *callProtocol) ReadSetBegin(ctx context.Context) (thrift.TType, int, error) {
	t, n, err := p.TBinaryProtocol.ReadSetBegin(ctx)
	if err == nil {
		err = p.charge(int64(n) * costPerElement)
	}
	return t, n, err
}

func (p *callProtocol) ReadMapBegin(ctx context.Context) (thrift.TType, thrift.TType, int, error) {
	k, v, n, err := p.TBinaryProtocol.ReadMapBegin(ctx)
	if err == nil {
		err = p.charge(int64(n) * costPerElement)
	}
	return k, v, n, err
}

// Skip skips through this protocol, so that skipped fields are bounded
// and charged like read ones.
func (p *callProtocol) Skip(ctx context.Context, t thrift.TType) error {
	return thrift.SkipDefaultDepth(ctx, p, t)
}

// ReadMessageEnd: the arguments are decoded, the frame is no longer
// needed; its chunks go back to the pool before the handler runs.
func (p *callProtocol) ReadMessageEnd(ctx context.Context) error {
	p.frame.release()
	return nil
}

// outBuffer collects a reply, behind room for its frame size.
type outBuffer struct{ bytes.Buffer }

func (o *outBuffer) start() {
	if o.Cap() > 1<<20 {
		// Do not keep a large reply's buffer for the connection's life.
		o.Buffer = bytes.Buffer{}
	}
	o.Reset()
	o.Write([]byte{0, 0, 0, 0})
}

// frame returns the reply as one frame, or nil if nothing was written
// (a oneway call).
func (o *outBuffer) frame() []byte {
	b := o.Bytes()
	if len(b) == 4 {
		return nil
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

// empty reports whether no reply was written.
func (o *outBuffer) empty() bool { return o.Len() <= 4 }

func (o *outBuffer) Flush(context.Context) error { return nil }
func (o *outBuffer) Close() error                { return nil }
func (o *outBuffer) Open() error                 { return nil }
func (o *outBuffer) IsOpen() bool                { return true }
func (o *outBuffer) RemainingBytes() uint64      { return ^uint64(0) }
