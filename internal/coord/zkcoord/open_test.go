package zkcoord

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/coord"
)

// TestCallUndo checks that a call whose caller gave up undoes its result.
func TestCallUndo(t *testing.T) {
	c := &Coord{done: make(chan struct{})}
	release := make(chan struct{})
	var mu sync.Mutex
	var undone []int
	undo := func(v int) {
		mu.Lock()
		undone = append(undone, v)
		mu.Unlock()
	}

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		_, err := call(ctx, c, func() (int, error) { close(started); <-release; return 7, nil }, undo)
		errc <- err
	}()
	<-started
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned call: %v", err)
	}
	close(release)
	c.wg.Wait()
	mu.Lock()
	if len(undone) != 1 || undone[0] != 7 {
		t.Fatalf("undone %v, want [7]", undone)
	}
	mu.Unlock()

	// A delivered result is not undone, nor is a failure.
	if v, err := call(context.Background(), c, func() (int, error) { return 8, nil }, undo); v != 8 || err != nil {
		t.Fatalf("call = %d %v", v, err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	fail := make(chan struct{})
	go func() { cancel(); close(fail) }()
	_, _ = call(ctx, c, func() (int, error) { <-fail; return 9, errors.New("no") }, undo)
	c.wg.Wait()
	mu.Lock()
	if len(undone) != 1 {
		t.Fatalf("undone %v, want [7]", undone)
	}
	mu.Unlock()

	c.closed = true
	if _, err := call(context.Background(), c, func() (int, error) { return 0, nil }, nil); !errors.Is(err, coord.ErrClosed) {
		t.Fatalf("call after close: %v", err)
	}
}

// TestOpenFailsFast checks that Open gives up, and cleans up, when no
// server answers: one refuses connections, one accepts and stays silent.
func TestOpenFailsFast(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := l.Addr().String()
	l.Close()

	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	defer func() {
		silent.Close()
		wg.Wait()
		for _, c := range held {
			c.Close()
		}
	}()

	for _, addr := range []string{refused, silent.Addr().String()} {
		start := time.Now()
		c, err := Open("zk://"+addr+"/freeway?session_timeout=1s", nil)
		if err == nil {
			c.Close()
			t.Fatalf("open %s succeeded", addr)
		}
		if !strings.Contains(err.Error(), "no ZooKeeper server granted a session") {
			t.Errorf("open %s: %v", addr, err)
		}
		t.Logf("open %s failed after %v", addr, time.Since(start).Round(time.Millisecond))
	}
	if _, err := Open("zk://h:2181", nil); err == nil || !strings.Contains(err.Error(), "no root") {
		t.Errorf("open without a root: %v", err)
	}
}
