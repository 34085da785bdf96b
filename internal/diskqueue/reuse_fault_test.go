package diskqueue

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// anyFaults fails any file operation, with probability 1/9, while on.
type anyFaults struct {
	mu  sync.Mutex
	rng *rand.Rand
	on  bool
	n   int // faults injected
}

func (f *anyFaults) hook(FileOp, string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.on && f.rng.IntN(9) == 0 {
		f.n++
		return syscall.ENOSPC
	}
	return nil
}

func (f *anyFaults) set(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.on = on
}

// TestRandomFaultsThroughReuseAndRestarts: appends, reads right behind or
// further back, acknowledgements (segment files kept and reused) and
// clean restarts, while any file operation may fail (writes, syncs,
// truncates, renames of spares, removals, directory syncs, the ack
// file's). Every batch read, while running and after the restarts, is
// exactly the entries appended successfully from where the reader was,
// each once with its number; nothing of a failed append, nothing stale.
func TestRandomFaultsThroughReuseAndRestarts(t *testing.T) {
	for seed := range uint64(16) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 5))
			f := &anyFaults{rng: rand.New(rand.NewPCG(seed, 6))}
			dir := t.TempDir()
			opts := func(o *Options) {
				o.SegmentBytes, o.Compress, o.CompressAbove, o.FileHook, o.RetryInterval = 2048, seed%2 == 0, 0, f.hook, time.Nanosecond
			}
			q, _ := open(t, dir, opts)
			f.set(true)
			msgs := map[uint64]string{}
			readTo := q.Stats().Acked
			var unacked []Batch
			for i := range 400 {
				es := make([]Entry, 1+rng.IntN(3))
				for j := range es {
					es[j] = Entry{Category: "cat", Message: []byte(fmt.Sprintf("e%04d.%d-%s", i, j, strings.Repeat("z", rng.IntN(400)))), Time: 1}
				}
				first, err := q.Append(es)
				if err == nil {
					for j := range es {
						if _, dup := msgs[first+uint64(j)]; dup {
							t.Fatalf("seq %d handed out twice", first+uint64(j))
						}
						msgs[first+uint64(j)] = string(es[j].Message)
					}
				} else if !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, ErrUnavailable) {
					t.Fatalf("append: %v", err)
				}
				if rng.IntN(2) == 0 && readTo < q.Stats().NextSeq {
					if _, ok := msgs[q.Stats().NextSeq-1]; ok {
						b := read(t, q, 1<<20, 1+rng.IntN(6))
						if b.First != readTo {
							t.Fatalf("read from %d, want %d", b.First, readTo)
						}
						for j, e := range b.Entries {
							if want := msgs[b.First+uint64(j)]; string(e.Message) != want {
								t.Fatalf("read %d: %.14q, want %.14q", b.First+uint64(j), e.Message, want)
							}
						}
						readTo = b.End()
						unacked = append(unacked, b)
					}
				}
				if len(unacked) > 0 && rng.IntN(3) == 0 {
					k := rng.IntN(len(unacked))
					if err := q.Ack(unacked[k]); err == nil {
						unacked = unacked[k+1:]
					}
				}
				if rng.IntN(80) == 0 {
					f.set(false) // the disk recovered: Close's repair can succeed
					_ = q.Close()
					q, _ = open(t, dir, opts)
					f.set(true)
					unacked, readTo = nil, q.Stats().Acked
				}
			}
			f.set(false)
			for {
				first, err := q.Append(entries("final", 1))
				if err == nil {
					msgs[first] = "final-0"
					break
				}
			}
			check := func(q *Queue, from uint64) uint64 {
				next := from
				for st := q.Stats(); next < st.NextSeq; {
					b := read(t, q, 1<<20, 1000)
					if b.First != next {
						t.Fatalf("read from %d, want %d", b.First, next)
					}
					for j, e := range b.Entries {
						if want := msgs[b.First+uint64(j)]; string(e.Message) != want {
							t.Fatalf("read %d: %.14q, want %.14q", b.First+uint64(j), e.Message, want)
						}
					}
					next = b.End()
				}
				if st := q.Stats(); st.Lost != 0 {
					t.Fatalf("lost %d", st.Lost)
				}
				return next
			}
			check(q, readTo)
			_ = q.Close()
			q, _ = open(t, dir, opts)
			defer q.Close()
			check(q, q.Stats().Acked)
			t.Logf("%d faults, %d entries, stats %+v", f.n, len(msgs), q.Stats())
		})
	}
}
