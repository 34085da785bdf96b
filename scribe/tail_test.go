package scribe

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

func appendFile(t testing.TB, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func tailConfig(dir, upstream string, paths ...string) Config {
	cfg := testConfig(filepath.Join(dir, "queue"), upstream)
	for _, p := range paths {
		cfg.Tail = append(cfg.Tail, TailConfig{Path: p, Category: "tailed"})
	}
	return cfg
}

// messagesOf returns the messages upstream accepted, checking that they
// are numbered 1, 2, ... without gaps.
func messagesOf(t testing.TB, u *fakeUpstream) []string {
	t.Helper()
	var out []string
	for i, g := range u.received(t) {
		if g.seq != int64(i+1) {
			t.Fatalf("entry %d has sequence %d", i, g.seq)
		}
		out = append(out, g.msg)
	}
	return out
}

func waitLines(t testing.TB, u *fakeUpstream, want ...string) {
	t.Helper()
	testkit.WaitFor(t, fmt.Sprintf("%d lines upstream", len(want)), func() bool { return u.count(t) >= len(want) })
	if got := messagesOf(t, u); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("upstream has %q, want %q", got, want)
	}
}

func TestTailFollowsAppendedLinesAndWaitsForPartialOnes(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	appendFile(t, log, "one\ntwo\n")
	up := startUpstream(t, "127.0.0.1:0", nil)
	a := startAgent(t, tailConfig(dir, up.srv.Addr(), log))
	waitLines(t, up, "one", "two")
	// "four" has no newline yet: it waits, in the same read as "three".
	appendFile(t, log, "three\nfou")
	waitLines(t, up, "one", "two", "three")
	appendFile(t, log, "r\n\nfive\n")
	waitLines(t, up, "one", "two", "three", "four", "", "five")
	// The tailer counts lines once the queue took them, and the shipper
	// may send them before it does.
	testkit.WaitFor(t, "6 lines counted", func() bool {
		return gather(t, a, "freeway_agent_tail_lines_total", "path", log) == 6 &&
			gather(t, a, "freeway_agent_entries_received_total", "source", "tail") == 6
	})
	for _, g := range up.received(t) {
		if g.cat != "tailed" {
			t.Fatalf("category %q", g.cat)
		}
	}
}

// pollClock is the real clock, counting the tailers' polls: the waits of
// interval, which no other loop of the agent uses; and the other waits
// (retries). Its time runs skew ahead of the real one.
type pollClock struct {
	interval     time.Duration
	polls, waits atomic.Int64
	skew         atomic.Int64 // time.Duration
}

func (c *pollClock) Now() time.Time { return time.Now().Add(time.Duration(c.skew.Load())) }

func (c *pollClock) After(d time.Duration) <-chan time.Time {
	if d == c.interval {
		c.polls.Add(1)
	} else {
		c.waits.Add(1)
	}
	return time.After(d)
}

// TestTailWaitsForAFileToAppear: a tailed path that does not exist yet is
// waited for, not a failure: the tailer polls it without an error or a
// warning, and reads the file from its start once it is created.
func TestTailWaitsForAFileToAppear(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "later.log")
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := tailConfig(dir, up.srv.Addr(), log)
	cfg.TailPollInterval = config.Duration(3 * time.Millisecond) // testConfig's retry waits are 1ms-20ms
	clk := &pollClock{interval: cfg.TailPollInterval.D()}
	a := startAgentClock(t, cfg, clk)
	testkit.WaitFor(t, "the tailer to poll the missing file", func() bool { return clk.polls.Load() >= 3 })
	appendFile(t, log, "hello\n")
	waitLines(t, up, "hello")
	for _, level := range []string{"level=ERROR", "level=WARN"} {
		if lines := a.logs.Lines(level, log); len(lines) > 0 {
			t.Fatalf("the missing file was treated as a failure:\n%s", strings.Join(lines, "\n"))
		}
	}
}

func TestTailFollowsRotationByRename(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	appendFile(t, log, "a1\na2\n")
	up := startUpstream(t, "127.0.0.1:0", nil)
	a := startAgent(t, tailConfig(dir, up.srv.Addr(), log))
	waitLines(t, up, "a1", "a2")

	// The app still holds the old file after the rename and writes a last
	// line, unterminated, before reopening its log.
	old, err := os.OpenFile(log, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(log, log+".1"); err != nil {
		t.Fatal(err)
	}
	if _, err := old.WriteString("a3\na4-unterminated"); err != nil {
		t.Fatal(err)
	}
	old.Close()
	appendFile(t, log, "b1\nb2\n")
	waitLines(t, up, "a1", "a2", "a3", "a4-unterminated", "b1", "b2")
	appendFile(t, log, "b3\n")
	waitLines(t, up, "a1", "a2", "a3", "a4-unterminated", "b1", "b2", "b3")
	if got := gather(t, a, "freeway_agent_tail_rotations_total", "path", log); got != 1 {
		t.Fatalf("rotations = %v", got)
	}
}

func TestTailRestartsAfterTruncation(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	appendFile(t, log, "first line\nsecond line\n")
	up := startUpstream(t, "127.0.0.1:0", nil)
	a := startAgent(t, tailConfig(dir, up.srv.Addr(), log))
	waitLines(t, up, "first line", "second line")
	if err := os.Truncate(log, 0); err != nil {
		t.Fatal(err)
	}
	appendFile(t, log, "x\n")
	waitLines(t, up, "first line", "second line", "x")
	if got := gather(t, a, "freeway_agent_tail_truncations_total", "path", log); got != 1 {
		t.Fatalf("truncations = %v", got)
	}
	if !strings.Contains(a.logs.String(), "tailed file truncated") {
		t.Fatal("no warning about the truncation")
	}
}

func TestTailResumesAfterARestartWithoutLossOrRepeats(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	appendFile(t, log, "1\n2\n")
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := tailConfig(dir, up.srv.Addr(), log)
	a := startAgent(t, cfg)
	waitLines(t, up, "1", "2")
	appendFile(t, log, "3\n4-part")
	waitLines(t, up, "1", "2", "3")
	a.stopped(t)

	appendFile(t, log, "ial\n5\n")
	startAgent(t, cfg)
	waitLines(t, up, "1", "2", "3", "4-partial", "5")
	appendFile(t, log, "6\n")
	waitLines(t, up, "1", "2", "3", "4-partial", "5", "6")
}

// TestTailRereadsAFileWhosePositionIsDamaged: a crash leaves the old
// position or the new one (TestTailCrashAtEveryFileOperation), but one
// damaged otherwise (a bad disk, an edit) is not trusted: the file is
// read from its start, its lines queued again rather than lost, with a
// warning that says so.
func TestTailRereadsAFileWhosePositionIsDamaged(t *testing.T) {
	log, up, clk, a := startRotatingTail(t)
	a.stopped(t)

	if err := os.WriteFile(a.tails[0].posPath, []byte(`{"path":`), 0o644); err != nil {
		t.Fatal(err)
	}
	appendFile(t, log, "a2\n")
	b := startAgentClock(t, rotatingTailConfig(log, up), &pollClock{interval: clk.interval})
	waitLines(t, up, "a1", "a1", "a2")
	if lines := b.logs.Lines("level=WARN", "unreadable tail position; reading the file from its start"); len(lines) != 1 {
		t.Fatalf("no warning about the damaged position:\n%s", b.logs.String())
	}
}

func TestTailFinishesAFileRotatedWhileStopped(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	appendFile(t, log, "old1\n")
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := tailConfig(dir, up.srv.Addr(), log)
	a := startAgent(t, cfg)
	waitLines(t, up, "old1")
	a.stopped(t)

	appendFile(t, log, "old2\n")
	if err := os.Rename(log, log+".1"); err != nil {
		t.Fatal(err)
	}
	appendFile(t, log, "new1\n")
	b := startAgent(t, cfg)
	waitLines(t, up, "old1", "old2", "new1")
	if !strings.Contains(b.logs.String(), "resuming rotated file") {
		t.Fatalf("no note of the rotated file: %s", b.logs.String())
	}
}

// TestTailResumesTheFileItChecked: the log is rotated just as the agent
// starts, after it checked the path against its saved position and
// before it opened it. The saved offset applies to the file it checked,
// which is finished; the new file is read once, from its start.
func TestTailResumesTheFileItChecked(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	appendFile(t, log, "old1\nold2\n")
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := tailConfig(dir, up.srv.Addr(), log)
	a := startAgent(t, cfg)
	waitLines(t, up, "old1", "old2")
	a.stopped(t)

	appendFile(t, log, "old3\n")
	rotate := sync.OnceFunc(func() {
		if err := os.Rename(log, log+".1"); err != nil {
			t.Error(err)
		}
		appendFile(t, log, "new1\n")
	})
	startAgentSetup(t, cfg, nil, nil, func(a *Agent) { a.tails[0].opening = func(string) { rotate() } }, nil)
	waitLines(t, up, "old1", "old2", "old3", "new1")
	appendFile(t, log, "new2\n")
	waitLines(t, up, "old1", "old2", "old3", "new1", "new2")
}

// TestTailFindsARotatedFileRenamedAgainAsItLooks: the log was rotated
// while the agent was down, and is rotated again (app.log.1 to .2) as the
// agent looks for the old file beside the path, between listing the
// directory and opening the file. It is found under its new name and
// finished, not given up as lost.
func TestTailFindsARotatedFileRenamedAgainAsItLooks(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	appendFile(t, log, "old1\nold2\n")
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := tailConfig(dir, up.srv.Addr(), log)
	a := startAgent(t, cfg)
	waitLines(t, up, "old1", "old2")
	a.stopped(t)

	appendFile(t, log, "old3\n")
	if err := os.Rename(log, log+".1"); err != nil {
		t.Fatal(err)
	}
	appendFile(t, log, "new1\n")
	shift := sync.OnceFunc(func() {
		if err := os.Rename(log+".1", log+".2"); err != nil {
			t.Error(err)
		}
	})
	startAgentSetup(t, cfg, nil, nil, func(a *Agent) {
		a.tails[0].opening = func(path string) {
			if path == log+".1" {
				shift()
			}
		}
	}, nil)
	testkit.WaitFor(t, "the tailer to reach the file at the path", func() bool { return slices.Contains(messagesOf(t, up), "new1") })
	if got, want := messagesOf(t, up), []string{"old1", "old2", "old3", "new1"}; !slices.Equal(got, want) {
		t.Fatalf("upstream has %q, want %q", got, want)
	}
}

func TestTailSplitsLinesOverMaxMessageBytes(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := tailConfig(dir, up.srv.Addr(), log)
	cfg.MaxMessageBytes = 10
	a := startAgent(t, cfg)
	appendFile(t, log, "short\n"+strings.Repeat("x", 25)+"\n")
	waitLines(t, up, "short", strings.Repeat("x", 10), strings.Repeat("x", 10), "xxxxx")
	// A partial line past the limit is split before its newline comes.
	appendFile(t, log, strings.Repeat("y", 12))
	waitLines(t, up, "short", strings.Repeat("x", 10), strings.Repeat("x", 10), "xxxxx", strings.Repeat("y", 10))
	appendFile(t, log, "\n")
	waitLines(t, up, "short", strings.Repeat("x", 10), strings.Repeat("x", 10), "xxxxx", strings.Repeat("y", 10), "yy")
	if got := gather(t, a, "freeway_agent_tail_lines_split_total", "path", log); got != 2 {
		t.Fatalf("split lines = %v", got)
	}
	// Counted once the queue took them: the shipper may send them first.
	testkit.WaitFor(t, "3 lines counted", func() bool { return gather(t, a, "freeway_agent_tail_lines_total", "path", log) == 3 })
}

// TestTailSplitsACRLFLineAtTheLimitOnlyOnce: a line of max_message_bytes
// ended by CR LF is one entry, also when the tailer reads its CR before
// its LF: the CR is part of the line end, not a second piece.
func TestTailSplitsACRLFLineAtTheLimitOnlyOnce(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := tailConfig(dir, up.srv.Addr(), log)
	cfg.MaxMessageBytes = 10
	cfg.TailPollInterval = config.Duration(3 * time.Millisecond) // testConfig's retry waits are 1ms-20ms
	clk := &pollClock{interval: cfg.TailPollInterval.D()}
	startAgentClock(t, cfg, clk)
	appendFile(t, log, strings.Repeat("x", 10)+"\r")
	polls := clk.polls.Load()
	testkit.WaitFor(t, "the tailer to read the CR", func() bool { return clk.polls.Load() >= polls+3 })
	appendFile(t, log, "\nnext\n")
	waitLines(t, up, strings.Repeat("x", 10), "next")
}

func TestTailWaitsWhileTheQueueIsFull(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	addr := deadAddr(t)
	cfg := tailConfig(dir, addr, log)
	cfg.MaxQueueBytes = 2 << 10
	cfg.SegmentBytes = 4 << 10
	cfg.BatchEntries = 8
	var want []string
	var sb strings.Builder
	for i := range 500 {
		want = append(want, fmt.Sprintf("line %03d", i))
		fmt.Fprintf(&sb, "line %03d\n", i)
	}
	appendFile(t, log, sb.String())
	a := startAgent(t, cfg)
	testkit.WaitFor(t, "the queue to fill", func() bool { return a.q.Stats().Bytes > 1<<10 })
	if st := a.q.Stats(); st.Bytes > 2<<10 {
		t.Fatalf("queue holds %d bytes over its 2KiB bound", st.Bytes)
	}
	up := startUpstream(t, addr, nil)
	waitLines(t, up, want...)
}

// TestTailRereadsAFileRewrittenWhileStopped: a file truncated and written
// again past the saved offset while the agent is down (copytruncate during
// an upgrade) keeps its identity; the agent notices that its first bytes
// changed and reads it from its start, rather than from the middle of a
// line of other content.
func TestTailRereadsAFileRewrittenWhileStopped(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	appendFile(t, log, "old1\nold2\n")
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := tailConfig(dir, up.srv.Addr(), log)
	a := startAgent(t, cfg)
	waitLines(t, up, "old1", "old2")
	a.stopped(t)

	if err := os.Truncate(log, 0); err != nil {
		t.Fatal(err)
	}
	appendFile(t, log, "new line 1\nnew line 2\n")
	b := startAgent(t, cfg)
	waitLines(t, up, "old1", "old2", "new line 1", "new line 2")
	if got := gather(t, b, "freeway_agent_tail_truncations_total", "path", log); got != 1 {
		t.Fatalf("truncations = %v", got)
	}
}

// TestTailReadsARotatedFileUntilTheAppReopensItsLog: logrotate's default
// renames the log, creates an empty one and only then signals the app,
// which writes to the renamed file until it reopens its log. Those lines
// are read before the agent moves on to the new file.
func TestTailReadsARotatedFileUntilTheAppReopensItsLog(t *testing.T) {
	log, up, clk, a := startRotatingTail(t)

	app, err := os.OpenFile(log, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	if err := os.Rename(log, log+".1"); err != nil {
		t.Fatal(err)
	}
	appendFile(t, log, "")
	// Polls that began after the rename and create have seen them.
	polls := clk.polls.Load()
	testkit.WaitFor(t, "the tailer to poll the rotated file", func() bool { return clk.polls.Load() >= polls+3 })
	if _, err := app.WriteString("a2\n"); err != nil {
		t.Fatal(err)
	}
	waitLines(t, up, "a1", "a2")

	// The app reopens its log; the old file stays idle past the wait.
	appendFile(t, log, "b1\n")
	testkit.WaitFor(t, "the tailer to follow the new file", func() bool {
		clk.skew.Add(int64(time.Hour))
		return up.count(t) >= 3
	})
	waitLines(t, up, "a1", "a2", "b1")
	if got := gather(t, a, "freeway_agent_tail_rotations_total", "path", log); got != 1 {
		t.Fatalf("rotations = %v", got)
	}
}

// TestTailReadsEveryFileRotatedInWhileItWaits: an app rotating its own log
// (by size, at a high rate) may rename the new file away again while the
// agent still waits for the old one to go idle. The new file is held open
// from when the agent first sees it, and read in its turn.
func TestTailReadsEveryFileRotatedInWhileItWaits(t *testing.T) {
	log, up, clk, _ := startRotatingTail(t)
	rotateTwice(t, log, clk)
	appendFile(t, log, "c1\n")
	testkit.WaitFor(t, "the tailer to follow the new files", func() bool {
		clk.skew.Add(int64(time.Hour))
		return up.count(t) >= 3
	})
	waitLines(t, up, "a1", "b1", "c1")
}

// TestTailReadsEveryFileRotatedInWhileTheQueueIsFull: while the queue is
// full (an upstream outage), the tailer waits to queue the lines of its
// file, and the log may be rotated more than once meanwhile. Every file is
// read once the queue drains.
func TestTailReadsEveryFileRotatedInWhileTheQueueIsFull(t *testing.T) {
	log, up, clk, _, want, unblock := startFullQueueTail(t)

	if err := os.Rename(log, log+".1"); err != nil {
		t.Fatal(err)
	}
	appendFile(t, log, "b1\n")
	waits := clk.waits.Load()
	testkit.WaitFor(t, "the tailer to wait for the queue again", func() bool { return clk.waits.Load() >= waits+2 })
	if err := os.Rename(log+".1", log+".2"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(log, log+".1"); err != nil {
		t.Fatal(err)
	}
	appendFile(t, log, "c1\n")
	unblock()
	waitLines(t, up, append(want, "b1", "c1")...)
}

// TestTailReadsEveryFileRotatedInWhileTheQueueIsFullAfterARestart: the
// agent is restarted (an upgrade during an upstream outage) while a full
// queue holds the tailer up and the log was rotated twice meanwhile. The
// file rotated in between, held, is read after a restart too.
func TestTailReadsEveryFileRotatedInWhileTheQueueIsFullAfterARestart(t *testing.T) {
	log, up, clk, a, want, unblock := startFullQueueTail(t)

	if err := os.Rename(log, log+".1"); err != nil {
		t.Fatal(err)
	}
	appendFile(t, log, "b1\n")
	waits := clk.waits.Load()
	testkit.WaitFor(t, "the tailer to wait for the queue again", func() bool { return clk.waits.Load() >= waits+2 })
	a.stopped(t)
	if err := os.Rename(log+".1", log+".2"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(log, log+".1"); err != nil {
		t.Fatal(err)
	}
	appendFile(t, log, "c1\n")
	unblock()
	startAgent(t, fullQueueTailConfig(log, up))
	testkit.WaitFor(t, "the tailer to reach the file at the path", func() bool { return slices.Contains(messagesOf(t, up), "c1") })
	if got, want := messagesOf(t, up), append(want, "b1", "c1"); !slices.Equal(got, want) {
		t.Fatalf("upstream has %q, want %q", got, want)
	}
}

// TestTailTakesCRLFAsALineEnd: a log written with CR LF line ends (a
// Windows-style logger) gives the same entries as one written with LF: the
// CR is part of the line end, not of the message.
func TestTailTakesCRLFAsALineEnd(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	appendFile(t, log, "one\r\ntwo\r")
	up := startUpstream(t, "127.0.0.1:0", nil)
	startAgent(t, tailConfig(dir, up.srv.Addr(), log))
	waitLines(t, up, "one")
	appendFile(t, log, "\n\r\nin\rside\r\n")
	waitLines(t, up, "one", "two", "", "in\rside")
}

// TestTailResumesAfterTheHoleOfATruncation: a writer without O_APPEND goes
// on at its own offset after a copytruncate, leaving a hole of zeros in
// front of its lines. The agent, stopped meanwhile, resumes at its saved
// offset rather than sending the hole as a line.
func TestTailResumesAfterTheHoleOfATruncation(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	appendFile(t, log, "old1\nold2\n")
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := tailConfig(dir, up.srv.Addr(), log)
	a := startAgent(t, cfg)
	waitLines(t, up, "old1", "old2")
	a.stopped(t)

	app, err := os.OpenFile(log, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	if err := os.Truncate(log, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := app.WriteAt([]byte("new1\nnew2\n"), int64(len("old1\nold2\n"))); err != nil {
		t.Fatal(err)
	}
	startAgent(t, cfg)
	waitLines(t, up, "old1", "old2", "new1", "new2")
}

// TestTailRereadsAFileRewrittenWhileTheQueueIsFull: a copytruncate while
// the tailer waits for room in a full queue (an upstream outage), and the
// app writes past the tailer's offset before it reads again. The agent
// notices that the file's start changed and reads it from its start.
func TestTailRereadsAFileRewrittenWhileTheQueueIsFull(t *testing.T) {
	log, up, _, a, want, unblock := startFullQueueTail(t)
	var refill strings.Builder

	if err := os.Truncate(log, 0); err != nil {
		t.Fatal(err)
	}
	for i := range 250 {
		want = append(want, fmt.Sprintf("b%03d", i))
		fmt.Fprintf(&refill, "b%03d\n", i)
	}
	appendFile(t, log, refill.String())
	unblock()
	waitLines(t, up, want...)
	if got := gather(t, a, "freeway_agent_tail_truncations_total", "path", log); got != 1 {
		t.Fatalf("truncations = %v", got)
	}
}

// TestTailReadsAHeldFileOnceThePathIsGone: a file rotated in, then renamed
// away in turn with no file created after it yet (an app that creates its
// log at its next line), is read once the file before it is idle, not
// left until a new file appears (and lost, should the agent stop first).
func TestTailReadsAHeldFileOnceThePathIsGone(t *testing.T) {
	log, up, clk, _ := startRotatingTail(t)
	rotateTwice(t, log, clk)
	testkit.WaitFor(t, "the tailer to follow the held file", func() bool {
		clk.skew.Add(int64(time.Hour))
		return up.count(t) >= 2
	})
	waitLines(t, up, "a1", "b1")
}

// TestTailReadsAHeldFileAfterARestart: the agent stops (an upgrade, a
// crash) while it reads a rotated file and holds the one rotated in after
// it, and that one is renamed away again before the agent starts. It is
// read after the rotated file, not skipped for the file now at the path.
func TestTailReadsAHeldFileAfterARestart(t *testing.T) {
	log, up, clk, a := startRotatingTail(t)
	rotateTwice(t, log, clk) // reading app.log.2 (a1), holding app.log.1 (b1)
	a.stopped(t)

	appendFile(t, log, "c1\n")
	clk2 := &pollClock{interval: clk.interval}
	startAgentClock(t, rotatingTailConfig(log, up), clk2)
	testkit.WaitFor(t, "the tailer to reach the file at the path", func() bool {
		clk2.skew.Add(int64(time.Hour))
		return slices.Contains(messagesOf(t, up), "c1")
	})
	if got, want := messagesOf(t, up), []string{"a1", "b1", "c1"}; !slices.Equal(got, want) {
		t.Fatalf("upstream has %q, want %q", got, want)
	}
}

// TestTailHoldsABoundedNumberOfRotatedFiles: an app that keeps writing
// to its renamed log (it never reopens it) holds the tailer on that file,
// while logrotate goes on renaming the path and creating a new file. The
// files rotated in are held open up to a bound, with a warning, not one
// descriptor more per rotation until the process has none left.
func TestTailHoldsABoundedNumberOfRotatedFiles(t *testing.T) {
	if _, err := os.ReadDir("/proc/self/fd"); err != nil {
		t.Skip("no /proc/self/fd to count open files:", err)
	}
	log, _, clk, a := startRotatingTail(t) // the rotated file never idle long enough
	for i := range maxHeld + 5 {
		if err := os.Rename(log, fmt.Sprintf("%s.%d", log, i)); err != nil {
			t.Fatal(err)
		}
		appendFile(t, log, "")
		polls := clk.polls.Load()
		testkit.WaitFor(t, "the tailer to poll the rotated file", func() bool { return clk.polls.Load() >= polls+3 })
	}
	// The file read and the held ones.
	if n := openFiles(t, log); n > maxHeld+1 {
		t.Fatalf("%d files of the tailed log open, want at most %d", n, maxHeld+1)
	}
	if lines := a.logs.Lines("level=WARN", "not holding more"); len(lines) == 0 {
		t.Fatalf("no warning about the files not held:\n%s", a.logs.String())
	}
}

// openFiles counts the process's open files whose path starts with prefix.
func openFiles(t testing.TB, prefix string) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if p, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.HasPrefix(p, prefix) {
			n++
		}
	}
	return n
}

// startRotatingTail starts an agent tailing app.log (holding "a1", read)
// on a poll clock, with a tail_rotate_wait that passes only when the test
// moves the clock.
func startRotatingTail(t *testing.T) (string, *fakeUpstream, *pollClock, *agent) {
	t.Helper()
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	appendFile(t, log, "a1\n")
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := rotatingTailConfig(log, up)
	clk := &pollClock{interval: cfg.TailPollInterval.D()}
	a := startAgentClock(t, cfg, clk)
	waitLines(t, up, "a1")
	return log, up, clk, a
}

// rotatingTailConfig is startRotatingTail's configuration.
func rotatingTailConfig(log string, up *fakeUpstream) Config {
	cfg := tailConfig(filepath.Dir(log), up.srv.Addr(), log)
	cfg.TailPollInterval = config.Duration(3 * time.Millisecond) // testConfig's retry waits are 1ms-20ms
	cfg.TailRotateWait = config.Duration(time.Hour)
	return cfg
}

// startFullQueueTail starts an agent tailing app.log, written with 250
// lines (want; past the 1KiB fingerprinted), on a poll clock, whose
// upstream holds its first call until unblock: once it returns, the queue
// is full and the tailer waits for room in it.
func startFullQueueTail(t *testing.T) (log string, up *fakeUpstream, clk *pollClock, a *agent, want []string, unblock func()) {
	t.Helper()
	dir := t.TempDir()
	log = filepath.Join(dir, "app.log")
	up = startUpstream(t, "127.0.0.1:0", nil)
	release := make(chan struct{})
	unblock = sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock)
	up.gate = func(*scribethrift.Batch) { <-release }
	cfg := fullQueueTailConfig(log, up)
	var sb strings.Builder
	for i := range 250 {
		want = append(want, fmt.Sprintf("a%03d", i))
		fmt.Fprintf(&sb, "a%03d\n", i)
	}
	appendFile(t, log, sb.String())
	clk = &pollClock{interval: cfg.TailPollInterval.D()}
	a = startAgentClock(t, cfg, clk)
	testkit.WaitFor(t, "the queue to fill", func() bool { return up.active.Load() == 1 && a.q.Stats().Bytes > 1<<10 })
	// The tailer alone waits on the clock now: for room in the queue.
	waits := clk.waits.Load()
	testkit.WaitFor(t, "the tailer to wait for the queue", func() bool { return clk.waits.Load() >= waits+2 })
	return log, up, clk, a, want, unblock
}

// fullQueueTailConfig is startFullQueueTail's configuration.
func fullQueueTailConfig(log string, up *fakeUpstream) Config {
	cfg := tailConfig(filepath.Dir(log), up.srv.Addr(), log)
	cfg.MaxQueueBytes = 2 << 10
	cfg.SegmentBytes = 4 << 10
	cfg.BatchEntries = 8
	cfg.UpstreamTimeout = config.Duration(time.Hour) // the shipper waits in its call, not on the clock
	cfg.TailPollInterval = config.Duration(3 * time.Millisecond)
	return cfg
}

// rotateTwice rotates app.log ("a1") to app.log.1, writes "b1" to a new
// app.log, waits for the tailer to poll it (held open while the rotated
// file is read), then rotates both again: app.log.1 to .2, app.log to .1.
func rotateTwice(t *testing.T, log string, clk *pollClock) {
	t.Helper()
	if err := os.Rename(log, log+".1"); err != nil {
		t.Fatal(err)
	}
	appendFile(t, log, "b1\n")
	polls := clk.polls.Load()
	testkit.WaitFor(t, "the tailer to poll the rotated file", func() bool { return clk.polls.Load() >= polls+3 })
	if err := os.Rename(log+".1", log+".2"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(log, log+".1"); err != nil {
		t.Fatal(err)
	}
}

// TestTailCountsASplitLineOnceAcrossARestart: a partial line past
// max_message_bytes had a piece split off (counted) when the agent
// stopped; after the restart its rest, still past the limit, is split
// again but it is the same line: counted once.
func TestTailCountsASplitLineOnceAcrossARestart(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := tailConfig(dir, up.srv.Addr(), log)
	cfg.MaxMessageBytes = 10
	a := startAgent(t, cfg)
	appendFile(t, log, strings.Repeat("y", 12))
	waitLines(t, up, strings.Repeat("y", 10))
	if got := gather(t, a, "freeway_agent_tail_lines_split_total", "path", log); got != 1 {
		t.Fatalf("split lines = %v", got)
	}
	a.stopped(t)

	appendFile(t, log, strings.Repeat("y", 12)+"\n")
	b := startAgent(t, cfg)
	waitLines(t, up, strings.Repeat("y", 10), strings.Repeat("y", 10), "yyyy")
	if got := gather(t, b, "freeway_agent_tail_lines_split_total", "path", log); got != 0 {
		t.Fatalf("split lines after the restart = %v, want 0 (the line was counted before it)", got)
	}
}

// TestTailRereadsAHeldFileRewrittenWhileStopped: the agent stops while it
// reads a rotated file and holds the one the path names, which is then
// truncated and written again (copytruncate) before the agent starts.
// The held file is still the one the path names: it is read from its
// start, and the log says so (and that the lines it had before, only in
// the copy, are lost) rather than that it is not read.
func TestTailRereadsAHeldFileRewrittenWhileStopped(t *testing.T) {
	log, up, clk, a := startRotatingTail(t)
	if err := os.Rename(log, log+".1"); err != nil {
		t.Fatal(err)
	}
	// Created with its line, so that the position fingerprints it.
	appendFile(t, log+".new", "b1\n")
	if err := os.Rename(log+".new", log); err != nil {
		t.Fatal(err)
	}
	polls := clk.polls.Load()
	testkit.WaitFor(t, "the tailer to hold the new file", func() bool { return clk.polls.Load() >= polls+3 })
	a.stopped(t)

	appendFile(t, log+".0", "b1\n") // copytruncate: the copy, not read
	if err := os.Truncate(log, 0); err != nil {
		t.Fatal(err)
	}
	appendFile(t, log, "c1\n")
	clk2 := &pollClock{interval: clk.interval}
	b := startAgentClock(t, rotatingTailConfig(log, up), clk2)
	testkit.WaitFor(t, "the tailer to reach the file at the path", func() bool {
		clk2.skew.Add(int64(time.Hour))
		return slices.Contains(messagesOf(t, up), "c1")
	})
	if got, want := messagesOf(t, up), []string{"a1", "c1"}; !slices.Equal(got, want) {
		t.Fatalf("upstream has %q, want %q", got, want)
	}
	if lines := b.logs.Lines("its lines are lost"); len(lines) > 0 {
		t.Fatalf("the file read is said to be lost:\n%s", strings.Join(lines, "\n"))
	}
	if lines := b.logs.Lines("level=WARN", "rewritten", "from its start"); len(lines) != 1 {
		t.Fatalf("no warning that the held file is read from its start:\n%s", b.logs.String())
	}
	if got := gather(t, b, "freeway_agent_tail_truncations_total", "path", log); got != 1 {
		t.Fatalf("truncations = %v", got)
	}
}

// symlinkedLog makes dir/app.log a symlink to dir/logs/current.log (an
// app writing under its own directory, or a runtime's log links), with
// "old1" written, and returns both paths.
func symlinkedLog(t *testing.T) (link, target string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	link, target = filepath.Join(dir, "app.log"), filepath.Join(dir, "logs", "current.log")
	appendFile(t, target, "old1\n")
	if err := os.Symlink(filepath.Join("logs", "current.log"), link); err != nil {
		t.Fatal(err)
	}
	return link, target
}

// TestTailFinishesASymlinkedFileRotatedWhileStopped: the tailed path is a
// symlink, and the file it names is rotated (renamed beside itself) while
// the agent is down. The rotated file is found beside the file, not only
// beside the symlink, and finished.
func TestTailFinishesASymlinkedFileRotatedWhileStopped(t *testing.T) {
	link, target := symlinkedLog(t)
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := tailConfig(filepath.Dir(link), up.srv.Addr(), link)
	a := startAgent(t, cfg)
	waitLines(t, up, "old1")
	a.stopped(t)

	appendFile(t, target, "old2\n")
	if err := os.Rename(target, target+".1"); err != nil {
		t.Fatal(err)
	}
	appendFile(t, target, "new1\n")
	b := startAgent(t, cfg)
	testkit.WaitFor(t, "the tailer to reach the file at the path", func() bool { return slices.Contains(messagesOf(t, up), "new1") })
	if got, want := messagesOf(t, up), []string{"old1", "old2", "new1"}; !slices.Equal(got, want) {
		t.Fatalf("upstream has %q, want %q\n%s", got, want, b.logs.String())
	}
}

// TestTailReadsASymlinkedHeldFileAfterARestart: as
// TestTailReadsAHeldFileAfterARestart, the path a symlink: the held file,
// renamed away while the agent is down, is found beside the file the
// symlink named.
func TestTailReadsASymlinkedHeldFileAfterARestart(t *testing.T) {
	link, target := symlinkedLog(t)
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := rotatingTailConfig(link, up)
	clk := &pollClock{interval: cfg.TailPollInterval.D()}
	a := startAgentClock(t, cfg, clk)
	waitLines(t, up, "old1")
	if err := os.Rename(target, target+".1"); err != nil {
		t.Fatal(err)
	}
	appendFile(t, target, "b1\n")
	polls := clk.polls.Load()
	testkit.WaitFor(t, "the tailer to hold the new file", func() bool { return clk.polls.Load() >= polls+3 })
	a.stopped(t)

	if err := os.Rename(target+".1", target+".2"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(target, target+".1"); err != nil {
		t.Fatal(err)
	}
	appendFile(t, target, "c1\n")
	clk2 := &pollClock{interval: clk.interval}
	b := startAgentClock(t, cfg, clk2)
	testkit.WaitFor(t, "the tailer to reach the file at the path", func() bool {
		clk2.skew.Add(int64(time.Hour))
		return slices.Contains(messagesOf(t, up), "c1")
	})
	if got, want := messagesOf(t, up), []string{"old1", "b1", "c1"}; !slices.Equal(got, want) {
		t.Fatalf("upstream has %q, want %q\n%s", got, want, b.logs.String())
	}
}

// TestTailFinishesASymlinkedFileSwitchedAwayWhileStopped: the tailed path
// is a symlink that the app points at a file in a new directory each day
// (the old file stays where it is), and it is switched while the agent is
// down. The old file is found where it was read, saved with the position,
// and finished.
func TestTailFinishesASymlinkedFileSwitchedAwayWhileStopped(t *testing.T) {
	link, target := symlinkedLog(t)
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := tailConfig(filepath.Dir(link), up.srv.Addr(), link)
	a := startAgent(t, cfg)
	waitLines(t, up, "old1")
	a.stopped(t)

	appendFile(t, target, "old2\n")
	next := filepath.Join(filepath.Dir(link), "logs-next", "current.log")
	if err := os.Mkdir(filepath.Dir(next), 0o755); err != nil {
		t.Fatal(err)
	}
	appendFile(t, next, "new1\n")
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(next, link); err != nil {
		t.Fatal(err)
	}
	b := startAgent(t, cfg)
	testkit.WaitFor(t, "the tailer to reach the file at the path", func() bool { return slices.Contains(messagesOf(t, up), "new1") })
	if got, want := messagesOf(t, up), []string{"old1", "old2", "new1"}; !slices.Equal(got, want) {
		t.Fatalf("upstream has %q, want %q\n%s", got, want, b.logs.String())
	}
}

// copytruncate does what logrotate's copytruncate does to log: copies it
// to log.1, then truncates it.
func copytruncate(t *testing.T, log string) {
	t.Helper()
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(log+".1", b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(log, 0); err != nil {
		t.Fatal(err)
	}
}

// TestTailFinishesTheCopyOfAFileCopytruncatedWhileStopped: the agent is
// down (an upgrade) while lines are written and logrotate's copytruncate
// runs. The lines it had not read are only in the copy: it finds the copy
// beside the file by its first bytes, reads it from the saved offset, and
// then the file from its start.
func TestTailFinishesTheCopyOfAFileCopytruncatedWhileStopped(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	var want []string
	var sb strings.Builder
	for i := range 150 { // past the 1KiB fingerprinted
		want = append(want, fmt.Sprintf("old %03d", i))
		fmt.Fprintf(&sb, "old %03d\n", i)
	}
	appendFile(t, log, sb.String())
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := tailConfig(dir, up.srv.Addr(), log)
	a := startAgent(t, cfg)
	waitLines(t, up, want...)
	a.stopped(t)

	appendFile(t, log, "late1\nlate2\n")
	copytruncate(t, log)
	appendFile(t, log, "new1\n")
	b := startAgent(t, cfg)
	testkit.WaitFor(t, "the tailer to reach the file at the path", func() bool { return slices.Contains(messagesOf(t, up), "new1") })
	if got, want := messagesOf(t, up), append(want, "late1", "late2", "new1"); !slices.Equal(got, want) {
		t.Fatalf("upstream ends with %q, want %q\n%s", got[max(0, len(got)-4):], want[len(want)-4:], b.logs.String())
	}
	if got := gather(t, b, "freeway_agent_tail_truncations_total", "path", log); got != 1 {
		t.Fatalf("truncations = %v", got)
	}
}

// TestTailFinishesTheCopyOfAFileCopytruncatedWhileTheQueueIsFull: while a
// full queue (an upstream outage) holds the tailer up, lines are written
// that it has not read, and logrotate's copytruncate runs. They are only
// in the copy, which it reads to its end before the file.
func TestTailFinishesTheCopyOfAFileCopytruncatedWhileTheQueueIsFull(t *testing.T) {
	log, up, _, a, want, unblock := startFullQueueTail(t)

	appendFile(t, log, "late1\nlate2\n")
	copytruncate(t, log)
	appendFile(t, log, "b1\n")
	unblock()
	testkit.WaitFor(t, "the tailer to reach the file at the path", func() bool { return slices.Contains(messagesOf(t, up), "b1") })
	if got, want := messagesOf(t, up), append(want, "late1", "late2", "b1"); !slices.Equal(got, want) {
		t.Fatalf("upstream ends with %q, want %q\n%s", got[max(0, len(got)-4):], want[len(want)-4:], a.logs.String())
	}
	if got := gather(t, a, "freeway_agent_tail_truncations_total", "path", log); got != 1 {
		t.Fatalf("truncations = %v", got)
	}
}

// holeWriter opens log as an app without O_APPEND does (a shell's >), at
// its end: after a truncation it goes on writing at its own offset,
// leaving a hole of zeros in front.
func holeWriter(t *testing.T, log string) *os.File {
	t.Helper()
	app, err := os.OpenFile(log, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	if _, err := app.Seek(0, io.SeekEnd); err != nil {
		t.Fatal(err)
	}
	return app
}

func write(t *testing.T, f *os.File, s string) {
	t.Helper()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

// waitNew1 waits for an entry that ends with "new1" and returns the
// entries upstream.
func waitNew1(t *testing.T, up *fakeUpstream) []string {
	t.Helper()
	testkit.WaitFor(t, "the tailer to read the line after the truncation", func() bool {
		return slices.ContainsFunc(messagesOf(t, up), func(m string) bool { return strings.HasSuffix(m, "new1") })
	})
	return messagesOf(t, up)
}

// TestTailSkipsTheHoleOfATruncationWhileTheQueueIsFull: while a full
// queue holds the tailer up, an app writing without O_APPEND writes a
// line the tailer has not read, its log is truncated, and it writes on
// at its own offset. The hole in front of its line is no line: the line
// after it is sent as it is, not behind the hole's zeros.
func TestTailSkipsTheHoleOfATruncationWhileTheQueueIsFull(t *testing.T) {
	log, up, _, a, want, unblock := startFullQueueTail(t)
	app := holeWriter(t, log)

	write(t, app, "late1\n") // truncated unread, with no copy: lost
	if err := os.Truncate(log, 0); err != nil {
		t.Fatal(err)
	}
	write(t, app, "new1\n")
	unblock()
	if got, want := waitNew1(t, up), append(want, "new1"); !slices.Equal(got, want) {
		t.Fatalf("upstream ends with %q, want %q", got[max(0, len(got)-2):], want[len(want)-2:])
	}
	if got := gather(t, a, "freeway_agent_tail_truncations_total", "path", log); got != 1 {
		t.Fatalf("truncations = %v", got)
	}
}

// TestTailReadsTheCopyOfAFileWithAHoleWhileTheQueueIsFull: as above, with
// logrotate's copytruncate: the line not read is in the copy, read before
// the line after the hole.
func TestTailReadsTheCopyOfAFileWithAHoleWhileTheQueueIsFull(t *testing.T) {
	log, up, _, a, want, unblock := startFullQueueTail(t)
	app := holeWriter(t, log)

	write(t, app, "late1\n")
	copytruncate(t, log)
	write(t, app, "new1\n")
	unblock()
	if got, want := waitNew1(t, up), append(want, "late1", "new1"); !slices.Equal(got, want) {
		t.Fatalf("upstream ends with %q, want %q", got[max(0, len(got)-3):], want[len(want)-3:])
	}
	if got := gather(t, a, "freeway_agent_tail_truncations_total", "path", log); got != 1 {
		t.Fatalf("truncations = %v", got)
	}
}

// TestTailReadsTheCopyOfAFileWithAHoleAfterARestart: the agent is down
// while an app writing without O_APPEND writes a line and its log is
// copytruncated; it writes on at its own offset. The line is read from
// the copy, then the line after the hole, not behind the hole's zeros.
func TestTailReadsTheCopyOfAFileWithAHoleAfterARestart(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "app.log")
	var want []string
	var sb strings.Builder
	for i := range 150 { // past the 1KiB fingerprinted
		want = append(want, fmt.Sprintf("old %03d", i))
		fmt.Fprintf(&sb, "old %03d\n", i)
	}
	appendFile(t, log, sb.String())
	app := holeWriter(t, log)
	up := startUpstream(t, "127.0.0.1:0", nil)
	cfg := tailConfig(dir, up.srv.Addr(), log)
	a := startAgent(t, cfg)
	waitLines(t, up, want...)
	a.stopped(t)

	write(t, app, "late1\n")
	copytruncate(t, log)
	write(t, app, "new1\n")
	b := startAgent(t, cfg)
	if got, want := waitNew1(t, up), append(want, "late1", "new1"); !slices.Equal(got, want) {
		t.Fatalf("upstream ends with %q, want %q\n%s", got[max(0, len(got)-3):], want[len(want)-3:], b.logs.String())
	}
	if got := gather(t, b, "freeway_agent_tail_truncations_total", "path", log); got != 1 {
		t.Fatalf("truncations = %v", got)
	}
}

// TestDataFromPassesAHole: dataFrom finds the first byte after a hole of
// zeros, sparse or written, and the end of a file that is all hole.
func TestDataFromPassesAHole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "holed")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const hole = 8 << 20
	if err := f.Truncate(hole); err != nil { // sparse where the file system can
		t.Fatal(err)
	}
	for _, at := range []int64{0, 5, hole - 1} {
		if end, err := dataFrom(f, at); err != nil || end != hole {
			t.Fatalf("dataFrom(%d) in a file all hole = %d, %v; want %d", at, end, err, hole)
		}
	}
	if _, err := f.WriteAt([]byte("\x00\x00line\n"), hole); err != nil {
		t.Fatal(err)
	}
	if end, err := dataFrom(f, 3); err != nil || end != hole+2 {
		t.Fatalf("dataFrom(3) = %d, %v; want %d", end, err, hole+2)
	}
	if end, err := dataFrom(f, hole+4); err != nil || end != hole+4 {
		t.Fatalf("dataFrom at data = %d, %v; want %d", end, err, hole+4)
	}
}
