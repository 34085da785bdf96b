package browser

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Names of the Chromium binary tried by Find, after $FREEWAY_CHROMIUM.
var binaries = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}

// Find returns the Chromium to run: $FREEWAY_CHROMIUM if set, else the
// first of chromium, chromium-browser, google-chrome on $PATH.
func Find() (string, error) {
	if p := os.Getenv("FREEWAY_CHROMIUM"); p != "" {
		return p, nil
	}
	for _, b := range binaries {
		if p, err := exec.LookPath(b); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no chromium on $PATH (tried %s; scripts/deps.sh installs Debian's chromium, or set FREEWAY_CHROMIUM)", strings.Join(binaries, ", "))
}

// Flags are the command-line flags Chromium runs with: headless, as root
// (no sandbox), and quiet on a closed network (no background
// connections, no component updates, no sync, no first-run work).
var Flags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
	"--no-first-run", "--no-default-browser-check", "--disable-background-networking",
	"--disable-component-update", "--disable-sync", "--disable-quic", "--disable-extensions",
	"--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--force-color-profile=srgb",
	"--remote-debugging-pipe",
}

// Chrome is a running headless Chromium.
type Chrome struct {
	cmd     *exec.Cmd
	dir     string // the profile, removed by Close
	toChr   *os.File
	fromChr *os.File
	stderr  *bytes.Buffer
	done    chan struct{} // closed when the reader has stopped

	mu      sync.Mutex // guards what follows and writes to toChr
	nextID  int
	pending map[int]chan message
	pages   map[string]*Page // by session
	err     error            // why the reader stopped
}

type message struct {
	ID        int             `json:"id,omitempty"`
	Method    string          `json:"method,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

// Start runs the Chromium at path with Flags and a fresh profile.
func Start(path string) (*Chrome, error) {
	dir, err := os.MkdirTemp("", "freeway-chromium-")
	if err != nil {
		return nil, err
	}
	// fd 3: what Chromium reads (our commands); fd 4: what it writes.
	cmdR, cmdW, err := os.Pipe()
	// On a failed start, closing and removing are best effort: the error
	// returned is the start's.
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		_ = cmdR.Close()
		_ = cmdW.Close()
		_ = os.RemoveAll(dir)
		return nil, err
	}
	c := &Chrome{dir: dir, toChr: cmdW, fromChr: outR, stderr: &bytes.Buffer{}, done: make(chan struct{}),
		pending: map[int]chan message{}, pages: map[string]*Page{}}
	args := append(append([]string{}, Flags...), "--user-data-dir="+dir, "about:blank")
	c.cmd = exec.Command(path, args...)
	c.cmd.ExtraFiles = []*os.File{cmdR, outW}
	c.cmd.Stderr = &lockedWriter{w: c.stderr}
	c.cmd.Stdout = io.Discard
	err = c.cmd.Start()
	// The child holds its own copies of its ends; ours only keep the pipes
	// open past its exit, and closing them cannot lose anything.
	_ = cmdR.Close()
	_ = outW.Close()
	if err != nil {
		_ = cmdW.Close()
		_ = outR.Close()
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	go c.read()
	return c, nil
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w.Len() > 1<<20 {
		return len(p), nil // enough to say what went wrong
	}
	return l.w.Write(p)
}

// read dispatches Chromium's messages: answers to their callers, events
// to their pages.
func (c *Chrome) read() {
	defer close(c.done)
	r := bufio.NewReaderSize(c.fromChr, 1<<20)
	var err error
	for {
		var b []byte
		b, err = r.ReadBytes(0)
		if err != nil {
			break
		}
		var m message
		if err = json.Unmarshal(b[:len(b)-1], &m); err != nil {
			break
		}
		c.mu.Lock()
		if m.ID != 0 {
			if ch, ok := c.pending[m.ID]; ok {
				delete(c.pending, m.ID)
				ch <- m
			}
		} else if p := c.pages[m.SessionID]; p != nil {
			p.event(m)
		}
		c.mu.Unlock()
	}
	c.mu.Lock()
	c.err = fmt.Errorf("chromium closed the pipe: %w", err)
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
	c.mu.Unlock()
}

// call sends a command (to a page's session, or the browser when session
// is "") and decodes its result into out (nil: ignored).
func (c *Chrome) call(ctx context.Context, session, method string, params, out any) error {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.nextID++
	id := c.nextID
	ch := make(chan message, 1)
	c.pending[id] = ch
	msg := map[string]any{"id": id, "method": method}
	if params != nil {
		msg["params"] = params
	}
	if session != "" {
		msg["sessionId"] = session
	}
	b, err := json.Marshal(msg)
	if err == nil {
		_, err = c.toChr.Write(append(b, 0))
	}
	if err != nil {
		delete(c.pending, id)
		c.mu.Unlock()
		return fmt.Errorf("send %s: %w", method, err)
	}
	c.mu.Unlock()
	select {
	case m, ok := <-ch:
		if !ok {
			c.mu.Lock()
			defer c.mu.Unlock()
			return fmt.Errorf("%s: %w", method, c.err)
		}
		if m.Error != nil {
			return fmt.Errorf("%s: %s (%d)", method, m.Error.Message, m.Error.Code)
		}
		if out != nil {
			if err := json.Unmarshal(m.Result, out); err != nil {
				return fmt.Errorf("%s: decode %s: %w", method, m.Result, err)
			}
		}
		return nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return fmt.Errorf("%s: %w", method, ctx.Err())
	}
}

// Version is the browser's product and version, e.g. "Chrome/156.0.8078.73".
func (c *Chrome) Version(ctx context.Context) (string, error) {
	var v struct {
		Product string `json:"product"`
	}
	err := c.call(ctx, "", "Browser.getVersion", nil, &v)
	return v.Product, err
}

// Stderr is what Chromium wrote on its standard error (its first MiB).
func (c *Chrome) Stderr() string {
	w := c.cmd.Stderr.(*lockedWriter)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.String()
}

// Close closes the browser, waits for it (killing it if it lingers) and
// removes its profile.
func (c *Chrome) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Chromium may exit before it answers Browser.close: the wait below
	// says how it ended.
	_ = c.call(ctx, "", "Browser.close", nil, nil)
	exited := make(chan error, 1)
	go func() { exited <- c.cmd.Wait() }()
	var err error
	select {
	case err = <-exited:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill() // fails only when it has exited meanwhile
		err = errors.Join(errors.New("chromium did not exit; killed"), <-exited)
	}
	// Pipes to a process that has exited: nothing is left to flush.
	_ = c.toChr.Close()
	<-c.done
	_ = c.fromChr.Close()
	if rerr := os.RemoveAll(c.dir); rerr != nil && err == nil {
		err = rerr
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		err = nil // Browser.close ends it as it likes
	}
	return err
}

// Page is a tab.
type Page struct {
	c         *Chrome
	session   string
	targetID  string
	logs      []string // console messages and exceptions; guarded by c.mu
	loadCount int      // Page.loadEventFired seen; guarded by c.mu
}

// NewPage opens a blank tab of width × height CSS pixels.
func (c *Chrome) NewPage(ctx context.Context, width, height int) (*Page, error) {
	var t struct {
		TargetID string `json:"targetId"`
	}
	if err := c.call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &t); err != nil {
		return nil, err
	}
	var a struct {
		SessionID string `json:"sessionId"`
	}
	if err := c.call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": t.TargetID, "flatten": true}, &a); err != nil {
		return nil, err
	}
	p := &Page{c: c, session: a.SessionID, targetID: t.TargetID}
	c.mu.Lock()
	c.pages[a.SessionID] = p
	c.mu.Unlock()
	for _, m := range []string{"Page.enable", "Runtime.enable"} {
		if err := c.call(ctx, p.session, m, nil, nil); err != nil {
			return nil, err
		}
	}
	if err := c.call(ctx, p.session, "Emulation.setDeviceMetricsOverride",
		map[string]any{"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}, nil); err != nil {
		return nil, err
	}
	return p, nil
}

// event records what the page logged or threw; c.mu is held.
func (p *Page) event(m message) {
	switch m.Method {
	case "Page.loadEventFired":
		p.loadCount++
	case "Runtime.consoleAPICalled":
		var e struct {
			Type string `json:"type"`
			Args []struct {
				Value       any    `json:"value"`
				Description string `json:"description"`
			} `json:"args"`
		}
		if json.Unmarshal(m.Params, &e) == nil {
			var parts []string
			for _, a := range e.Args {
				if a.Value != nil {
					parts = append(parts, fmt.Sprint(a.Value))
				} else {
					parts = append(parts, a.Description)
				}
			}
			p.logs = append(p.logs, "console."+e.Type+": "+strings.Join(parts, " "))
		}
	case "Runtime.exceptionThrown":
		var e struct {
			Details struct {
				Text      string `json:"text"`
				Exception struct {
					Description string `json:"description"`
				} `json:"exception"`
			} `json:"exceptionDetails"`
		}
		if json.Unmarshal(m.Params, &e) == nil {
			p.logs = append(p.logs, "exception: "+e.Details.Text+" "+e.Details.Exception.Description)
		}
	}
}

// Logs are what the page logged to its console and the exceptions it
// threw, in order.
func (p *Page) Logs() []string {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	return append([]string{}, p.logs...)
}

// Navigate loads url and waits for its load event.
func (p *Page) Navigate(ctx context.Context, url string) error {
	p.c.mu.Lock()
	loads := p.loadCount
	p.c.mu.Unlock()
	var r struct {
		ErrorText string `json:"errorText"`
	}
	if err := p.c.call(ctx, p.session, "Page.navigate", map[string]any{"url": url}, &r); err != nil {
		return err
	}
	if r.ErrorText != "" {
		return fmt.Errorf("navigate to %s: %s", url, r.ErrorText)
	}
	for {
		p.c.mu.Lock()
		done := p.loadCount > loads
		p.c.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("navigate to %s: no load event: %w", url, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Eval evaluates a JavaScript expression in the page (awaiting it if it
// is a promise) and decodes its value, as JSON, into out (nil: ignored).
// An exception is an error with its description.
func (p *Page) Eval(ctx context.Context, expr string, out any) error {
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	err := p.c.call(ctx, p.session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true}, &r)
	if err != nil {
		return err
	}
	if r.Exception != nil {
		return fmt.Errorf("evaluate %.80q: %s %s", expr, r.Exception.Text, r.Exception.Exception.Description)
	}
	if out == nil {
		return nil
	}
	if len(r.Result.Value) == 0 {
		return fmt.Errorf("evaluate %.80q: no value (undefined)", expr)
	}
	return json.Unmarshal(r.Result.Value, out)
}

// Wait evaluates cond every 50ms until it is true, or fails with the
// last value when ctx ends.
func (p *Page) Wait(ctx context.Context, cond string) error {
	var last string
	for {
		var ok bool
		err := p.Eval(ctx, "!!("+cond+")", &ok)
		if err == nil && ok {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = "false"
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %s (%w)", cond, last, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Screenshot captures the page as a PNG: the viewport, or with full the
// whole page.
func (p *Page) Screenshot(ctx context.Context, full bool) ([]byte, error) {
	var r struct {
		Data string `json:"data"`
	}
	params := map[string]any{"format": "png", "captureBeyondViewport": full}
	if full {
		var size struct{ W, H float64 }
		if err := p.Eval(ctx, "({W: document.documentElement.scrollWidth, H: document.documentElement.scrollHeight})", &size); err != nil {
			return nil, err
		}
		params["clip"] = map[string]any{"x": 0, "y": 0, "width": size.W, "height": size.H, "scale": 1}
	}
	if err := p.c.call(ctx, p.session, "Page.captureScreenshot", params, &r); err != nil {
		return nil, err
	}
	return base64.StdEncoding.DecodeString(r.Data)
}

// SaveScreenshot writes a screenshot to dir/name (a PNG) and returns its
// path.
func (p *Page) SaveScreenshot(ctx context.Context, dir, name string, full bool) (string, error) {
	png, err := p.Screenshot(ctx, full)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	return path, os.WriteFile(path, png, 0o644)
}
