package localfs

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"testing"
)

// TestWriteBuffersFinishesShortWrites: a writev that takes only part of
// the buffers (here a pipe's capacity; on a file, a full disk or a
// signal) is finished from where it stopped, mid-buffer included, and
// the bytes that arrive are the buffers' concatenation, once each, in
// order. One writev's worth of buffers (fewer than maxIovecs), four MiB
// against a pipe of 64 KiB: the first writev is short.
func TestWriteBuffersFinishesShortWrites(t *testing.T) {
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	rng := rand.New(rand.NewPCG(9, 10))
	var bufs [][]byte
	var want []byte
	for i := range 600 {
		n := rng.IntN(14_000)
		if i%50 == 0 {
			n = 0
		}
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		bufs = append(bufs, b)
		want = append(want, b...)
	}
	if len(bufs) >= maxIovecs || len(want) < 1<<20 {
		t.Fatalf("%d buffers of %d bytes: not one short writev", len(bufs), len(want))
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(pr)
		got <- b
	}()
	w := &writer{File: pw}
	n, err := w.WriteBuffers(bufs)
	_ = pw.Close() // the reader ends at EOF
	if err != nil || n != int64(len(want)) {
		t.Fatalf("write buffers = %d, %v; want %d", n, err, len(want))
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("the pipe carried %d bytes, want %d (equal: %v)", len(b), len(want), bytes.Equal(b, want))
	}
}
