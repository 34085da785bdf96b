// Package scribeapi is the Scribe Thrift service as Freeway's ingest
// ports serve it (the agent on 1463, calligraphus on 1464), with the fb303
// calls monitors use, and the client Freeway's agent and tests send with.
package scribeapi

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/thrift/gen/fb303"
	"github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// Handler receives what clients log. It returns TRY_LATER (never drops)
// when it cannot take the entries durably now.
type Handler interface {
	Log(ctx context.Context, entries []*scribe.LogEntry) (scribe.ResultCode, error)
	LogBatch(ctx context.Context, batch *scribe.Batch) (scribe.ResultCode, error)
}

// Info feeds the fb303 calls.
type Info struct {
	Name    string
	Version string
	// Counters returns the counters getCounters reports.
	Counters func() map[string]int64
}

// Server is a Scribe server.
type Server struct {
	srv     *thriftsrv.Server
	service *service
}

// Listen binds addr (host:port; port 0 picks one) and returns a Scribe
// server for h; Serve runs it.
func Listen(addr string, h Handler, info Info, limits thriftsrv.Limits, log *slog.Logger) (*Server, error) {
	svc := &service{Handler: h, info: info, since: time.Now().Unix()}
	svc.status.Store(int32(fb303.FbStatus_STARTING))
	srv, err := thriftsrv.Listen(addr, scribe.NewScribeProcessor(svc), limits, log)
	if err != nil {
		return nil, err
	}
	return &Server{srv: srv, service: svc}, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.srv.Addr() }

// Serve serves until ctx ends.
func (s *Server) Serve(ctx context.Context) error {
	s.service.status.Store(int32(fb303.FbStatus_ALIVE))
	defer s.service.status.Store(int32(fb303.FbStatus_STOPPED))
	return s.srv.Serve(ctx)
}

// SetStatus sets what getStatus answers, with a reason for
// getStatusDetails (WARNING while a downstream is unreachable, say).
func (s *Server) SetStatus(st fb303.FbStatus, details string) {
	s.service.status.Store(int32(st))
	s.service.details.Store(&details)
}

type service struct {
	Handler
	info    Info
	since   int64
	status  atomic.Int32
	details atomic.Pointer[string]
}

func (s *service) GetName(context.Context) (string, error)    { return s.info.Name, nil }
func (s *service) GetVersion(context.Context) (string, error) { return s.info.Version, nil }
func (s *service) GetStatus(context.Context) (fb303.FbStatus, error) {
	return fb303.FbStatus(s.status.Load()), nil
}

func (s *service) GetStatusDetails(context.Context) (string, error) {
	if d := s.details.Load(); d != nil {
		return *d, nil
	}
	return "", nil
}

func (s *service) GetCounters(context.Context) (map[string]int64, error) {
	if s.info.Counters == nil {
		return map[string]int64{}, nil
	}
	return s.info.Counters(), nil
}

func (s *service) GetCounter(ctx context.Context, key string) (int64, error) {
	c, _ := s.GetCounters(ctx)
	return c[key], nil
}

func (s *service) AliveSince(context.Context) (int64, error) { return s.since, nil }

// Client is a Scribe client on one connection. It is not safe for
// concurrent use.
type Client struct {
	conn *thriftsrv.Client
	*scribe.ScribeClient
}

// Dial connects to a Scribe server.
func Dial(addr string, limits thriftsrv.Limits, timeout time.Duration) (*Client, error) {
	conn, err := thriftsrv.Dial(addr, limits, timeout)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, ScribeClient: scribe.NewScribeClient(conn.TClient())}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }
