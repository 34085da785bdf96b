package copier

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
)

// TestDestinationSegmentRemovedWhileComparedIsCopied: a segment found at
// the destination (a copier died after publishing it, before recording
// it) is removed there by hand while the copier compares it with the
// source. The copier copies it again, rather than taking the destination
// file gone for the source segment gone, passing over it and recording
// it done.
func TestDestinationSegmentRemovedWhileComparedIsCopied(t *testing.T) {
	e := newEnv(t)
	name := publish(t, e.src, "access", 0, 1, 0, 3)
	data := readFile(t, e.src, name)
	if err := dfs.WriteFile(e.dst, name, data); err != nil {
		t.Fatal(err)
	}
	dst := dfstest.NewFaulty(e.dst)
	var once sync.Once
	dst.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpOpen && c.Name == name {
			once.Do(func() { _ = e.dst.Remove(name) })
		}
		return nil
	})
	st := copyOnce(t, e.copier(t, "a", withDest(dst)))
	if !exists(e.dst, name) || !bytes.Equal(readFile(t, e.dst, name), data) {
		t.Errorf("%s is not at the destination after the pass (%+v)", name, st)
	}
	if last, _ := LastCopied(context.Background(), e.st, "copier", "access", 0); last != layout.SegmentName(1, 0) {
		t.Errorf("progress %q", last)
	}
}
