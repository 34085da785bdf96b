package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"time"

	"github.com/freeway-dev/freeway/internal/diskqueue"
)

// lineDigest sums a multiset of lines, whatever their order: their
// number, their bytes and the sum of a hash of each.
type lineDigest struct {
	seed  maphash.Seed
	n     int64
	bytes int64
	sum   uint64
}

func newLineDigest(seed maphash.Seed) *lineDigest { return &lineDigest{seed: seed} }

func (d *lineDigest) add(line []byte) {
	d.n++
	d.bytes += int64(len(line))
	d.sum += maphash.Bytes(d.seed, line)
}

func (d *lineDigest) String() string {
	return fmt.Sprintf("%d lines, %d bytes, sum %016x", d.n, d.bytes, d.sum)
}

func (d *lineDigest) equal(o *lineDigest) bool {
	return d.n == o.n && d.bytes == o.bytes && d.sum == o.sum
}

// fileLines digests the lines of a file (one a line, without the newline).
func fileLines(path string, seed maphash.Seed) (*lineDigest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close() //nolint:errcheck // opened for reading
	d := newLineDigest(seed)
	r := bufio.NewReaderSize(f, 1<<20)
	for {
		line, err := r.ReadSlice('\n')
		if len(line) > 0 {
			d.add(bytes.TrimSuffix(line, []byte("\n")))
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return d, nil
			}
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
	}
}

// queueLines digests the messages of every unacknowledged entry of the
// agent's queue in dir (the agent stopped), read back as the agent's
// shipper would read it. A damaged record (entries lost) is an error.
func queueLines(dir string, seed maphash.Seed) (*lineDigest, error) {
	q, err := diskqueue.Open(diskqueue.Options{Dir: dir, MaxBytes: 1 << 40, SegmentBytes: 64 << 20})
	if err != nil {
		return nil, err
	}
	defer q.Close() //nolint:errcheck // read only: nothing to lose
	d := newLineDigest(seed)
	end := q.Stats().NextSeq
	for q.Stats().Acked < end {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		b, err := q.Read(ctx, 16<<20, 1<<20)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("read the agent's queue: %w", err)
		}
		for _, e := range b.Entries {
			d.add(e.Message)
		}
		if err := q.Ack(b); err != nil {
			return nil, err
		}
	}
	if lost := q.Stats().Lost; lost > 0 {
		return nil, fmt.Errorf("the agent's queue lost %d entries to damage", lost)
	}
	return d, nil
}

// checkQueueHolds reports whether the queue in dir holds exactly the
// lines of linesPath, each once (nil), or what differs.
func checkQueueHolds(dir, linesPath string) error {
	seed := maphash.MakeSeed()
	want, err := fileLines(linesPath, seed)
	if err != nil {
		return err
	}
	got, err := queueLines(dir, seed)
	if err != nil {
		return err
	}
	if !got.equal(want) {
		return fmt.Errorf("the agent's queue holds %s; the lines sent are %s", got, want)
	}
	return nil
}
