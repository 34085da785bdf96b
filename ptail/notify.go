package ptail

import "sync"

// Notifier tells readers of a bucket, in the same process as its writer,
// that a segment was published there, so that a reader waiting for one
// looks at once (for its writer's next segment by name, else by a
// listing of the bucket) instead of at its next poll; a reader with a
// notifier therefore does not list its bucket at the end of every
// segment, nor at every poll while notices come. It only shortens
// a wait: a reader still polls (a writer in another process notifies
// nobody), and a notice it misses costs at most one poll. The zero value
// is not usable; use NewNotifier. Safe for concurrent use.
type Notifier struct {
	mu   sync.Mutex
	subs map[string]map[chan struct{}]struct{} // by bucket directory
}

// NewNotifier returns a notifier without readers.
func NewNotifier() *Notifier {
	return &Notifier{subs: map[string]map[chan struct{}]struct{}{}}
}

// Published wakes the readers of the bucket directory dir (as
// layout.BucketDir names it); it never blocks.
func (n *Notifier) Published(dir string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for ch := range n.subs[dir] {
		select {
		case ch <- struct{}{}:
		default: // already woken: one notice stands for any number
		}
	}
}

// subscribe returns a channel that receives after publishes in dir
// (coalesced), and the function that ends the subscription.
func (n *Notifier) subscribe(dir string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.subs[dir] == nil {
		n.subs[dir] = map[chan struct{}]struct{}{}
	}
	n.subs[dir][ch] = struct{}{}
	return ch, func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		delete(n.subs[dir], ch)
		if len(n.subs[dir]) == 0 {
			delete(n.subs, dir)
		}
	}
}

// Subscribers counts the readers subscribed to dir (for tests).
func (n *Notifier) Subscribers(dir string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.subs[dir])
}
