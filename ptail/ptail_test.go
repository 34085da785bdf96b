package ptail

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const dir = "cat/0"

func newFS(t *testing.T) *dfstest.Faulty {
	t.Helper()
	l, err := localfs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return dfstest.NewFaulty(l)
}

func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

// publish writes a v2 segment of blocks, each holding the given messages.
func publish(t *testing.T, fsys dfs.FS, epoch int64, seq uint64, blocks ...[]string) string {
	t.Helper()
	return publishData(t, fsys, epoch, seq, encode(blocks...))
}

func publishData(t *testing.T, fsys dfs.FS, epoch int64, seq uint64, data []byte) string {
	t.Helper()
	name := layout.SegmentName(epoch, seq)
	if err := dfs.WriteFile(fsys, path.Join(dir, name), data); err != nil {
		t.Fatal(err)
	}
	return name
}

func block(msgs []string) *segment.Block {
	b := &segment.Block{Agent: "a", ArrivalMs: 1}
	for _, m := range msgs {
		b.Messages = append(b.Messages, []byte(m))
		b.Seqs = append(b.Seqs, uint64(len(b.Seqs)+1))
	}
	return b
}

// encode is a v2 segment, as Freeway writes.
func encode(blocks ...[]string) []byte {
	data, _ := encodeAt(blocks...)
	return data
}

// encodeAt is encode with the offset of each block and of the end.
func encodeAt(blocks ...[]string) ([]byte, []int) {
	e := segment.NewEncoder()
	data := e.AppendHeader(nil)
	offs := []int{len(data)}
	for _, msgs := range blocks {
		data = e.AppendBlock(data, block(msgs))
		offs = append(offs, len(data))
	}
	return data, offs
}

// encodeAtAs is encodeAt with the bodies stored as c says, as a writer
// does (segment.AppendUnstampedAs, then Stamp).
func encodeAtAs(t *testing.T, c segment.Compression, blocks ...[]string) ([]byte, []int) {
	t.Helper()
	e := segment.NewEncoder()
	data := e.AppendHeader(nil)
	offs := []int{len(data)}
	for _, msgs := range blocks {
		data = segment.AppendUnstampedAs(data, block(msgs), c)
		if err := e.Stamp(data[offs[len(offs)-1]:]); err != nil {
			t.Fatal(err)
		}
		offs = append(offs, len(data))
	}
	return data, offs
}

// storedAs fails the test unless every block of data (at offs, as
// encodeAtAs returns them) is stored as c.
func storedAs(t *testing.T, c segment.Compression, data []byte, offs []int) {
	t.Helper()
	for _, off := range offs[:len(offs)-1] {
		if got := segment.Compression(data[off+segment.BlockHeaderSize]); got != c {
			t.Fatalf("block at %d stored as %v, want %v", off, got, c)
		}
	}
}

// encodeV1 is a v1 segment, as Freeway wrote before v2.
func encodeV1(blocks ...[]string) []byte {
	data := []byte(segment.MagicV1)
	for _, msgs := range blocks {
		data = segment.AppendBlock(data, block(msgs))
	}
	return data
}

// read is one block read back: its messages and the position after it.
type read struct {
	msgs string
	pos  Position
}

// readN reads n blocks, failing the test on any error.
func readN(t *testing.T, r *Reader, n int) []read {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []read
	var b segment.Block
	for len(out) < n {
		pos, err := r.Next(ctx, &b)
		if err != nil {
			t.Fatalf("next after %d of %d blocks: %v", len(out), n, err)
		}
		if pos != r.Position() {
			t.Fatalf("Next returned %v, Position says %v", pos, r.Position())
		}
		s := ""
		for i, m := range b.Messages {
			if i > 0 {
				s += ","
			}
			s += string(m)
		}
		out = append(out, read{s, pos})
	}
	return out
}

func msgsOf(rs []read) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.msgs
	}
	return out
}

// nothingMore checks that Next has nothing to return: it waits until ctx
// ends. It cancels once the reader has polled the directory a few times.
func nothingMore(t *testing.T, fsys *dfstest.Faulty, r *Reader) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := fsys.Count(dfstest.OpReadDir)
	done := make(chan error, 1)
	var b segment.Block
	go func() {
		_, err := r.Next(ctx, &b)
		done <- err
	}()
	testkit.WaitFor(t, "the reader to poll the directory", func() bool {
		select {
		case err := <-done:
			t.Fatalf("next returned %v (%q), want it to wait", err, b.Messages)
		default:
		}
		return fsys.Count(dfstest.OpReadDir) >= start+3
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("next after cancel: %v", err)
	}
}

func TestReadsInNameOrderAcrossEpochs(t *testing.T) {
	fsys := newFS(t)
	publish(t, fsys, 10, 1, []string{"e10s1"})
	publish(t, fsys, 3, 2, []string{"e3s2a"}, []string{"e3s2b"})
	publish(t, fsys, 3, 1, []string{"e3s1"})
	publish(t, fsys, 2, 0x10, []string{"e2s16"})
	publish(t, fsys, 3, 3) // empty
	publish(t, fsys, 2, 9, []string{"e2s9a", "e2s9b"})
	r := NewReader(fsys, dir, Position{}, time.Millisecond, logger(t))
	defer r.Close()
	got := msgsOf(readN(t, r, 6))
	want := []string{"e2s9a,e2s9b", "e2s16", "e3s1", "e3s2a", "e3s2b", "e10s1"}
	if !slices.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
	nothingMore(t, fsys, r)
	if r.Skipped != 0 {
		t.Errorf("skipped %d", r.Skipped)
	}
}

func TestResumeAtEveryPosition(t *testing.T) {
	fsys := newFS(t)
	publish(t, fsys, 1, 1, []string{"a"}, []string{"b"}, []string{"c"})
	publish(t, fsys, 1, 2) // empty
	publish(t, fsys, 1, 3, []string{"d"})
	publish(t, fsys, 2, 1, []string{"e"}, []string{"f"})
	r := NewReader(fsys, dir, Position{}, time.Millisecond, logger(t))
	all := readN(t, r, 6)
	r.Close()
	want := msgsOf(all)
	// From each position (mid-segment and at segment ends) a new reader
	// reads exactly the rest: nothing repeated, nothing lost.
	for i, rd := range all {
		r := NewReader(fsys, dir, rd.pos, time.Millisecond, logger(t))
		if r.Position() != rd.pos {
			t.Errorf("new reader at %v reports %v", rd.pos, r.Position())
		}
		rest := msgsOf(readN(t, r, len(all)-i-1))
		if !slices.Equal(rest, want[i+1:]) {
			t.Errorf("from %v: read %q, want %q", rd.pos, rest, want[i+1:])
		}
		nothingMore(t, fsys, r)
		r.Close()
	}
	// A position at the end of the last segment (as a consumer that saw
	// nothing more would save) picks up what is published next.
	end := all[len(all)-1].pos
	r = NewReader(fsys, dir, end, time.Millisecond, logger(t))
	defer r.Close()
	publish(t, fsys, 2, 2, []string{"g"})
	if got := msgsOf(readN(t, r, 1)); got[0] != "g" {
		t.Errorf("after %v: read %q", end, got)
	}
}

func TestFollowsNewSegmentsIgnoringOthers(t *testing.T) {
	fsys := newFS(t)
	r := NewReader(fsys, dir, Position{}, time.Millisecond, logger(t))
	defer r.Close()
	nothingMore(t, fsys, r) // the bucket does not exist yet

	publish(t, fsys, 1, 1, []string{"first"})
	if got := msgsOf(readN(t, r, 1)); got[0] != "first" {
		t.Fatalf("read %q", got)
	}
	// What a writer has in progress, and names that are not segments.
	for name, data := range map[string][]byte{
		dfs.TempName(layout.SegmentName(1, 2)): encode([]string{"in progress"}),
		"_" + layout.SegmentName(1, 3):         encode([]string{"underscore"}),
		"README":                               []byte("not a segment"),
		"0000000000000001-0000000000000004":    encode([]string{"no extension"}),
		"1-5.seg":                              encode([]string{"short name"}),
		layout.SegmentName(1, 6) + ".tmp":      encode([]string{"suffix"}),
	} {
		f, err := fsys.Create(path.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(data); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if err := fsys.MkdirAll(path.Join(dir, layout.SegmentName(1, 7))); err != nil {
		t.Fatal(err)
	}
	nothingMore(t, fsys, r)

	done := make(chan []read, 1)
	go func() { done <- readN(t, r, 2) }()
	publish(t, fsys, 1, 8, []string{"second"})
	publish(t, fsys, 2, 1, []string{"third"})
	if got := msgsOf(<-done); !slices.Equal(got, []string{"second", "third"}) {
		t.Fatalf("read %q", got)
	}
	nothingMore(t, fsys, r)
}

// TestVanishedSegmentReported: a segment gone before the reader came to
// it is not passed over silently: Next reports it once, with its name
// and publish time, and reads on after it.
func TestVanishedSegmentReported(t *testing.T) {
	fsys := newFS(t)
	a := publish(t, fsys, 1, 1, []string{"a1"}, []string{"a2"})
	b := publish(t, fsys, 1, 2, []string{"b"})
	publish(t, fsys, 1, 3, []string{"c"})
	bInfo, err := fsys.Stat(path.Join(dir, b))
	if err != nil {
		t.Fatal(err)
	}
	// The next segment is removed after the reader listed it, as it is
	// about to be opened (ahead, while the reader reads a; a segment
	// opened before its removal is read whole), and the reader lists
	// again (a poll, 1ms, has passed) before it comes to it: the new
	// listing lacks it, which must not hide it.
	onFirstOpen(fsys, b, func() {
		if err := fsys.FS.Remove(path.Join(dir, b)); err != nil {
			t.Error(err)
		}
	})
	r := NewReader(fsys, dir, Position{}, time.Millisecond, logger(t))
	defer r.Close()
	if got := msgsOf(readN(t, r, 1)); got[0] != "a1" {
		t.Fatalf("read %q", got)
	}
	time.Sleep(5 * time.Millisecond)
	if got := msgsOf(readN(t, r, 1)); got[0] != "a2" {
		t.Fatalf("read %q", got)
	}
	var blk segment.Block
	_, err = r.Next(context.Background(), &blk)
	var ve *VanishedError
	if !errors.As(err, &ve) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("next over a removed segment: %v, want a VanishedError", err)
	}
	if ve.Segment != path.Join(dir, b) || !ve.ModTime.Equal(bInfo.ModTime()) {
		t.Errorf("vanished %q published %v, want %q %v", ve.Segment, ve.ModTime, path.Join(dir, b), bInfo.ModTime())
	}
	if r.Position() != After(b) {
		t.Errorf("position after the vanished segment: %v, want %v", r.Position(), After(b))
	}
	if got := msgsOf(readN(t, r, 1)); got[0] != "c" {
		t.Fatalf("after the vanished segment: read %q", got)
	}
	// And a saved position inside a removed segment.
	if err := fsys.Remove(path.Join(dir, a)); err != nil {
		t.Fatal(err)
	}
	r2 := NewReader(fsys, dir, Position{Segment: a, Offset: 30}, time.Millisecond, logger(t))
	defer r2.Close()
	if _, err := r2.Next(context.Background(), &blk); !errors.As(err, &ve) || ve.Segment != path.Join(dir, a) || !ve.ModTime.IsZero() {
		t.Fatalf("from a removed segment: %v, want a VanishedError for %s without a time", err, a)
	}
	if got := msgsOf(readN(t, r2, 1)); got[0] != "c" {
		t.Fatalf("from a removed segment: read %q", got)
	}
	if r.Skipped != 0 || r2.Skipped != 0 {
		t.Errorf("vanished segments counted as damaged: %d %d", r.Skipped, r2.Skipped)
	}
}

// TestAfterPosition: a reader resumed after a segment reads from the
// next one, and TryNext does not wait.
func TestAfterPosition(t *testing.T) {
	fsys := newFS(t)
	a := publish(t, fsys, 1, 1, []string{"a1"}, []string{"a2"})
	r := NewReader(fsys, dir, After(a), time.Hour, logger(t))
	defer r.Close()
	var blk segment.Block
	if _, ok, err := r.TryNext(&blk); ok || err != nil {
		t.Fatalf("TryNext after the only segment: %v %v, want nothing", ok, err)
	}
	b := publish(t, fsys, 1, 2, []string{"b"})
	pos, ok, err := r.TryNext(&blk)
	if !ok || err != nil || string(blk.Messages[0]) != "b" || pos.Segment != b {
		t.Fatalf("TryNext after a publish: %v %v %v %q", pos, ok, err, blk.Messages)
	}
	for _, c := range []struct {
		p, q Position
		want bool
	}{
		{Position{a, 5}, Position{a, 6}, true},
		{Position{a, 6}, After(a), true},
		{After(a), Position{b, 0}, true},
		{After(a), After(a), false},
		{Position{b, 0}, After(a), false},
		{Position{}, Position{a, 0}, true},
	} {
		if got := c.p.Before(c.q); got != c.want {
			t.Errorf("%v before %v: %v, want %v", c.p, c.q, got, c.want)
		}
	}
}

// TestDamagedV1SegmentsSkipped: v1 segments are still read, and damage in
// one costs the rest of it.
func TestDamagedV1SegmentsSkipped(t *testing.T) {
	fsys := newFS(t)
	publishData(t, fsys, 1, 1, encodeV1([]string{"good-1"}))
	// A flipped byte in the second block.
	data := encodeV1([]string{"b1"}, []string{"b2"}, []string{"b3"})
	data[len(data)-20] ^= 0xff
	publishData(t, fsys, 1, 2, data)
	// Not a segment header; an empty file; a torn tail.
	publishData(t, fsys, 1, 3, []byte("garbage!garbage!"))
	publishData(t, fsys, 1, 4, nil)
	torn := encodeV1([]string{"t1"}, []string{"t2"})
	publishData(t, fsys, 1, 5, torn[:len(torn)-3])
	publishData(t, fsys, 1, 6, encodeV1([]string{"good-2"}))
	// A huge block length.
	bad := encodeV1([]string{"x"})
	bad[segment.HeaderSize+3] = 0x7f
	publishData(t, fsys, 1, 7, bad)

	r := NewReader(fsys, dir, Position{}, time.Millisecond, logger(t))
	defer r.Close()
	got := msgsOf(readN(t, r, 4))
	if want := []string{"good-1", "b1", "t1", "good-2"}; !slices.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
	nothingMore(t, fsys, r)
	if r.Skipped != 5 || r.DamagedBlocks != 5 || r.DamagedEntries != 0 {
		t.Errorf("skipped %d, damaged blocks %d, entries %d; want 5 (corrupt block, bad header, empty, torn tail, huge length), 5, 0 known",
			r.Skipped, r.DamagedBlocks, r.DamagedEntries)
	}
}

// TestDamagedBlockSkippedOnly: in a v2 segment a damaged block body or
// block header costs that block; the reader goes on with the rest of the
// segment and the next ones, and counts what it lost. Compressed blocks
// alike (their header's count is what is lost), and in a bucket whose
// writer's compression changed between segments (mixed).
func TestDamagedBlockSkippedOnly(t *testing.T) {
	for _, tc := range []struct {
		name string
		comp [3]segment.Compression // of each segment
	}{
		{"none", [3]segment.Compression{segment.Uncompressed, segment.Uncompressed, segment.Uncompressed}},
		{"s2", [3]segment.Compression{segment.S2, segment.S2, segment.S2}},
		{"mixed", [3]segment.Compression{segment.S2, segment.Uncompressed, segment.S2}},
	} {
		t.Run(tc.name, func(t *testing.T) { testDamagedBlockSkippedOnly(t, tc.comp) })
	}
}

func testDamagedBlockSkippedOnly(t *testing.T, comp [3]segment.Compression) {
	// Messages that compress: a tag and a long repeated tail.
	const filler = ": 0123456789 abcdefghij 0123456789 abcdefghij 0123456789 abcdefghij"
	m := func(tags ...string) []string {
		out := make([]string, len(tags))
		for i, tag := range tags {
			out[i] = tag + filler
		}
		return out
	}
	fsys := newFS(t)
	data, offs := encodeAtAs(t, comp[0], m("b1"), m("b2", "b2'"), m("b3"), m("b4"), m("b5"))
	storedAs(t, comp[0], data, offs)
	data[offs[1]+segment.BlockHeaderSize+3] ^= 0x10 // b2's body
	data[offs[3]+20] ^= 0x01                        // b4's header (its entry count)
	publishData(t, fsys, 1, 1, data)
	last, loffs := encodeAtAs(t, comp[1], m("c1"), m("c2"))
	storedAs(t, comp[1], last, loffs)
	last[loffs[2]-1] ^= 0xff // the last block of a segment
	publishData(t, fsys, 1, 2, last)
	d, doffs := encodeAtAs(t, comp[2], m("d1"))
	storedAs(t, comp[2], d, doffs)
	publishData(t, fsys, 1, 3, d)

	tags := func(rs []read) []string {
		out := msgsOf(rs)
		for i := range out {
			out[i] = strings.ReplaceAll(out[i], filler, "")
		}
		return out
	}
	reg := prometheus.NewRegistry()
	mt := NewMetrics(reg)
	r := NewReader(fsys, dir, Position{}, time.Millisecond, logger(t)).SetMetrics(mt)
	defer r.Close()
	all := readN(t, r, 5)
	if got, want := tags(all), []string{"b1", "b3", "b5", "c1", "d1"}; !slices.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
	nothingMore(t, fsys, r)
	if r.Skipped != 3 || r.DamagedBlocks != 3 || r.DamagedEntries != 3 {
		t.Errorf("skipped %d, damaged blocks %d, entries %d; want 3, 3, 3 (b2's two and c2's one; b4's count was in its damaged header)",
			r.Skipped, r.DamagedBlocks, r.DamagedEntries)
	}
	if got := testutil.ToFloat64(mt.blocks); got != 3 {
		t.Errorf("freeway_ptail_damaged_blocks_total %v, want 3", got)
	}
	if got := testutil.ToFloat64(mt.entries); got != 3 {
		t.Errorf("freeway_ptail_damaged_entries_total %v, want 3", got)
	}
	// The position after b3 is past the damaged b2, and resuming there
	// reads on from b5 (passing b4's damage again).
	r2 := NewReader(fsys, dir, all[1].pos, time.Millisecond, logger(t))
	defer r2.Close()
	if got := tags(readN(t, r2, 3)); !slices.Equal(got, []string{"b5", "c1", "d1"}) {
		t.Fatalf("from %v: read %q", all[1].pos, got)
	}
	if r2.DamagedBlocks != 2 {
		t.Errorf("resumed reader counted %d damaged blocks, want 2 (b4, c2)", r2.DamagedBlocks)
	}
}

// TestDamageThenReadError: an I/O error after a damaged block resumes
// after the damage, which is counted once.
func TestDamageThenReadError(t *testing.T) {
	fsys := newFS(t)
	var blocks [][]string
	for i := 0; i < 200; i++ { // over the segment reader's 256KiB buffer
		blocks = append(blocks, []string{fmt.Sprintf("m%03d-%02000d", i, 0)})
	}
	data, offs := encodeAt(blocks...)
	data[offs[3]+5] ^= 0xff // block 3's header
	publishData(t, fsys, 1, 1, data)
	var failed atomic.Bool
	fsys.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpRead && c.Off > 200<<10 && c.Off < 300<<10 && failed.CompareAndSwap(false, true) {
			return errors.New("injected read error")
		}
		return nil
	})
	r := NewReader(fsys, dir, Position{}, time.Millisecond, logger(t))
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var got []string
	var b segment.Block
	errs := 0
	for len(got) < 199 && errs < 5 {
		if _, err := r.Next(ctx, &b); err != nil {
			errs++
			continue
		}
		got = append(got, string(b.Messages[0])[:4])
	}
	if !failed.Load() || errs != 1 || len(got) != 199 || r.DamagedBlocks != 1 {
		t.Fatalf("injected %v: %d errors, %d blocks read, %d damaged", failed.Load(), errs, len(got), r.DamagedBlocks)
	}
	for i, m := range got {
		want := i
		if i >= 3 {
			want++
		}
		if m != fmt.Sprintf("m%03d", want) {
			t.Fatalf("block %d is %s", i, m)
		}
	}
}

// TestReadCutShortIsNotDamage: a read that fails with an error wrapping
// io.ErrUnexpectedEOF or io.EOF (how colinmarc/hdfs reports a DataNode
// that dies in the middle of a packet) is the dfs failing to deliver the
// bytes, not the segment being short: the reader reports a *ReadError and
// reads the segment whole afterwards, whether the cut falls in the
// segment's header or in a block.
func TestReadCutShortIsNotDamage(t *testing.T) {
	var blocks [][]string
	for i := range 200 { // over the segment reader's 256KiB buffer
		blocks = append(blocks, []string{fmt.Sprintf("m%03d-%02000d", i, 0)})
	}
	for _, tc := range []struct {
		name string
		at   func(off int64) bool
		err  error
	}{
		{"header/unexpected-eof", func(off int64) bool { return off == 0 }, io.ErrUnexpectedEOF},
		{"header/eof", func(off int64) bool { return off == 0 }, io.EOF},
		{"block/unexpected-eof", func(off int64) bool { return off > 200<<10 }, io.ErrUnexpectedEOF},
		{"block/eof", func(off int64) bool { return off > 200<<10 }, io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := newFS(t)
			publishData(t, fsys, 1, 1, encode(blocks...))
			var failed atomic.Bool
			fsys.SetHook(func(c dfstest.Call) error {
				if c.Op == dfstest.OpRead && tc.at(c.Off) && failed.CompareAndSwap(false, true) {
					return &fs.PathError{Op: "read", Path: c.Name, Err: tc.err}
				}
				return nil
			})
			r := NewReader(fsys, dir, Position{}, time.Millisecond, logger(t))
			defer r.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var got []string
			var b segment.Block
			var readErrs int
			for len(got) < len(blocks) && readErrs < 5 {
				_, err := r.Next(ctx, &b)
				var re *ReadError
				if errors.As(err, &re) {
					readErrs++
					continue
				}
				if err != nil {
					t.Fatalf("after %d blocks: %v", len(got), err)
				}
				got = append(got, string(b.Messages[0])[:4])
			}
			if !failed.Load() || readErrs != 1 || len(got) != len(blocks) || r.Skipped != 0 || r.DamagedBlocks != 0 {
				t.Fatalf("cut injected %v: %d read errors, %d of %d blocks read, %d skipped, %d damaged blocks",
					failed.Load(), readErrs, len(got), len(blocks), r.Skipped, r.DamagedBlocks)
			}
			for i, m := range got {
				if m != fmt.Sprintf("m%03d", i) {
					t.Fatalf("block %d is %s", i, m)
				}
			}
		})
	}
}

func TestDamagedLastSegmentNotReread(t *testing.T) {
	fsys := newFS(t)
	publish(t, fsys, 1, 1, []string{"good"})
	data := encode([]string{"b1"}, []string{"b2"})
	data[len(data)-2] ^= 0xff
	publishData(t, fsys, 1, 2, data)
	r := NewReader(fsys, dir, Position{}, time.Millisecond, logger(t))
	defer r.Close()
	if got := msgsOf(readN(t, r, 2)); !slices.Equal(got, []string{"good", "b1"}) {
		t.Fatalf("read %q", got)
	}
	opens := fsys.Count(dfstest.OpOpen)
	nothingMore(t, fsys, r)
	nothingMore(t, fsys, r)
	if fsys.Count(dfstest.OpOpen) != opens || r.Skipped != 1 {
		t.Errorf("damaged segment reopened while waiting: %d opens, skipped %d", fsys.Count(dfstest.OpOpen)-opens, r.Skipped)
	}
	publish(t, fsys, 1, 3, []string{"after"})
	if got := msgsOf(readN(t, r, 1)); got[0] != "after" {
		t.Fatalf("read %q", got)
	}
}

// TestReadErrorIsNotDamage: an I/O error (a DataNode going away, say, or
// a checksum error of HDFS's) is not damage: Next reports it, as a
// *ReadError naming the segment and the offset of the next block and
// wrapping the dfs's error, and the reader resumes where it was.
func TestReadErrorIsNotDamage(t *testing.T) {
	fsys := newFS(t)
	var blocks [][]string
	for i := 0; i < 200; i++ { // well over the segment reader's 256KiB buffer
		blocks = append(blocks, []string{fmt.Sprintf("m%03d-%02000d", i, 0)})
	}
	first := path.Join(dir, publish(t, fsys, 1, 1, blocks...))
	publish(t, fsys, 1, 2, []string{"next"})
	var failed atomic.Bool
	fsys.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpRead && c.Off > 0 && c.Off < 300<<10 && failed.CompareAndSwap(false, true) { // mid-segment
			return &fs.PathError{Op: "read", Path: c.Name, Err: fmt.Errorf("%w: %w", dfs.ErrChecksum, errors.New("invalid checksum"))}
		}
		return nil
	})
	r := NewReader(fsys, dir, Position{}, time.Millisecond, logger(t))
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var got []string
	var b segment.Block
	errs := 0
	for len(got) < 201 && errs < 5 {
		if _, err := r.Next(ctx, &b); err != nil {
			if ctx.Err() != nil {
				break
			}
			var re *ReadError
			if !errors.As(err, &re) || re.Op != "read" || re.Segment != first || re.Offset != r.Position().Offset ||
				!errors.Is(err, dfs.ErrChecksum) || !strings.Contains(err.Error(), fmt.Sprintf("read segment %s at %d: ", first, re.Offset)) {
				t.Fatalf("read error %#v (%v) at %s", err, err, r.Position())
			}
			errs++
			continue
		}
		got = append(got, string(b.Messages[0])[:4])
	}
	if !failed.Load() {
		t.Fatal("the read error was not injected")
	}
	if errs != 1 || r.Skipped != 0 || len(got) != 201 {
		t.Fatalf("%d errors, %d skipped, %d blocks read", errs, r.Skipped, len(got))
	}
	for i, m := range got[:200] {
		if m != fmt.Sprintf("m%03d", i) {
			t.Fatalf("block %d is %s: lost or repeated around the read error", i, m)
		}
	}
}

func TestCancelReturnsPromptly(t *testing.T) {
	fsys := newFS(t)
	r := NewReader(fsys, dir, Position{}, time.Hour, logger(t))
	defer r.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		var b segment.Block
		_, err := r.Next(ctx, &b)
		done <- err
	}()
	testkit.WaitFor(t, "the reader to poll the directory", func() bool { return fsys.Count(dfstest.OpReadDir) > 0 })
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("next: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("next does not return after cancel")
	}
	// Already cancelled, with nothing to read.
	if _, err := r.Next(ctx, &segment.Block{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("next with a cancelled context: %v", err)
	}
}

func TestZeroPollDoesNotSpin(t *testing.T) {
	for _, poll := range []time.Duration{0, -time.Second} {
		if r := NewReader(newFS(t), dir, Position{}, poll, logger(t)); r.poll <= 0 {
			t.Errorf("poll %v: the reader would list the bucket without pause", poll)
		}
	}
}

func TestLag(t *testing.T) {
	fsys := newFS(t)
	for s := uint64(1); s <= 5; s++ {
		publish(t, fsys, 1, s, []string{fmt.Sprint(s)}, []string{fmt.Sprint(s)})
	}
	r := NewReader(fsys, dir, Position{}, time.Nanosecond, logger(t))
	defer r.Close()
	// The reader's clock, moved by hand: a listing may follow the last
	// one only layout.ListBudget times its duration later, which on a
	// busy machine can be longer than the publishes below take.
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	r.now = func() time.Time { return time.Unix(0, clock.Load()) }
	readN(t, r, 1)
	if r.Lag() != 4 {
		t.Errorf("lag %d in the first of 5 segments, want 4", r.Lag())
	}
	// Segments published while the reader works through a backlog count
	// as soon as it lists again, not only once it has caught up.
	for s := uint64(6); s <= 8; s++ {
		publish(t, fsys, 1, s, []string{fmt.Sprint(s)}, []string{fmt.Sprint(s)})
	}
	clock.Add(int64(time.Hour)) // a poll and the listing budget later
	readN(t, r, 2)              // into the second segment
	if r.Lag() != 6 {
		t.Errorf("lag %d in the second of 8 segments, want 6", r.Lag())
	}
	readN(t, r, 13)
	if r.Lag() != 0 {
		t.Errorf("lag %d at the end", r.Lag())
	}
}

// TestNotifierWakesWaitingReader: a reader that polls once an hour reads a
// new segment as soon as its writer says it published one, and a notice
// sent while it was not waiting yet is not lost.
func TestNotifierWakesWaitingReader(t *testing.T) {
	fsys := newFS(t)
	n := NewNotifier()
	r := NewReader(fsys, dir, Position{}, time.Hour, logger(t)).SetNotifier(n)
	if got := n.Subscribers(dir); got != 1 {
		t.Fatalf("%d subscribers, want 1", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type next struct {
		msg string
		err error
	}
	reads := make(chan next, 1)
	read := func() {
		var b segment.Block
		_, err := r.Next(ctx, &b)
		if err != nil {
			reads <- next{err: err}
			return
		}
		reads <- next{msg: string(b.Messages[0])}
	}
	// Published before the reader waits: the notice is kept.
	go read()
	publish(t, fsys, 1, 1, []string{"first"})
	n.Published(dir)
	n.Published("cat/1") // another bucket's notice wakes nobody here
	if got := <-reads; got.err != nil || got.msg != "first" {
		t.Fatalf("read %q %v", got.msg, got.err)
	}
	// The reader looks for the writer's next segment, finds nothing and
	// waits (an hour's poll) until told.
	looked := fsys.Count(dfstest.OpStat)
	go read()
	testkit.WaitFor(t, "the reader to look for the next segment", func() bool { return fsys.Count(dfstest.OpStat) > looked })
	publish(t, fsys, 1, 2, []string{"second"})
	n.Published(dir)
	if got := <-reads; got.err != nil || got.msg != "second" {
		t.Fatalf("read %q %v", got.msg, got.err)
	}
	r.Close()
	if got := n.Subscribers(dir); got != 0 {
		t.Errorf("%d subscribers after Close, want 0", got)
	}
}

// TestListErrorNamesTheBucketOnce: a listing that fails is a *ReadError
// of op "list" naming the bucket, whose text names it once (the listing's
// own error names it already; the text went to the log and to
// /api/v1/status as "list bucket cat/0: list bucket cat/0: ...").
func TestListErrorNamesTheBucketOnce(t *testing.T) {
	fsys := newFS(t)
	publish(t, fsys, 1, 1, []string{"a"})
	fsys.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpReadDir {
			return errors.New("injected: the NameNode is restarting")
		}
		return nil
	})
	r := NewReader(fsys, dir, Position{}, time.Millisecond, logger(t))
	defer r.Close()
	var b segment.Block
	_, _, err := r.TryNext(&b)
	var re *ReadError
	if !errors.As(err, &re) || re.Op != "list" || re.Segment != dir {
		t.Fatalf("error %#v (%v)", err, err)
	}
	if got, want := err.Error(), "list bucket "+dir+": injected: the NameNode is restarting"; got != want {
		t.Fatalf("error reads %q, want %q", got, want)
	}
}

// duringListing is a local file system whose next listing of the bucket
// (ReadDirNames) runs publish while it reads, and then lists what a
// listing of a local directory may list when two segments are renamed
// into it meanwhile: the names that were there all along and the second
// segment, not the first. (ext4 lists a directory in hash order: the
// first segment's place was read before it was renamed in, the second's
// after.)
type duringListing struct {
	*localfs.FS
	publish func() (missed string)
}

func (l *duringListing) ReadDirNames(name string) ([]string, error) {
	publish := l.publish
	if publish == nil || name != dir {
		return l.FS.ReadDirNames(name)
	}
	l.publish = nil
	before, err := l.FS.ReadDirNames(name)
	if err != nil {
		return nil, err
	}
	missed := publish()
	after, err := l.FS.ReadDirNames(name)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(after, func(n string) bool { return n == missed && !slices.Contains(before, n) }), nil
}

// TestListingDuringPublishSkipsNothing: a writer publishes segments 2
// and 3 while the reader lists the bucket, and the listing holds 3 but
// not 2; the reader reads 2 before 3 all the same.
func TestListingDuringPublishSkipsNothing(t *testing.T) {
	l, err := localfs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	fsys := &duringListing{FS: l}
	publish(t, fsys, 1, 1, []string{"s1"})
	fsys.publish = func() string {
		publish(t, l, 1, 2, []string{"s2"})
		publish(t, l, 1, 3, []string{"s3"})
		return layout.SegmentName(1, 2)
	}
	r := NewReader(fsys, dir, Position{}, time.Millisecond, logger(t))
	defer r.Close()
	if got := msgsOf(readN(t, r, 2)); !slices.Equal(got, []string{"s1", "s2"}) {
		t.Fatalf("read %q, want s1, s2", got)
	}
	if got := msgsOf(readN(t, r, 1)); !slices.Equal(got, []string{"s3"}) {
		t.Fatalf("then read %q, want s3", got)
	}
}
