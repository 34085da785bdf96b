package coord_test

import (
	"context"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
)

// TestWhileHeld: the context ends when the lease is lost (a session
// expiry here), not before; and with its parent.
func TestWhileHeld(t *testing.T) {
	hub := inproc.NewHub()
	s := hub.Session()
	defer s.Close()
	l, err := s.Acquire(context.Background(), "work", "me")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := coord.WhileHeld(context.Background(), l)
	defer cancel()
	select {
	case <-ctx.Done():
		t.Fatal("ended while the lease is held")
	case <-time.After(20 * time.Millisecond):
	}
	s.Expire()
	select {
	case <-ctx.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("did not end once the lease was lost")
	}

	l2, err := s.Acquire(context.Background(), "work2", "me")
	if err != nil {
		t.Fatal(err)
	}
	parent, stop := context.WithCancel(context.Background())
	ctx2, cancel2 := coord.WhileHeld(parent, l2)
	defer cancel2()
	stop()
	<-ctx2.Done()
}
