package boltstore_test

import (
	"path/filepath"
	"testing"

	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/boltstore"
	"github.com/freeway-dev/freeway/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (store.Store, string) {
		s, err := boltstore.Open(filepath.Join(t.TempDir(), "store.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s, "t"
	})
}

func TestSecondOpenIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := boltstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s2, err := boltstore.Open(path); err == nil {
		s2.Close()
		t.Fatal("a second open of a held store succeeded")
	}
}
