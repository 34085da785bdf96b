package zkcoord

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives the tests: every
// Coord must stop all of its own and the client's on Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
