package thriftsrv

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/thrift/gen/freeway"
)

// badQueries answers every query with the declared exception.
type badQueries struct{}

func (badQueries) Apps(context.Context) ([]*freeway.AppInfo, error) {
	return []*freeway.AppInfo{{Name: "a"}}, nil
}

func (badQueries) Authenticate(context.Context, string) error { return nil }

func (badQueries) Query(context.Context, *freeway.QueryRequest) (*freeway.QueryResult_, error) {
	return nil, &freeway.QueryError{Message: "no"}
}

// TestDeclaredExceptionKeepsConnection: an exception from the IDL is the
// answer to one call, not a broken connection.
func TestDeclaredExceptionKeepsConnection(t *testing.T) {
	srv, err := Listen("127.0.0.1:0", freeway.NewQueryProcessor(badQueries{}), Limits{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	c, err := Dial(srv.Addr(), Limits{}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	client := freeway.NewQueryClient(c.TClient())
	for i := 0; i < 3; i++ {
		_, err := client.Query(context.Background(), &freeway.QueryRequest{App: "x"})
		if qe, ok := err.(*freeway.QueryError); !ok || qe.Message != "no" {
			t.Fatalf("call %d: %v, want QueryError", i, err)
		}
	}
	apps, err := client.Apps(context.Background())
	if err != nil || len(apps) != 1 {
		t.Fatalf("apps after exceptions: %v %v", apps, err)
	}
}
