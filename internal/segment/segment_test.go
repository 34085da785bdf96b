package segment

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"
)

func encode(blocks ...*Block) []byte {
	buf := []byte(Magic)
	for _, b := range blocks {
		buf = AppendBlock(buf, b)
	}
	return buf
}

func TestRoundTrip(t *testing.T) {
	in := []*Block{
		{Agent: "agent-1", Seqs: []uint64{42, 43, 90}, ArrivalMs: 1700000000123, Messages: [][]byte{[]byte("a"), {}, []byte("line\nwith newline")}},
		{Messages: [][]byte{[]byte("from a stock client")}, ArrivalMs: -5},
		{Agent: "x", Seqs: []uint64{}},
	}
	data := encode(in...)
	r, err := NewReader(bytes.NewReader(data), 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range in {
		var got Block
		if err := r.Next(&got); err != nil {
			t.Fatalf("block %d: %v", i, err)
		}
		if got.Agent != want.Agent || fmt.Sprint(got.Seqs) != fmt.Sprint(wantSeqs(want)) || got.ArrivalMs != want.ArrivalMs || len(got.Messages) != len(want.Messages) {
			t.Fatalf("block %d = %+v, want %+v", i, got, want)
		}
		for j := range want.Messages {
			if !bytes.Equal(got.Messages[j], want.Messages[j]) {
				t.Fatalf("block %d message %d = %q", i, j, got.Messages[j])
			}
		}
	}
	var b Block
	if err := r.Next(&b); err != io.EOF {
		t.Fatalf("after last block: %v", err)
	}
	if r.Offset() != int64(len(data)) {
		t.Fatalf("offset %d, want %d", r.Offset(), len(data))
	}
}

func TestBlockSizeIsAnUpperBound(t *testing.T) {
	for _, b := range []*Block{{}, {Agent: "a", Seqs: []uint64{300, 1 << 40}, ArrivalMs: 1, Messages: [][]byte{make([]byte, 200), []byte("x")}}} {
		if got, bound := len(AppendBlock(nil, b)), BlockSize(b); got > bound {
			t.Fatalf("encoded %d bytes, BlockSize %d", got, bound)
		}
	}
}

func TestResumeAtOffset(t *testing.T) {
	b1 := &Block{Agent: "a", Seqs: []uint64{1}, Messages: [][]byte{[]byte("one")}}
	b2 := &Block{Agent: "a", Seqs: []uint64{2}, Messages: [][]byte{[]byte("two")}}
	data := encode(b1, b2)
	off := HeaderSize + int64(len(AppendBlock(nil, b1)))
	r, err := NewReader(bytes.NewReader(data[off:]), off)
	if err != nil {
		t.Fatal(err)
	}
	var got Block
	if err := r.Next(&got); err != nil || string(got.Messages[0]) != "two" || got.Seqs[0] != 2 {
		t.Fatalf("resumed read: %v %+v", err, got)
	}
	if r.Offset() != int64(len(data)) {
		t.Fatalf("offset %d want %d", r.Offset(), len(data))
	}
}

func TestTornTailAndCorruption(t *testing.T) {
	data := encode(&Block{Messages: [][]byte{[]byte("complete")}}, &Block{Messages: [][]byte{[]byte("cut short by a crash")}})
	first := HeaderSize + int64(len(AppendBlock(nil, &Block{Messages: [][]byte{[]byte("complete")}})))
	for cut := first + 1; cut < int64(len(data)); cut++ {
		r, err := NewReader(bytes.NewReader(data[:cut]), 0)
		if err != nil {
			t.Fatal(err)
		}
		var b Block
		if err := r.Next(&b); err != nil {
			t.Fatal(err)
		}
		if err := r.Next(&b); !errors.Is(err, ErrTruncated) {
			t.Fatalf("cut at %d: %v, want ErrTruncated", cut, err)
		}
		if r.Offset() != first {
			t.Fatalf("offset moved past the torn block: %d", r.Offset())
		}
	}
	bad := bytes.Clone(data)
	bad[HeaderSize+10] ^= 0xff
	r, _ := NewReader(bytes.NewReader(bad), 0)
	var b Block
	if err := r.Next(&b); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("flipped byte: %v, want ErrCorrupt", err)
	}
	if _, err := NewReader(bytes.NewReader([]byte("NOTASEGMENT")), 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("bad header: %v", err)
	}
	if _, err := NewReader(bytes.NewReader([]byte("FWS")), 0); !errors.Is(err, ErrTruncated) {
		t.Fatalf("short header: %v", err)
	}
	huge := []byte(Magic + "\xff\xff\xff\x7f\x00\x00\x00\x00")
	r, _ = NewReader(bytes.NewReader(huge), 0)
	if err := r.Next(&b); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("huge length: %v", err)
	}
}

func TestNames(t *testing.T) {
	n := Name(0x1234, 7)
	if n != "0000000000001234-0000000000000007.seg" {
		t.Fatal(n)
	}
	e, s, ok := ParseName(n)
	if !ok || e != 0x1234 || s != 7 {
		t.Fatalf("parse: %d %d %v", e, s, ok)
	}
	// Name order is (epoch, seq) order.
	if !(Name(1, 0xff) < Name(2, 0) && Name(2, 9) < Name(2, 10)) {
		t.Fatal("names do not sort by epoch then sequence")
	}
	for _, bad := range []string{"x.seg", "0000000000001234-0000000000000007", ".0000000000001234-0000000000000007.seg.inprogress", "000000000000123g-0000000000000007.seg", "8000000000000000-0000000000000000.seg"} {
		if _, _, ok := ParseName(bad); ok {
			t.Errorf("ParseName(%q) accepted", bad)
		}
	}
	if Dir("access", 3) != "access/3" {
		t.Fatal(Dir("access", 3))
	}
}

func FuzzDecodeBody(f *testing.F) {
	f.Add(AppendBlock(nil, &Block{Agent: "a", Seqs: []uint64{1}, Messages: [][]byte{[]byte("m")}})[8:])
	f.Fuzz(func(t *testing.T, body []byte) {
		var b Block
		if err := DecodeBody(body, &b); err == nil {
			again := AppendBlock(nil, &b)[8:]
			var b2 Block
			if err := DecodeBody(again, &b2); err != nil || fmt.Sprint(b2) != fmt.Sprint(b) {
				t.Fatalf("re-encoding changed the block: %v", err)
			}
		}
	})
}

func wantSeqs(b *Block) []uint64 {
	if b.Seqs != nil {
		return b.Seqs
	}
	return make([]uint64, len(b.Messages))
}

func TestSequenceMustIncrease(t *testing.T) {
	body := AppendBlock(nil, &Block{Agent: "a", Seqs: []uint64{5, 5}, Messages: [][]byte{[]byte("x"), []byte("y")}})[8:]
	var b Block
	if err := DecodeBody(body, &b); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("repeated sequence in an agent block: %v", err)
	}
}
