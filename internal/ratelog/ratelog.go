// Package ratelog keeps warnings about bad input from flooding the log and
// from copying hostile input into it: a Limiter lets a few lines of each
// kind through per interval and says how many it held back, and Clip
// shortens a client-supplied string before it goes into a log line or an
// error body.
//
// Every component that logs something a client can trigger at will (a bad
// entry, a malformed request, a refused call) goes through a Limiter, so
// that 10,000 bad entries make a handful of lines, not 10,000.
package ratelog

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"
)

// MaxClip is how many bytes of a client-supplied string Clip keeps.
const MaxClip = 200

// maxKeys bounds the kinds a Limiter tracks; past it the oldest window's
// state is forgotten (a kind then may log its burst again).
const maxKeys = 1024

// Limiter lets at most Burst lines of one kind (a key, usually the
// message) through per interval. A line let through after some were held
// back carries their number as "suppressed". Safe for concurrent use.
type Limiter struct {
	log   *slog.Logger
	every time.Duration
	burst int
	now   func() time.Time

	mu   sync.Mutex
	keys map[string]*window
}

type window struct {
	start      time.Time
	n          int // lines let through in this window
	suppressed int // lines held back since the last one let through
}

// New returns a limiter writing to log that lets burst lines of each kind
// through per interval every (a nil log discards).
func New(log *slog.Logger, every time.Duration, burst int) *Limiter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Limiter{log: log, every: every, burst: max(burst, 1), now: time.Now, keys: map[string]*window{}}
}

// Warn logs msg at warning level, unless lines of kind key are over their
// budget; it reports whether the line was written.
func (l *Limiter) Warn(key, msg string, args ...any) bool {
	return l.Log(slog.LevelWarn, key, msg, args...)
}

// Error logs msg at error level, unless lines of kind key are over their
// budget; it reports whether the line was written.
func (l *Limiter) Error(key, msg string, args ...any) bool {
	return l.Log(slog.LevelError, key, msg, args...)
}

// Log logs msg at level, unless lines of kind key are over their budget.
// It reports whether the line was written.
func (l *Limiter) Log(level slog.Level, key, msg string, args ...any) bool {
	if !l.log.Enabled(context.Background(), level) {
		return false
	}
	l.mu.Lock()
	now := l.now()
	w := l.keys[key]
	if w == nil {
		if len(l.keys) >= maxKeys {
			l.forgetOldest()
		}
		w = &window{start: now}
		l.keys[key] = w
	}
	if now.Sub(w.start) >= l.every {
		w.start, w.n = now, 0
	}
	if w.n >= l.burst {
		w.suppressed++
		l.mu.Unlock()
		return false
	}
	w.n++
	suppressed := w.suppressed
	w.suppressed = 0
	l.mu.Unlock()
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	l.log.Log(context.Background(), level, msg, args...) //nolint:sloglint // passes on its callers' constant messages
	return true
}

func (l *Limiter) forgetOldest() {
	var oldest string
	var t time.Time
	for k, w := range l.keys {
		if oldest == "" || w.start.Before(t) {
			oldest, t = k, w.start
		}
	}
	delete(l.keys, oldest)
}

// Clip returns s cut to at most MaxClip bytes (on a rune boundary) with a
// note of its full length, for a log line or an error body.
func Clip(s string) string { return clip(s) }

// ClipBytes is Clip for a byte slice.
func ClipBytes(b []byte) string { return clip(b) }

func clip[T string | []byte](s T) string {
	if len(s) <= MaxClip {
		return string(s)
	}
	cut := MaxClip
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s...(%d bytes)", s[:cut], len(s))
}
