// Package progress draws the progress of long work (a copier backfill)
// for a person watching: on a terminal one line redrawn in place, with a
// bar, bytes, files, rate and time left; elsewhere (a log file, a pipe) a
// plain line now and then, so that the output stays readable.
//
// It keeps no state across a crash: what the work itself records is what
// resumes it.
package progress

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// State is how far the work is.
type State struct {
	Files, TotalFiles int
	Bytes, TotalBytes int64
	Start             time.Time
}

// Printer prints States to w.
type Printer struct {
	w     io.Writer
	tty   bool
	label string
	now   func() time.Time
	every time.Duration // between lines (terminal: redraws)

	mu    sync.Mutex
	last  time.Time
	drawn bool
}

// New returns a printer of label's progress to w; tty says w is a
// terminal. now is the clock (nil: time.Now).
func New(w io.Writer, tty bool, label string, now func() time.Time) *Printer {
	if now == nil {
		now = time.Now
	}
	every := 10 * time.Second
	if tty {
		every = 100 * time.Millisecond
	}
	return &Printer{w: w, tty: tty, label: label, now: now, every: every}
}

// Update shows s, unless the last line is too recent.
func (p *Printer) Update(s State) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if p.drawn && now.Sub(p.last) < p.every {
		return
	}
	p.print(s, now)
}

// Done shows s whatever the time, and ends the line.
func (p *Printer) Done(s State) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.print(s, p.now())
	if p.tty {
		_, _ = fmt.Fprintln(p.w) // a display: a failed write is not worth stopping the work for
	}
}

func (p *Printer) print(s State, now time.Time) {
	p.last, p.drawn = now, true
	line := Format(s, now)
	// A display: a failed write is not worth stopping the work for.
	if p.tty {
		_, _ = fmt.Fprintf(p.w, "\r%s %s\x1b[K", p.label, line)
		return
	}
	_, _ = fmt.Fprintf(p.w, "%s %s\n", p.label, line)
}

// Format is s as one line at now: bar (on width 20), percentage of
// bytes, bytes, files, rate and time left.
func Format(s State, now time.Time) string {
	frac := 1.0
	if s.TotalBytes > 0 {
		frac = min(float64(s.Bytes)/float64(s.TotalBytes), 1)
	} else if s.TotalFiles > 0 {
		frac = min(float64(s.Files)/float64(s.TotalFiles), 1)
	}
	const width = 20
	full := int(frac * width)
	bar := strings.Repeat("=", full)
	if full < width {
		bar += ">" + strings.Repeat(" ", width-full-1)
	}
	elapsed := now.Sub(s.Start)
	rate, eta := "-", "-"
	if elapsed > 0 && s.Bytes > 0 {
		perSec := float64(s.Bytes) / elapsed.Seconds()
		rate = Bytes(int64(perSec)) + "/s"
		left := time.Duration(float64(s.TotalBytes-s.Bytes) / perSec * float64(time.Second))
		eta = left.Round(time.Second).String()
	}
	return fmt.Sprintf("[%s] %3.0f%% %s/%s %d/%d files %s ETA %s",
		bar, frac*100, Bytes(s.Bytes), Bytes(s.TotalBytes), s.Files, s.TotalFiles, rate, eta)
}

// Bytes is n in binary units: 512 B, 1.5 KiB, 3.2 GiB.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
