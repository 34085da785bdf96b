//go:build linux

package scribe

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/freeway-dev/freeway/internal/diskqueue"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// crash modes: what a crash leaves of the agent's files, and of the logs
// it tails.
const (
	// the process: every byte written and every name as they are
	killed = "killed"
	// the machine: each of the agent's files' bytes at its last sync,
	// names as its directory's last sync left them; of the logs, what
	// the app wrote in its last step is lost unless the agent synced it
	// (an app does not sync its log; its renames and truncations are
	// kept, as a journal does)
	powered = "powered off"
	// powered off, with some sectors of the agent's files written since
	// their last sync on the disk and some not
	torn = "torn"
)

// tailCrash is a file hook for an agent (queue, tail positions, and the
// syncs of the files it tails) that counts the changes to its files and,
// before the one numbered at, takes what a crash in mode would leave of
// the queue directory (the positions are in it), and cuts the logs as it
// would. It follows files by inode: the queue may write a file under a
// name it had before a rename, and a tailed file is synced under the
// name it was opened with.
type tailCrash struct {
	t      *testing.T
	dir    string
	logDir string
	at     int
	mode   string
	rng    *rand.Rand
	// app is held by the app for each of its steps: the crash comes
	// between two (a log cut in the middle of a line, the app writing on
	// after it, has a line that is no line the app wrote).
	app    sync.Mutex
	tailer *tailer // the agent's: the hook runs on its goroutine, and its open file is the one synced

	mu      sync.Mutex
	n       int               // the changes seen
	crashed chan struct{}     // closed when the state is taken
	before  string            // the change crashed before
	state   map[string][]byte // the files left, by path under dir
	cut     map[string]bool   // the lines the crash took from the logs

	nameIno   map[string]uint64            // every name seen, and its file
	created   map[string]bool              // names about to be created: empty until synced
	fresh     map[uint64]bool              // files created through the hook
	synced    map[uint64][]byte            // a file's bytes at its last sync
	dirNames  map[string]map[string]uint64 // a directory's names at its last sync
	stepStart map[uint64][]byte            // the logs' bytes as the app's last step began
	down      bool                         // a step of the app came after the crash
}

func newTailCrash(t *testing.T, dir, logDir string, at int, mode string) *tailCrash {
	return &tailCrash{t: t, dir: dir, logDir: logDir, at: at, mode: mode, rng: rand.New(rand.NewPCG(uint64(at), 1)), crashed: make(chan struct{}),
		cut: map[string]bool{}, nameIno: map[string]uint64{}, created: map[string]bool{}, fresh: map[uint64]bool{}, synced: map[uint64][]byte{},
		dirNames: map[string]map[string]uint64{}, stepStart: map[uint64][]byte{}}
}

// done reports whether the crash happened (the state is taken).
func (c *tailCrash) done() bool {
	select {
	case <-c.crashed:
		return true
	default:
		return false
	}
}

// wasDown reports whether a step of the app came after the crash (it
// can come before the test sees it).
func (c *tailCrash) wasDown() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.down
}

// step runs one step of the app.
func (c *tailCrash) step(do func()) {
	c.app.Lock()
	defer c.app.Unlock()
	c.mu.Lock()
	c.down = c.down || c.done()
	c.stepStart = map[uint64][]byte{}
	for name, ino := range c.logs() {
		c.stepStart[ino] = c.readLog(name)
	}
	c.mu.Unlock()
	do()
}

// logs returns the logs by name, with their inodes.
func (c *tailCrash) logs() map[string]uint64 { return c.files(c.logDir) }

// files returns the regular files under dir by path (relative to it),
// with their inodes.
func (c *tailCrash) files(dir string) map[string]uint64 {
	files := map[string]uint64{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p) // under dir, walked from it
		files[rel] = idOf(fi).ino
		return nil
	})
	if err != nil {
		c.t.Error(err)
	}
	return files
}

// scan returns the agent's files under dir by path (relative to it),
// with their inodes, and marks those just created.
func (c *tailCrash) scan() map[string]uint64 {
	files := c.files(c.dir)
	maps.Copy(c.nameIno, files)
	for name := range c.created {
		if ino, ok := files[name]; ok {
			c.fresh[ino] = true
			delete(c.synced, ino) // truncated, if it was there
			delete(c.created, name)
		}
	}
	return files
}

// read returns the agent's file at rel under dir.
func (c *tailCrash) read(rel string) []byte { return c.readIn(c.dir, rel) }

// readLog returns the log name.
func (c *tailCrash) readLog(name string) []byte { return c.readIn(c.logDir, name) }

func (c *tailCrash) readIn(dir, name string) []byte {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		c.t.Error(err)
	}
	return b
}

func (c *tailCrash) hook(op diskqueue.FileOp, path string) error {
	rel, err := filepath.Rel(c.dir, path)
	queue := err == nil && !strings.HasPrefix(rel, "..")
	if !queue && filepath.Dir(path) != c.logDir {
		return nil // the queue directory's parent, synced as it is made
	}
	c.mu.Lock()
	crash := c.n == c.at
	c.n++
	c.mu.Unlock()
	if crash {
		c.crash(fmt.Sprintf("%s %s", op, rel))
	}
	if !queue {
		// The logs are read while no step of the app changes them: a
		// rotation between listing a log and reading it would lose it.
		c.app.Lock()
		defer c.app.Unlock()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !queue {
		// A tailed file synced: the one the tailer has open.
		fi, err := c.tailer.f.Stat()
		if err != nil || op != diskqueue.OpSync {
			c.t.Errorf("%s of tailed file %s: %v", op, path, err)
			return nil
		}
		for name, ino := range c.logs() {
			if ino == idOf(fi).ino {
				c.synced[ino] = c.readLog(name)
			}
		}
		return nil
	}
	files := c.scan()
	switch op {
	case diskqueue.OpCreate:
		c.created[rel] = true
	case diskqueue.OpSync:
		ino, ok := c.nameIno[rel]
		if !ok {
			c.t.Errorf("sync of %s, never seen", rel)
			return nil
		}
		for name, i := range files {
			if i == ino {
				c.synced[ino] = c.read(name)
			}
		}
	case diskqueue.OpSyncDir:
		names := map[string]uint64{}
		for name, ino := range files {
			if filepath.Dir(name) == rel {
				names[filepath.Base(name)] = ino
			}
		}
		c.dirNames[rel] = names
	}
	return nil
}

// crash takes the state before the change named before, between two
// steps of the app. The agent waits in its hook meanwhile.
func (c *tailCrash) crash(before string) {
	c.app.Lock()
	defer c.app.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.before = before
	c.state = c.take(c.scan())
	if c.mode != killed {
		c.cutLogs()
	}
	close(c.crashed)
}

// cutLogs takes from each log what a power loss takes: the bytes the app
// wrote in its last step and the agent did not sync, from the start of a
// line on.
func (c *tailCrash) cutLogs() {
	for name, ino := range c.logs() {
		b := c.readLog(name)
		keep := 0
		for _, durable := range [][]byte{c.stepStart[ino], c.synced[ino]} {
			if bytes.HasPrefix(b, durable) {
				keep = max(keep, len(durable))
			}
		}
		if i := bytes.IndexByte(b[keep:], '\n'); keep > 0 && b[keep-1] != '\n' && i >= 0 {
			keep += i + 1 // a line's end is on the same page as its start
		}
		for line := range strings.Lines(string(b[keep:])) {
			c.cut[strings.TrimSuffix(line, "\n")] = true
		}
		if err := os.Truncate(filepath.Join(c.logDir, name), int64(keep)); err != nil {
			c.t.Error(err)
		}
	}
}

// take returns the files a crash in c.mode leaves.
func (c *tailCrash) take(files map[string]uint64) map[string][]byte {
	state := map[string][]byte{}
	if c.mode == killed {
		for name := range files {
			state[name] = c.read(name)
		}
		return state
	}
	current := map[uint64][]byte{}
	for name, ino := range files {
		current[ino] = c.read(name)
	}
	for dir, names := range c.dirNames {
		for base, ino := range names {
			b, ok := c.synced[ino]
			if !ok && !c.fresh[ino] {
				b = current[ino] // synced as it was made (the queue's id), not through the hook
			}
			if now, there := current[ino]; c.mode == torn && there && string(now) != string(b) {
				b = tear(c.rng, b, now)
			}
			state[filepath.Join(dir, base)] = b
		}
	}
	return state
}

// tear is what a power loss can leave of a file synced with old and
// written to now since: each 512-byte sector of either, and either size.
func tear(rng *rand.Rand, old, now []byte) []byte {
	b := make([]byte, len(old))
	if rng.IntN(2) == 0 {
		b = make([]byte, len(now))
	}
	for off := 0; off < len(b); off += 512 {
		src := old
		if rng.IntN(2) == 0 {
			src = now
		}
		for i := off; i < min(off+512, len(b)); i++ {
			if i < len(src) {
				b[i] = src[i]
			}
		}
	}
	return b
}

// TestTailCrashAtEveryFileOperation follows a log an app appends to and
// rotates (by rename, then by copytruncate) with an agent that crashes
// (killed, powered off, or powered off with torn sectors) before one of
// its changes to its files (the queue's and the tail position's), each in
// turn, and another agent started on what the crash left: every line
// written is queued, whole, at least once, and at most one batch of lines
// twice; nothing is logged as an error.
func TestTailCrashAtEveryFileOperation(t *testing.T) {
	modes := []string{killed, powered, torn}
	if testing.Short() {
		modes = modes[:1]
	}
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			seen := map[string]bool{}
			at := 0
			for ; ; at++ {
				before, after := runTailCrash(t, at, mode)
				if after == nil {
					break
				}
				op, file, _ := strings.Cut(before, " ")
				switch {
				case strings.HasPrefix(file, "tail"):
					seen["crash before "+op+" tail"] = true
				case strings.HasPrefix(file, ".."):
					seen["crash before "+op+" log"] = true
				default:
					seen["crash before "+op+" queue"] = true
				}
				for _, msg := range []string{"resuming rotated file", "truncated while stopped; reading its copy"} {
					if len(after.logs.Lines(msg)) > 0 {
						seen["restart "+msg] = true
					}
				}
			}
			// Crashes before the queue's commits, the syncs of the log
			// and each step of the positions' saves, and restarts that finish a file rotated
			// or copytruncated meanwhile.
			for _, want := range []string{"crash before sync queue", "crash before create tail", "crash before sync tail", "crash before rename tail", "crash before syncdir tail", "crash before sync log",
				"restart resuming rotated file", "restart truncated while stopped; reading its copy"} {
				if !seen[want] {
					t.Errorf("no %s; saw %v", want, seen)
				}
			}
			t.Logf("%d crash points", at)
		})
	}
}

// tailWorkload writes lines to logs as an app does, each about 100 bytes
// and numbered, and keeps them in the order written.
type tailWorkload struct {
	t     *testing.T
	lines []string
}

// write appends n lines to path, the last one in two writes (the agent
// may read it in between).
func (w *tailWorkload) write(path string, n int) {
	var sb strings.Builder
	for range n {
		line := fmt.Sprintf("line %03d %s", len(w.lines), strings.Repeat(string(rune('a'+len(w.lines)%26)), 90))
		w.lines = append(w.lines, line)
		sb.WriteString(line + "\n")
	}
	s := sb.String()
	appendFile(w.t, path, s[:len(s)-40])
	appendFile(w.t, path, s[len(s)-40:])
}

// steps are what the app does to log, in turn. The step before the
// copytruncate writes a KiB or more (also after a crash took the lines
// before it): the copy is found only when the agent had read that much
// (see scribe/doc.go).
func (w *tailWorkload) steps(log string) []func() {
	return []func(){
		func() { w.write(log, 14) },
		func() { w.write(log, 6) },
		func() {
			// Rotated by rename: the app writes to the old file until it
			// reopens its log.
			if err := os.Rename(log, log+".1"); err != nil {
				w.t.Fatal(err)
			}
			w.write(log+".1", 3)
			w.write(log, 12)
		},
		func() { w.write(log, 12) },
		func() {
			// Copytruncated (logrotate shifting the older copy first),
			// maybe before the agent read the last lines.
			w.write(log, 3)
			if err := os.Rename(log+".1", log+".2"); err != nil {
				w.t.Fatal(err)
			}
			copytruncate(w.t, log)
			w.write(log, 12)
		},
		func() { w.write(log, 4) },
	}
}

// tailCrashConfig tails log into a queue in dir, upstream unreachable
// (every line queued stays in the queue), a few lines to a batch.
func tailCrashConfig(t *testing.T, dir, log string) Config {
	cfg := tailConfig(dir, deadAddr(t), log)
	cfg.BatchEntries = 4
	cfg.SegmentBytes = 4 << 10
	return cfg
}

// caughtUp reports whether a's tail position is saved at the end of the
// file the path names, or that file is empty (a crash took its lines,
// and a position past them is saved again only with lines): every line
// written is queued.
func caughtUp(a *agent, log string) bool {
	fi, err := os.Stat(log)
	if err != nil || fi.Size() == 0 {
		return err == nil
	}
	b, err := os.ReadFile(a.tails[0].posPath)
	if err != nil {
		return false
	}
	var p position
	if json.Unmarshal(b, &p) != nil {
		return false
	}
	if id := idOf(fi); p.Dev != id.dev || p.Ino != id.ino || p.Offset != fi.Size() || len(p.Held) > 0 {
		return false
	}
	f, err := os.Open(log)
	if err != nil {
		return false
	}
	defer f.Close()
	_, same := sameHead(f, p)
	return same
}

// runTailCrash runs the workload with an agent that crashes in mode
// before its change numbered at, and another started on what the crash
// left (at once, or after the app's next step: at odd), and checks what
// it queued. It returns the change crashed before and the agent started
// after it, nil if there was none (at is past the last change).
func runTailCrash(t *testing.T, at int, mode string) (string, *agent) {
	t.Helper()
	dir := testkit.MemDir(t, "scribe-tailcrash-")
	log := filepath.Join(dir, "logs", "app.log")
	if err := os.Mkdir(filepath.Dir(log), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := tailCrashConfig(t, dir, log)
	sim := newTailCrash(t, cfg.QueueDir, filepath.Dir(log), at, mode)
	a := startAgentSetup(t, cfg, nil, nil, func(a *Agent) { sim.tailer = a.tails[0] }, sim.hook)
	w := &tailWorkload{t: t}
	var b *agent
	restart := func() {
		a.stopped(t)
		if lines := a.logs.Lines("level=ERROR"); len(lines) > 0 {
			t.Fatalf("crash %d (%s before %s): error logged before it:\n%s", at, mode, sim.before, strings.Join(lines, "\n"))
		}
		b = restartAfterCrash(t, sim, cfg)
	}
	steps := w.steps(log)
	for i := 0; i < len(steps); i++ {
		sim.step(steps[i])
		testkit.WaitFor(t, fmt.Sprintf("the lines of step %d queued", i), func() bool {
			if b != nil {
				return caughtUp(b, log)
			}
			return sim.done() || caughtUp(a, log)
		})
		if b == nil && sim.done() {
			if at%2 == 1 && i+1 < len(steps) && !sim.wasDown() {
				// Down while the app goes on: its next step too (one:
				// two, the second a copytruncate, and the agent may
				// not have read the KiB that tells its copy).
				i++
				sim.step(steps[i])
			}
			restart()
			testkit.WaitFor(t, fmt.Sprintf("the lines of step %d queued after the restart", i), func() bool { return caughtUp(b, log) })
		}
	}
	if b == nil {
		a.stopped(t) // a crash as it stops, if any, is one too
		if !sim.done() {
			return "", nil
		}
		restart()
		testkit.WaitFor(t, "the lines queued after the restart", func() bool { return caughtUp(b, log) })
	}
	b.stopped(t)
	if err := checkTailCrash(t, b, w.lines, sim.cut, cfg.BatchEntries); err != nil {
		t.Fatalf("crash %d (%s before %s): %v\nafter the restart:\n%s", at, mode, sim.before, err, b.logs.String())
	}
	return sim.before, b
}

// restartAfterCrash starts an agent on the files sim's crash left.
func restartAfterCrash(t *testing.T, sim *tailCrash, cfg Config) *agent {
	t.Helper()
	cfg.QueueDir += ".after"
	for name, data := range sim.state {
		if name == "LOCK" {
			continue
		}
		p := filepath.Join(cfg.QueueDir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return startAgentSetup(t, cfg, nil, nil, nil, nil)
}

// checkTailCrash reads b's queue through: every line written is queued,
// as it was written, at least once (but those cut from the logs by the
// crash), and at most perBatch lines twice; b logged no error.
func checkTailCrash(t *testing.T, b *agent, lines []string, cut map[string]bool, perBatch int) error {
	if errs := b.logs.Lines("level=ERROR"); len(errs) > 0 {
		return fmt.Errorf("error logged: %s", strings.Join(errs, "\n"))
	}
	q, err := diskqueue.Open(diskqueue.Options{Dir: b.cfg.QueueDir, MaxBytes: 1 << 30, SegmentBytes: int64(b.cfg.SegmentBytes), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer q.Close()
	count := map[string]int{}
	for next := q.Stats().Acked; next < q.Stats().NextSeq; {
		ctx, cancel := context.WithTimeout(context.Background(), testkit.Deadline)
		batch, err := q.Read(ctx, 1<<20, 1000)
		cancel()
		if err != nil {
			return fmt.Errorf("read the queue from %d: %w", next, err)
		}
		for _, e := range batch.Entries {
			count[string(e.Message)]++
		}
		next = batch.End()
	}
	twice := 0
	for _, l := range lines {
		if count[l] == 0 && !cut[l] {
			return fmt.Errorf("line %.8q... lost", l)
		}
		twice += max(count[l]-1, 0)
		delete(count, l)
	}
	for m := range count {
		return fmt.Errorf("queued %.20q..., not a line written (cut, or merged with another)", m)
	}
	if twice > perBatch {
		return fmt.Errorf("%d lines queued twice, more than a batch (%d)", twice, perBatch)
	}
	return nil
}
