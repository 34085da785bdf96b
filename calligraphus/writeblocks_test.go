package calligraphus

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/segment"
)

// TestWriteBlocksByBuffersIsByWrites: a batch of requests, small ones
// (gathered into one write where the file has no WriteBuffers) and ones
// of directWrite and more, written by writeBlocks to a local file (one
// WriteBuffers: writev) and to the same behind a wrapper that hides it
// (the writes), gives the same segment in both, the one Encoder.AppendBlock
// gives for the blocks in order; the entries and bytes reported are the
// batch's.
func TestWriteBlocksByBuffersIsByWrites(t *testing.T) {
	l := newLocal(t)
	var byWrites dfs.FS = dfstest.NewFaulty(l)
	if f, err := byWrites.Create("probe"); err != nil {
		t.Fatal(err)
	} else {
		if _, ok := f.(dfs.BuffersWriter); ok {
			t.Fatal("the wrapper's file writes buffers itself; the test compares nothing")
		}
		_ = f.Close()
	}
	// Requests of 1 to 40 messages of up to 1 KB, and every fifth of
	// 40 to 300 messages (past directWrite), two blocks in some.
	sizes := []int{1, 3, 250, 2, 40, 300, 7, 1, 1, 120, 5, 90}
	var reqs []*appendReq
	var blocks []*segment.Block
	for i, n := range sizes {
		r := &appendReq{}
		for j := range n {
			if j == 0 || j == n/2 && n > 100 {
				r.newBlock(callInfo{agent: fmt.Sprintf("agent-%d", i%3), arrivalMs: int64(1000 + i)})
				blocks = append(blocks, &segment.Block{Agent: fmt.Sprintf("agent-%d", i%3), ArrivalMs: int64(1000 + i), Seqs: []uint64{}})
			}
			msg := bytes.Repeat([]byte{byte('a' + (i+j)%26)}, 1+(i*131+j*17)%1000)
			b := r.blocks[len(r.blocks)-1]
			b.Messages = append(b.Messages, msg)
			b.Seqs = append(b.Seqs, uint64(i*1000+j))
			r.entries++
			want := blocks[len(blocks)-1]
			want.Messages = append(want.Messages, msg)
			want.Seqs = append(want.Seqs, uint64(i*1000+j))
		}
		r.size = 1 << 20
		r.encode(segment.Uncompressed)
		reqs = append(reqs, r)
	}
	write := func(fsys dfs.FS, name string, batch []*appendReq) ([]byte, int, int) {
		t.Helper()
		f, err := fsys.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		w := &bucketWriter{file: f, enc: segment.NewEncoder()}
		hdr := w.enc.AppendHeader(nil)
		if _, err := f.Write(hdr); err != nil {
			t.Fatal(err)
		}
		entries, n, err := w.writeBlocks(batch)
		if err != nil {
			t.Fatalf("write blocks to %s: %v", name, err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		got, err := dfs.ReadFile(l, name)
		if err != nil {
			t.Fatal(err)
		}
		// The reference: the same blocks by AppendBlock, with this file's
		// sync marker.
		want := w.enc.AppendHeader(nil)
		for _, b := range blocks {
			want = w.enc.AppendBlock(want, b)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s holds %d bytes unlike AppendBlock's %d", name, len(got), len(want))
		}
		return got, entries, n
	}
	// Stamp works in place: each file gets requests of its own.
	copies := func() []*appendReq {
		var out []*appendReq
		for _, r := range reqs {
			out = append(out, &appendReq{entries: r.entries, enc: bytes.Clone(r.enc)})
		}
		return out
	}
	a, entriesA, bytesA := write(l, "by-buffers", copies())
	b, entriesB, bytesB := write(byWrites, "by-writes", copies())
	total, large := 0, 0
	for _, r := range reqs {
		total += r.entries
		if len(r.enc) >= directWrite {
			large++
		}
	}
	if large < 2 || large == len(reqs) {
		t.Fatalf("%d of %d requests of directWrite or more: the batch does not mix", large, len(reqs))
	}
	if len(a) != len(b) || entriesA != total || entriesB != total || bytesA != bytesB || bytesA != len(a)-len(segment.NewEncoder().AppendHeader(nil)) {
		t.Fatalf("by buffers: %d bytes, %d entries, reported %d; by writes: %d, %d, %d; want %d entries",
			len(a), entriesA, bytesA, len(b), entriesB, bytesB, total)
	}
}
