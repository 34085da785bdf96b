// Package scribeapi is the Scribe Thrift service as Freeway's ingest
// ports serve it (the agent on 1463, calligraphus on 1464), with the fb303
// calls monitors and scribe_ctrl use, and the client Freeway's agent and
// tests send with.
//
// A handler that implements EntriesHandler gets Log and LogBatch calls
// decoded by internal/scribewire straight from the frame's bytes (no
// struct and no []byte per entry); what that fast path leaves (metadata,
// unknown fields, malformed input) goes to the generated code and the
// Handler's methods, with the generated code's errors. Client's
// LogEncoded and LogBatchEncoded send arguments scribewire encoded;
// LogBatchFrame and LogFrame send them from a frame the caller built
// around them, in one write (the agent's shipper, the load generator).
//
// The port itself (framing, limits, the in-flight byte budget, idle and
// slow clients) is internal/thriftsrv; a call it refuses unprocessed (too
// large, or no memory for it now) is answered TRY_LATER here. fb303's
// getOptions reports the process's configuration; its control calls
// (reinitialize, shutdown, setOption) are honoured only from the local
// host, and not at all when an admin token is configured, since they
// cannot carry one (see authorize). With the process's TLS
// (component.Shared.TLS) the port speaks TLS; Dial and DialTLS are the
// clients.
package scribeapi

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/connlimit"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/thrift/gen/fb303"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// Handler receives what clients log. It returns TRY_LATER (never drops)
// when it cannot take the entries durably now.
type Handler interface {
	Log(ctx context.Context, entries []*scribethrift.LogEntry) (scribethrift.ResultCode, error)
	LogBatch(ctx context.Context, batch *scribethrift.Batch) (scribethrift.ResultCode, error)
}

// Info describes the server to fb303 and to the wiring.
type Info struct {
	Name    string
	Version string
	// Counters returns the counters getCounters reports.
	Counters func() map[string]int64
	// Control is what fb303's options and control calls do.
	Control component.Control
	// Metrics receives the server's metrics (nil: not exported).
	Metrics prometheus.Registerer
	// Now is the component's clock, for aliveSince (nil: time.Now).
	Now func() time.Time
}

// Server is a Scribe server.
type Server struct {
	srv     *thriftsrv.Server
	service *service
}

// Listen binds addr (host:port; port 0 picks one) and returns a Scribe
// server for h; Serve runs it. A call refused unprocessed (over
// limits.MaxCallBytes, or no room in the budget) is answered TRY_LATER if
// it is Log or LogBatch, so that clients retry or shrink their batches.
// opts name the listener, share the process's budget (thriftsrv).
func Listen(addr string, h Handler, info Info, limits thriftsrv.Limits, log *slog.Logger, opts ...thriftsrv.Option) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := info.Now
	if now == nil {
		now = time.Now
	}
	svc := &service{Handler: h, info: info, since: now().Unix(), warn: ratelog.New(log, time.Minute, 5), log: log}
	svc.controlRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_fb303_control_refused_total",
		Help: "fb303 control calls (reinitialize, shutdown, setOption) refused because they did not come from the local host or an admin token is configured, by method."}, []string{"method"})
	if info.Metrics != nil {
		svc.controlRefused = connlimit.Register(info.Metrics, svc.controlRefused)
	}
	svc.status.Store(int32(fb303.FbStatus_STARTING))
	opts = append([]thriftsrv.Option{thriftsrv.WithName("scribe"), thriftsrv.WithMetrics(info.Metrics), thriftsrv.WithRefuse(tryLater)}, opts...)
	proc := scribethrift.NewScribeProcessor(svc)
	if eh, ok := h.(EntriesHandler); ok {
		useFastPath(proc, eh)
	}
	srv, err := thriftsrv.Listen(addr, proc, limits, log, opts...)
	if err != nil {
		return nil, err
	}
	return &Server{srv: srv, service: svc}, nil
}

// tryLater answers Log and LogBatch calls refused unprocessed with
// TRY_LATER: stock clients retry it, and some (Gollum) halve their batch.
// Other calls get the server's default answer, an exception.
func tryLater(ctx context.Context, call thriftsrv.Call, _ error, out thrift.TProtocol) error {
	rc := scribethrift.ResultCode_TRY_LATER
	var res thrift.TStruct
	switch call.Name {
	case "Log":
		res = &scribethrift.ScribeLogResult{Success: &rc}
	case "LogBatch":
		res = &scribethrift.ScribeLogBatchResult{Success: &rc}
	default:
		return nil
	}
	if err := out.WriteMessageBegin(ctx, call.Name, thrift.REPLY, call.SeqID); err != nil {
		return err
	}
	if err := res.Write(ctx, out); err != nil {
		return err
	}
	return out.WriteMessageEnd(ctx)
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
	info           Info
	since          int64
	status         atomic.Int32
	details        atomic.Pointer[string]
	log            *slog.Logger
	warn           *ratelog.Limiter
	controlRefused *prometheus.CounterVec
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

func (s *service) GetOptions(context.Context) (map[string]string, error) {
	if s.info.Control.Options == nil {
		return map[string]string{}, nil
	}
	return s.info.Control.Options(), nil
}

func (s *service) GetOption(ctx context.Context, key string) (string, error) {
	o, _ := s.GetOptions(ctx)
	return o[key], nil
}

// SetOption is refused: the configuration is the file, so that what runs
// is what a restart would run.
func (s *service) SetOption(ctx context.Context, key, value string) error {
	if err := s.authorize(ctx, "setOption"); err != nil {
		return err
	}
	return fmt.Errorf("options cannot be set at run time; edit the configuration file and call reinitialize (or send SIGHUP)")
}

func (s *service) Reinitialize(ctx context.Context) error {
	return s.control(ctx, "reinitialize", s.info.Control.Reinitialize)
}

func (s *service) Shutdown(ctx context.Context) error {
	return s.control(ctx, "shutdown", s.info.Control.Shutdown)
}

func (s *service) control(ctx context.Context, method string, do func()) error {
	if err := s.authorize(ctx, method); err != nil {
		return err
	}
	if do == nil {
		s.warn.Warn("control:"+method, "fb303 control call not supported by this server", "method", method)
		return fmt.Errorf("%s is not supported by this server", method)
	}
	s.log.Info("fb303 control call", "method", method, "remote", peerString(ctx))
	do()
	return nil
}

// authorize is the one place that decides whether a control call
// (reinitialize, shutdown, setOption) is honoured: only from the local
// host, and never when an admin token is configured (a control call has
// no way to carry it; the HTTP port's POST /admin/* take it).
func (s *service) authorize(ctx context.Context, method string) error {
	if s.info.Control.TokenRequired {
		s.controlRefused.WithLabelValues(method).Inc()
		instead := map[string]string{"reinitialize": "POST /admin/reload", "shutdown": "POST /admin/shutdown"}[method]
		if instead == "" {
			instead = "the configuration file and POST /admin/reload"
		}
		s.warn.Warn("refused-token:"+method, "fb303 control call refused: an admin token is configured and control calls cannot carry one",
			"method", method, "remote", peerString(ctx), "instead", instead)
		return fmt.Errorf("%s refused: auth.admin_token_file is set and fb303 control calls cannot carry a token; use %s on the HTTP port with the admin token", method, instead)
	}
	if addr, ok := thriftsrv.Peer(ctx); ok {
		if ta, ok := addr.(*net.TCPAddr); ok && ta.IP.IsLoopback() {
			return nil
		}
	}
	s.controlRefused.WithLabelValues(method).Inc()
	s.warn.Warn("refused:"+method, "fb303 control call refused: not from the local host", "method", method, "remote", peerString(ctx))
	return fmt.Errorf("%s refused: control calls are honoured only from the local host", method)
}

func peerString(ctx context.Context) string {
	if addr, ok := thriftsrv.Peer(ctx); ok {
		return addr.String()
	}
	return "unknown"
}

// Client is a Scribe client on one connection. It is not safe for
// concurrent use.
type Client struct {
	conn *thriftsrv.Client
	*scribethrift.ScribeClient
	std   *thrift.TStandardClient // under ScribeClient
	iprot thrift.TProtocol        // std's
	seq   int32                   // LogBatchFrame and LogFrame's last sequence id
}

// Dial connects to a Scribe server.
func Dial(addr string, limits thriftsrv.Limits, timeout time.Duration) (*Client, error) {
	return DialTLS(addr, nil, limits, timeout)
}

// DialTLS connects to a Scribe server over TLS with tc (nil: plain TCP).
func DialTLS(addr string, tc *tls.Config, limits thriftsrv.Limits, timeout time.Duration) (*Client, error) {
	conn, err := thriftsrv.DialTLS(addr, tc, limits, timeout)
	if err != nil {
		return nil, err
	}
	iprot := conn.Protocol.GetProtocol(conn.Transport)
	std := thrift.NewTStandardClient(iprot, conn.Protocol.GetProtocol(conn.Transport))
	return &Client{conn: conn, ScribeClient: scribethrift.NewScribeClient(std), std: std, iprot: iprot}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }
