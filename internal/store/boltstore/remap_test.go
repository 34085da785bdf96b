package boltstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/freeway-dev/freeway/internal/store"
)

// TestFileGrowsWithoutRemap: the file grows under a checkpoint's Puts
// without bbolt mapping it again (which copies the writing
// transaction's keys and values out of the old mapping and waits for
// every reader): the writer's mapping starts at mmapSize.
func TestFileGrowsWithoutRemap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var mapped []uintptr
	for _, db := range s.parts {
		mapped = append(mapped, db.Info().Data)
	}
	for i := range 4 {
		cells := make([]store.Cell, 1<<14)
		for j := range cells {
			cells[j] = store.Cell{Row: fmt.Sprintf("s/c/0/a@f/%d/k%08d", i, j), Column: "v", Timestamp: 1, Value: make([]byte, 60)}
		}
		if err := s.Put(context.Background(), "t", cells); err != nil {
			t.Fatal(err)
		}
	}
	for k, db := range s.parts {
		info, err := os.Stat(db.Path())
		if err != nil {
			t.Fatal(err)
		}
		if info.Size() < 4<<20/int64(len(s.parts)) {
			t.Fatalf("%s is %d bytes: the test tests too little", db.Path(), info.Size())
		}
		if got := db.Info().Data; got != mapped[k] {
			t.Fatalf("%s was mapped again (at %#x, was %#x)", db.Path(), got, mapped[k])
		}
	}
}
