package diskqueue

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// Batch is a run of consecutive entries from the queue, all numbered by
// one incarnation: entry i has sequence number First+i.
type Batch struct {
	First uint64
	// Incarnation is the secret random id of the run of the queue that
	// numbered the entries (hex), "" for entries of format v1. Never log
	// it.
	Incarnation string
	Entries     []Entry
}

// End is the sequence number after the batch's last entry.
func (b Batch) End() uint64 { return b.First + uint64(len(b.Entries)) }

// source reads a segment file from off up to limit.
type source struct {
	f     *os.File
	off   int64
	limit int64
}

func (s *source) Read(p []byte) (int, error) {
	if s.off >= s.limit {
		return 0, io.EOF
	}
	if int64(len(p)) > s.limit-s.off {
		p = p[:s.limit-s.off]
	}
	n, err := s.f.ReadAt(p, s.off)
	s.off += int64(n)
	if n > 0 && errors.Is(err, io.EOF) {
		err = nil
	}
	return n, err
}

// scanner reads the records of one segment in order, up to its readable
// size: the file's size for a sealed segment, the durable size for the
// last one (so that it never reads, and buffers, bytes a failed commit
// wrote and its rollback removes).
//
// It reads the file into buf and hands out payloads where they lie, not
// copied: buf[r:w] are the file's bytes from off on, buf[:r] has been
// handed out and is never written again (with keep), so a payload stays
// valid for as long as its holder keeps it. A read appends after w; when
// buf has too little room left, a new one is allocated and the unread
// bytes (a part of one record) move there.
type scanner struct {
	seg  segment
	src  source
	buf  []byte
	r, w int
	keep bool // payloads are kept by the caller: never reuse buf
	// bufs, with keep, takes the buffers the scanner is done with and
	// gives back those whose payloads are all acknowledged (nil: none
	// given back, each buffer a new one).
	bufs *readBufs
	// committed, with keep, gives the reader a committed chunk still in
	// memory that holds the file's bytes from an offset on (mem.go).
	committed func(seg uint64, off, limit int64) []byte
	// chunk: buf is such a chunk. Its records were encoded by this
	// process into this very buffer, which nothing has written since
	// (the commit only wrote it to the file): their CRCs are not
	// computed again; lengths, sequence numbers and the payloads'
	// structure are checked as always.
	chunk bool
	// handed: a payload of buf has been handed out, the last one that of
	// record handedSeq.
	handed    bool
	handedSeq uint64
	size      int64
	sealed    bool   // size is the file's final size
	off       int64  // offset of the record peek looks at
	pos       uint64 // v1: the sequence number of the record at off
	last      uint64 // the sequence number of the last valid record passed
	hdr       recHeader
	peeked    bool
	// v3: the record being delivered, checked and decoded (record3.go).
	// Its entries not yet taken are rec (recLeft of them, the next one
	// numbered recSeq, parsed by peek into next); it ends at recEnd,
	// where off moves once its last entry is taken.
	rec     []byte
	recLeft int
	recSeq  uint64
	recEnd  int64
	next    entryView
	// dec is the buffer compressed records are decoded into, one after
	// the other; like buf, with keep it is never written again where it
	// was handed out, and it is retired (decHanded: a record's entries
	// lie there, the last numbered decLast) for one to be taken again.
	dec       []byte
	decHanded bool
	decLast   uint64
}

// entryView is an entry of a v3 record where it lies.
type entryView struct {
	t        int64
	cat, msg []byte
	rest     []byte // the record's entries after it
}

// scanBuf is the size of a scanner's buffer, and minRead the least room
// worth reading into: with less, a new buffer is taken.
const (
	scanBuf = 1 << 20
	minRead = 64 << 10
)

// newScanner returns a scanner of s from its first record. With keep,
// the payloads it returns stay valid (the queue's reader hands them out
// in batches); without, each is valid until the next take.
func newScanner(s segment, f *os.File, size int64, keep bool) *scanner {
	return &scanner{seg: s, src: source{f: f, off: s.hdrSize, limit: size}, size: size,
		off: s.hdrSize, pos: s.first, last: s.first - 1, keep: keep}
}

func (sc *scanner) close() {
	_ = sc.src.f.Close() // opened for reading
	if sc.keep {
		sc.retire()
		sc.retireDec()
	}
}

// retireDec gives the decoding buffer to bufs, as retire does buf.
func (sc *scanner) retireDec() {
	if sc.dec != nil {
		sc.bufs.retire(sc.dec, false, sc.decHanded, sc.decLast)
	}
	sc.dec, sc.decHanded = nil, false
}

// decodeSpace returns n bytes of the decoding buffer to decode a record
// into: after the records decoded there before, or in another buffer
// (with keep, the full one is retired; without, it is reused).
func (sc *scanner) decodeSpace(n int) []byte {
	if cap(sc.dec)-len(sc.dec) < n {
		if sc.keep || cap(sc.dec) < n {
			if sc.keep {
				sc.retireDec()
			}
			sc.dec = sc.bufs.take(max(n, scanBuf))
		}
		sc.dec = sc.dec[:0]
	}
	k := len(sc.dec)
	sc.dec = sc.dec[:k+n]
	return sc.dec[k : k+n : k+n]
}

// retire gives the scanner's buffer, which it reads into no more, to
// bufs.
func (sc *scanner) retire() {
	if sc.buf != nil {
		sc.bufs.retire(sc.buf, sc.chunk, sc.handed, sc.handedSeq)
	}
	sc.buf, sc.r, sc.w, sc.handed, sc.chunk = nil, 0, 0, false, false
}

// readBufs recycles the reader's buffers. The payloads a reader hands out
// lie in its buffers (scanner), so a buffer it has filled and moved on
// from is retired, not reused, until every record whose payload it holds
// is acknowledged (Ack): the consumer has then let go of those batches.
// Without it each buffer would be a new one, a megabyte allocated,
// cleared and collected for each megabyte shipped. It belongs to the
// consumer (rmu).
type readBufs struct {
	retired []retiredBuf // oldest first
	free    [][]byte
	// giveBack takes the committed chunks (mem.go) the reader is done
	// with: they go back to the appenders, not to free.
	giveBack func([]byte)
}

type retiredBuf struct {
	buf    []byte
	chunk  bool   // a committed chunk, for giveBack
	handed bool   // a payload of buf was handed out
	last   uint64 // the sequence number of the last one
}

// Bounds of the buffers kept: retired ones beyond maxRetired (a consumer
// that does not acknowledge) are left to the garbage collector, as are
// free ones beyond maxFree.
const (
	maxRetired = 64
	maxFree    = 4
)

// take returns a buffer of at least n bytes' capacity: a free one if it
// is large enough, else a new one.
func (rb *readBufs) take(n int) []byte {
	if rb != nil {
		for i := len(rb.free) - 1; i >= 0; i-- {
			if b := rb.free[i]; cap(b) >= n {
				rb.free = append(rb.free[:i], rb.free[i+1:]...)
				return b[:0]
			}
		}
	}
	return make([]byte, n)
}

// retire takes a buffer the scanner is done with (chunk: a committed
// chunk); handed says whether a payload of it was handed out, the last
// one that of record last.
func (rb *readBufs) retire(buf []byte, chunk, handed bool, last uint64) {
	if rb == nil {
		return
	}
	if !handed {
		rb.release(buf, chunk)
		return
	}
	if len(rb.retired) == maxRetired {
		clear(rb.retired[:1])
		rb.retired = rb.retired[1:]
	}
	rb.retired = append(rb.retired, retiredBuf{buf: buf, chunk: chunk, handed: true, last: last})
}

// acked makes free the retired buffers whose payloads are all below end:
// acknowledged.
func (rb *readBufs) acked(end uint64) {
	n := 0
	for n < len(rb.retired) && rb.retired[n].last < end {
		rb.release(rb.retired[n].buf, rb.retired[n].chunk)
		n++
	}
	clear(rb.retired[:n])
	rb.retired = rb.retired[n:]
}

func (rb *readBufs) release(buf []byte, chunk bool) {
	if chunk {
		if rb.giveBack != nil {
			rb.giveBack(buf)
		}
		return
	}
	// Only buffers of the usual size: one taken for a large record (up
	// to MaxRecordBytes, read or decoded) is left to the garbage
	// collector, so that what the reader keeps stays within
	// maxFree × scanBuf.
	if cap(buf) <= scanBuf && len(rb.free) < maxFree {
		rb.free = append(rb.free, buf[:0])
	}
}

// setSize moves the readable end (the last segment grows as commits end).
func (sc *scanner) setSize(n int64) {
	if n > sc.size {
		sc.size, sc.src.limit = n, n
	}
}

// seek moves to the record at off.
func (sc *scanner) seek(off int64) {
	sc.off, sc.src.off, sc.peeked = off, off, false
	sc.r = sc.w // what was read ahead is not at off
	sc.rec, sc.recLeft = nil, 0
}

// fill makes at least n bytes readable at buf[r:]. It returns io.EOF or
// io.ErrUnexpectedEOF where the readable end comes first.
func (sc *scanner) fill(n int) error {
	for sc.w-sc.r < n {
		if sc.r == sc.w && sc.committed != nil {
			// Nothing unread is buffered: the next bytes may be a
			// committed chunk still in memory, the file's very bytes.
			if c := sc.committed(sc.seg.id, sc.src.off, sc.src.limit); c != nil {
				if sc.keep {
					sc.retire()
				}
				sc.buf, sc.r, sc.w, sc.chunk = c, 0, len(c), true
				sc.src.off += int64(len(c))
				continue
			}
		}
		if room := cap(sc.buf) - sc.w; room < n-(sc.w-sc.r) || room < minRead || sc.chunk {
			// (A committed chunk is never read into: it goes back to
			// the appenders whole.)
			nb := sc.buf
			if sc.keep || cap(sc.buf) < n {
				nb = sc.bufs.take(max(n, scanBuf))
			}
			nb = nb[:cap(nb)]
			k := copy(nb, sc.buf[sc.r:sc.w])
			if sc.keep {
				sc.retire()
			}
			sc.buf, sc.r, sc.w = nb, 0, k
		}
		k, err := sc.src.Read(sc.buf[sc.w:cap(sc.buf)])
		sc.w += k
		if err != nil {
			if sc.w-sc.r >= n {
				return nil
			}
			if errors.Is(err, io.EOF) && sc.w > sc.r {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// peek checks the header of the record at off without consuming it. It
// returns io.EOF exactly at the readable end, an errDamaged error for a
// header that fails its checks or a record that does not fit.
func (sc *scanner) peek() (recHeader, error) {
	if sc.peeked {
		return sc.hdr, nil
	}
	if sc.recLeft > 0 {
		return sc.peekEntry()
	}
	if sc.off >= sc.size {
		return recHeader{}, io.EOF
	}
	if sc.seg.version == 0 {
		return recHeader{}, fmt.Errorf("%w: segment header damaged", errDamaged)
	}
	n := sc.seg.recHdr
	if sc.size-sc.off < int64(n) {
		return recHeader{}, fmt.Errorf("%w: record header cut short", errDamaged)
	}
	if err := sc.fill(n); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return recHeader{}, fmt.Errorf("%w: segment shorter than expected", errDamaged)
		}
		return recHeader{}, fmt.Errorf("read segment %s: %w", sc.seg.path, err)
	}
	b := sc.buf[sc.r : sc.r+n]
	h, err := sc.parseHeader(b, !sc.chunk)
	if sc.seg.version == 1 {
		h.seq = sc.pos
	} else if err == nil && h.seq <= sc.last {
		err = fmt.Errorf("%w: sequence number %d does not follow %d", errDamaged, h.seq, sc.last)
	}
	if err != nil {
		return recHeader{}, err
	}
	if sc.off+int64(n)+int64(h.pl) > sc.size {
		return recHeader{}, fmt.Errorf("%w: record of %d bytes runs past the segment's end", errDamaged, h.pl)
	}
	if sc.seg.version == segVersion {
		if err := sc.load(h); err != nil {
			return recHeader{}, err
		}
		return sc.peekEntry()
	}
	h.size = int64(n + h.pl)
	h.disk = h.size
	sc.hdr, sc.peeked = h, true
	return h, nil
}

// parseHeader checks the record header b of sc's format.
func (sc *scanner) parseHeader(b []byte, sums bool) (recHeader, error) {
	switch sc.seg.version {
	case 1:
		return parseV1Header(b)
	case v2Version:
		return parseV2Header(b, sc.seg.key, sums)
	default:
		return parseV3Header(b, sc.seg.key, sums)
	}
}

// load reads the v3 record at off, whose header h is checked, checks its
// body (CRC over the bytes on disk) and decodes it: its entries are then
// delivered one by one (peekEntry, take). A record that fails its checks
// is left unread and reported as errDamaged: the header's length is
// trustworthy, but scanning past it (resync) finds the next valid record
// all the same, and counts what is lost from the sequence numbers.
func (sc *scanner) load(h recHeader) error {
	n := sc.seg.recHdr
	if err := sc.fill(n + h.pl); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: segment shorter than expected", errDamaged)
		}
		return fmt.Errorf("read segment %s: %w", sc.seg.path, err)
	}
	body := sc.buf[sc.r+n : sc.r+n+h.pl : sc.r+n+h.pl]
	if !sc.chunk && crc32.Update(sc.seg.key, crcTable, body) != h.crc {
		return fmt.Errorf("%w: checksum mismatch", errDamaged)
	}
	entries := body
	if h.compressed {
		dl, err := decodedLen(body)
		if err != nil {
			return err
		}
		entries = sc.decodeSpace(dl)
		if err := decompress(entries, body); err != nil {
			return err
		}
	}
	if err := checkEntries(entries, h.count); err != nil {
		return err
	}
	last := h.seq + uint64(h.count) - 1
	if h.compressed {
		sc.decHanded, sc.decLast = true, last
	} else {
		sc.handed, sc.handedSeq = true, last
	}
	sc.r += n + h.pl
	sc.rec, sc.recLeft, sc.recSeq, sc.recEnd = entries, h.count, h.seq, sc.off+int64(n+h.pl)
	return nil
}

// peekEntry parses the next entry of the v3 record being delivered. Its
// size is RecordSize's (what batches are bounded by); the record's bytes
// on disk are counted with its last entry.
func (sc *scanner) peekEntry() (recHeader, error) {
	t, cat, msg, rest, err := nextEntry(sc.rec)
	if err != nil {
		return recHeader{}, err // checked by load: never
	}
	sc.next = entryView{t: t, cat: cat, msg: msg, rest: rest}
	h := recHeader{seq: sc.recSeq, size: int64(recHeaderSize + 8 + uvarintLen(uint64(len(cat))) + len(cat) + len(msg))}
	if sc.recLeft == 1 {
		h.disk = sc.recEnd - sc.off
	}
	sc.hdr, sc.peeked = h, true
	return h, nil
}

// take consumes the record peek checked and returns its payload's parts,
// where they lie in the scanner's buffer (see keep). A payload that
// fails its CRC is consumed all the same and reported as errDamaged.
func (sc *scanner) take() (int64, []byte, []byte, error) {
	h := sc.hdr
	if sc.seg.version == segVersion {
		e := sc.next
		sc.rec, sc.next = e.rest, entryView{}
		sc.recLeft--
		sc.recSeq++
		sc.peeked = false
		sc.last = h.seq
		if sc.recLeft == 0 {
			sc.rec, sc.off = nil, sc.recEnd
		}
		return e.t, e.cat, e.msg, nil
	}
	n := sc.seg.recHdr
	if err := sc.fill(n + h.pl); err != nil {
		sc.seek(sc.off)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, nil, fmt.Errorf("%w: segment shorter than expected", errDamaged)
		}
		return 0, nil, nil, fmt.Errorf("read segment %s: %w", sc.seg.path, err)
	}
	p := sc.buf[sc.r+n : sc.r+n+h.pl : sc.r+n+h.pl]
	sc.r += n + h.pl
	sc.off += int64(n + h.pl)
	sc.peeked = false
	sc.pos++
	t, cat, msg, err := decodePayload(p, sc.seg.key, h.crc, !sc.chunk)
	if err == nil {
		sc.handed, sc.handedSeq = true, h.seq
	}
	if err == nil || sc.seg.version == v2Version {
		// A v2 header is trustworthy even when its payload is not.
		sc.last = h.seq
	}
	return t, cat, msg, err
}

// resync looks for the first valid v2 or v3 record at or after from
// whose sequence numbers are in [lo, hi): a header that passes its CRC
// with a plausible length and a payload that passes its CRC. It returns
// its offset and sequence number. (Both formats' headers start with
// length u32 | seq u64.)
func (sc *scanner) resync(from int64, lo, hi uint64) (int64, uint64, bool, error) {
	const window = 1 << 20
	hs := sc.seg.recHdr
	buf := make([]byte, window+hs)
	for base := from; base+int64(hs)+1 <= sc.size; base += window {
		n, err := sc.src.f.ReadAt(buf[:min(int64(len(buf)), sc.size-base)], base)
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, 0, false, fmt.Errorf("read segment %s: %w", sc.seg.path, err)
		}
		for i := 0; i < window && i+hs <= n; i++ {
			h := buf[i : i+hs]
			// The cheap tests first: a sequence number in range and a
			// length that fits almost never occur by chance.
			seq := binary.LittleEndian.Uint64(h[4:])
			pl := int64(binary.LittleEndian.Uint32(h))
			off := base + int64(i)
			if seq < lo || seq >= hi || pl == 0 || off+int64(hs)+pl > sc.size {
				continue
			}
			rh, err := sc.parseHeader(h, true)
			if err != nil || rh.seq+uint64(max(rh.count, 1)) > hi || rh.seq+uint64(rh.count) < rh.seq {
				continue
			}
			ok, err := sc.payloadOK(off+int64(hs), rh)
			if err != nil {
				return 0, 0, false, err
			}
			if ok {
				return off, rh.seq, true, nil
			}
		}
	}
	return 0, 0, false, nil
}

// payloadOK checks the payload CRC of a candidate record without holding
// the payload in memory.
func (sc *scanner) payloadOK(off int64, h recHeader) (bool, error) {
	crc := sc.seg.key
	buf := make([]byte, min(h.pl, 1<<20))
	for left := int64(h.pl); left > 0; {
		k := min(left, int64(len(buf)))
		if _, err := sc.src.f.ReadAt(buf[:k], off); err != nil {
			return false, fmt.Errorf("read segment %s: %w", sc.seg.path, err)
		}
		crc = crc32.Update(crc, crcTable, buf[:k])
		off += k
		left -= k
	}
	return crc == h.crc, nil
}

// reader is the consumer's position.
type reader struct {
	sc       *scanner // the open segment; nil before the first
	seq      uint64   // the next sequence number to deliver
	consumed int64    // record bytes passed since the last batch's span
}

func (r *reader) segFirst() uint64 {
	if r.sc == nil {
		return r.seq
	}
	return r.sc.seg.first
}

// view is what the reader may read, taken together under q.mu.
type view struct {
	avail    uint64 // every record below is durable
	lastID   uint64 // the last segment (segment.id)
	lastSize int64  // its durable size
}

func (q *Queue) viewLocked() view {
	v := view{avail: q.durable}
	if n := len(q.segs); n > 0 {
		v.lastID, v.lastSize = q.segs[n-1].id, q.lastSize
	}
	return v
}

// segAfter returns the segment after the one starting at first.
func (q *Queue) segAfter(first uint64) (segment, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, s := range q.segs {
		if s.first > first {
			return s, true
		}
	}
	return segment{}, false
}

// segFor returns the segment that holds seq, if any.
func (q *Queue) segFor(seq uint64) (segment, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i := len(q.segs) - 1; i >= 0; i-- {
		if q.segs[i].first <= seq {
			return q.segs[i], true
		}
	}
	if len(q.segs) > 0 {
		return q.segs[0], true
	}
	return segment{}, false
}

// openScanner points the reader at the start of s.
func (q *Queue) openScanner(s segment, v view) error {
	if q.r.sc != nil {
		q.r.sc.close()
		q.r.sc = nil
	}
	f, err := os.Open(s.path)
	if err != nil {
		return fmt.Errorf("open segment for reading: %w", err)
	}
	sc := newScanner(s, f, 0, true)
	sc.bufs = &q.bufs
	sc.committed = q.takeCommitted
	q.r.sc = sc
	return sc.update(v)
}

// update sets the readable end from v: the durable size while the
// segment is the last, its file size (final) once a later one exists.
func (sc *scanner) update(v view) error {
	if sc.sealed {
		return nil
	}
	if sc.seg.id == v.lastID {
		sc.setSize(v.lastSize)
		return nil
	}
	st, err := sc.src.f.Stat()
	if err != nil {
		return fmt.Errorf("stat segment: %w", err)
	}
	sc.setSize(st.Size())
	sc.sealed = true
	return nil
}

// positionReader moves the reader to the acknowledged position at open.
func (q *Queue) positionReader() error {
	q.r.seq = q.acked
	q.mu.Lock()
	v := q.viewLocked()
	q.mu.Unlock()
	s, ok := q.segFor(q.acked)
	if !ok {
		return nil
	}
	if err := q.openScanner(s, v); err != nil {
		return err
	}
	if _, _, err := q.advance(v, false); err != nil {
		return fmt.Errorf("position queue reader: %w", err)
	}
	q.r.consumed = 0
	return nil
}

// advance moves the reader to the next record to deliver and peeks at it:
// it passes records below r.seq (acknowledged ones, when positioning at
// open), moves from segment to segment, and skips damage, counting the
// entries lost. It reports false when nothing more is readable in v, or,
// with inBatch, when going on would skip entries: the batch so far is
// delivered first.
func (q *Queue) advance(v view, inBatch bool) (recHeader, bool, error) {
	r := &q.r
	if sc := r.sc; sc != nil && sc.recLeft > 0 && sc.recSeq == r.seq {
		// The next entry of the v3 record being delivered, which load
		// checked whole: the segment, its readable end and the numbers
		// need no second look.
		h, err := sc.peek()
		return h, err == nil, err
	}
	for {
		if r.sc == nil {
			s, ok := q.segFor(r.seq)
			if !ok || r.seq >= v.avail {
				return recHeader{}, false, nil
			}
			if err := q.openScanner(s, v); err != nil {
				return recHeader{}, false, err
			}
		}
		sc := r.sc
		if !sc.sealed && sc.seg.id != v.lastID {
			if cur, ok := q.segFor(sc.seg.first); ok && cur.first == sc.seg.first && cur.id != sc.seg.id {
				// An empty segment of an earlier run, replaced by this
				// run's first segment since it was opened.
				if err := q.openScanner(cur, v); err != nil {
					return recHeader{}, false, err
				}
				continue
			}
		}
		if err := sc.update(v); err != nil {
			return recHeader{}, false, err
		}
		off := sc.off
		h, err := sc.peek()
		switch {
		case err == nil && h.seq < r.seq:
			r.consumed += h.disk
			if _, _, _, err := sc.take(); err != nil {
				if !errors.Is(err, errDamaged) {
					return recHeader{}, false, err
				}
				if sc.seg.version == 1 {
					r.consumed -= h.disk // skipDamage counts from off
					if err := q.skipDamage(sc, off, v, err); err != nil {
						return recHeader{}, false, err
					}
				}
			}
		case err == nil && h.seq > r.seq:
			if inBatch {
				return recHeader{}, false, nil
			}
			q.lose(sc, off, h.seq-r.seq, errors.New("records missing before this one"))
			r.seq = h.seq
			return h, true, nil
		case err == nil:
			return h, true, nil
		case errors.Is(err, io.EOF):
			next, ok := q.segAfter(sc.seg.first)
			end := v.avail
			if ok && next.first < end {
				end = next.first
			}
			if r.seq < end {
				if inBatch {
					return recHeader{}, false, nil
				}
				q.lose(sc, off, end-r.seq, errors.New("segment ends before its last record"))
				r.seq = end
			}
			if !ok || r.seq >= v.avail {
				return recHeader{}, false, nil
			}
			if err := q.openScanner(next, v); err != nil {
				return recHeader{}, false, err
			}
		case errors.Is(err, errDamaged):
			if inBatch {
				return recHeader{}, false, nil
			}
			if err := q.skipDamage(sc, off, v, err); err != nil {
				return recHeader{}, false, err
			}
		default:
			return recHeader{}, false, err
		}
	}
}

// skipDamage moves the reader past the damaged record at off: to the next
// valid record of the segment (v2, v3), or to the segment's end (v1, whose
// records cannot be resynchronised, or when nothing valid follows). The
// entries in between are counted as lost.
func (q *Queue) skipDamage(sc *scanner, off int64, v view, cause error) error {
	r := &q.r
	end := v.avail
	if next, ok := q.segAfter(sc.seg.first); ok && next.first < end {
		end = next.first
	}
	from := max(r.seq, sc.last+1)
	if sc.seg.version >= v2Version {
		at, seq, ok, err := sc.resync(off+1, sc.last+1, end)
		if err != nil {
			return err
		}
		if ok {
			if seq > from {
				q.lose(sc, off, seq-from, cause)
			}
			r.consumed += at - off
			r.seq = max(r.seq, seq)
			sc.seek(at)
			return nil
		}
	}
	if end > from {
		q.lose(sc, off, end-from, cause)
	}
	r.consumed += sc.size - off
	r.seq = max(r.seq, end)
	sc.seek(sc.size)
	return nil
}

// lose counts n entries lost to damage at off in sc's segment and logs
// it.
func (q *Queue) lose(sc *scanner, off int64, n uint64, cause error) {
	q.log.Error("skipping damaged queue records", "segment", sc.seg.path, "offset", off,
		"lost_entries", n, "reason", cause.Error())
	q.mu.Lock()
	q.lost += int64(n)
	q.mu.Unlock()
}

// Read returns the next entries after those already read, at least one,
// waiting until one is durable or ctx ends. The batch's record bytes
// (RecordSize summed) stay within maxBytes, except that a single entry is
// returned whatever its size; it holds at most maxEntries entries, all of
// one incarnation and consecutive. The batch's memory (its Entries
// slice and the entries' bytes) is not reused by later reads until the
// entries are acknowledged (Ack); after that the queue reuses it, so the
// consumer must not read a batch it has acknowledged. It waits without
// holding the reader's lock, so that the consumer may acknowledge
// batches read before meanwhile.
func (q *Queue) Read(ctx context.Context, maxBytes, maxEntries int) (Batch, error) {
	for {
		q.rmu.Lock()
		q.mu.Lock()
		v, closed := q.viewLocked(), q.closed
		q.mu.Unlock()
		if closed {
			q.rmu.Unlock()
			return Batch{}, ErrClosed
		}
		if q.r.seq >= v.avail {
			q.rmu.Unlock()
			select {
			case <-q.wake:
			case <-q.done:
			case <-ctx.Done():
				return Batch{}, ctx.Err()
			}
			continue
		}
		b, err := q.readAvailable(v, maxBytes, maxEntries)
		q.rmu.Unlock()
		if err != nil || len(b.Entries) > 0 {
			return b, err
		}
		// Only damage was skipped; wait for more.
	}
}

// maxEntryBufs bounds the Entries slices kept for reuse (entryBufs).
const maxEntryBufs = 8

// entryBuf returns an empty Entries slice for a batch of up to n entries:
// one of an acknowledged batch if it is large enough (the contract of
// Read: a batch's memory is the queue's again once acknowledged), else a
// new one.
func (q *Queue) entryBuf(n int) []Entry {
	for i := len(q.entryBufs) - 1; i >= 0; i-- {
		if es := q.entryBufs[i]; cap(es) >= n {
			q.entryBufs[i] = q.entryBufs[len(q.entryBufs)-1]
			q.entryBufs[len(q.entryBufs)-1] = nil
			q.entryBufs = q.entryBufs[:len(q.entryBufs)-1]
			return es
		}
	}
	return make([]Entry, 0, n)
}

func (q *Queue) readAvailable(v view, maxBytes, maxEntries int) (Batch, error) {
	r := &q.r
	var b Batch
	var bytes int64
	// One allocation for the batch's entries: growing the slice entry by
	// entry was a fifth of the shipper's reading.
	if n := v.avail - r.seq; n > 0 {
		most := max(min(maxEntries, maxBytes/(recHeaderSize+minPayload)+1), 1)
		b.Entries = q.entryBuf(int(min(n, uint64(most))))
	}
	last := "" // the category of the entry before: most runs share one
	for r.seq < v.avail && len(b.Entries) < maxEntries {
		inBatch := len(b.Entries) > 0
		h, ok, err := q.advance(v, inBatch)
		if err != nil {
			if inBatch {
				break // deliver what precedes; the error comes back next time
			}
			return Batch{}, err
		}
		if !ok {
			break
		}
		sc := r.sc
		rs := h.size
		if inBatch && (sc.seg.inc != b.Incarnation || bytes+rs > int64(maxBytes)) {
			break
		}
		off := sc.off
		t, cat, msg, err := sc.take()
		if err != nil {
			if !errors.Is(err, errDamaged) {
				if inBatch {
					break
				}
				return Batch{}, err
			}
			if sc.seg.version == 1 {
				// A v1 length cannot be trusted once its payload fails.
				sc.seek(off)
				if inBatch {
					break
				}
				if err := q.skipDamage(sc, off, v, err); err != nil {
					return Batch{}, err
				}
				continue
			}
			// A v2 header is checked by its own CRC: exactly this
			// record is lost. (A v3 record is checked whole before its
			// first entry is peeked at: taking one never fails.)
			q.lose(sc, off, 1, err)
			r.consumed += h.disk
			r.seq = h.seq + 1
			if inBatch {
				break
			}
			continue
		}
		if !inBatch {
			b.First, b.Incarnation = r.seq, sc.seg.inc
		}
		c := last
		if string(cat) != last || last == "" {
			var ok bool
			if c, ok = q.intern[string(cat)]; !ok {
				c = string(cat)
				if len(q.intern) < 4096 {
					q.intern[c] = c
				}
			}
			last = c
		}
		b.Entries = append(b.Entries, Entry{Category: c, Message: msg, Time: t})
		bytes += rs
		r.consumed += h.disk
		r.seq++
	}
	if len(b.Entries) > 0 {
		q.spans = append(q.spans, span{end: b.End(), bytes: r.consumed, entries: b.Entries})
		r.consumed = 0
	}
	return b, nil
}
