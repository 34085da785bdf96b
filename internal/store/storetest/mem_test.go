package storetest_test

import (
	"testing"

	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/storetest"
)

func TestMemConforms(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (store.Store, string) {
		return storetest.NewMem(), "t"
	})
}
