package inproc_test

import (
	"testing"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/coord/coordtest"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
)

type backend struct{ hub *inproc.Hub }

func (b backend) Session(t *testing.T) coord.Coord {
	s := b.hub.Session()
	t.Cleanup(func() { s.Close() })
	return s
}

func (b backend) Expire(t *testing.T, c coord.Coord) { c.(*inproc.Session).Expire() }

func TestConformance(t *testing.T) {
	coordtest.Run(t, func(t *testing.T) coordtest.Backend { return backend{inproc.NewHub()} })
}
