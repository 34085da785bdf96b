package scribe

import (
	"context"
	"fmt"
	"os"
	"os/exec"
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

// mountTmpfs mounts a tmpfs of size bytes until the test ends
// (testkit.MountTmpfs: root only, else the test is skipped).
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	return testkit.MountTmpfs(t, fmt.Sprintf("size=%d", size))
}

// The queue directory is on a small tmpfs that fills up while upstream is
// down. Stock-style clients send Log calls and retry each TRY_LATER, as
// stock clients do, and a tailed file grows meanwhile. The agent used to
// exit at the first ENOSPC (and again after every restart), and a call
// answered TRY_LATER could leave complete records behind that were shipped
// as well as the client's retry. Now every call is OK or TRY_LATER, the
// agent keeps running, and once upstream is back (which frees space) Puma
// counts exactly the OK'd entries and the tailed lines, each once.
func TestDiskFullAnswersTryLaterAndLosesOrRepeatsNothing(t *testing.T) {
	mnt := mountTmpfs(t, 384<<10)
	upAddr := deadAddr(t)
	logPath := filepath.Join(t.TempDir(), "app.log")
	cfg := testConfig(filepath.Join(mnt, "queue"), upAddr)
	cfg.SegmentBytes = 32 << 10
	cfg.BatchBytes = 16 << 10
	cfg.MaxMessageBytes = 1 << 10
	cfg.Tail = []TailConfig{{Path: logPath, Category: "tailed"}}
	cfg.RetryMax = config.Duration(5 * time.Millisecond)
	// Uncompressed: these padded lines, compressed, would not fill the disk.
	cfg.QueueCompress = false
	a := startAgent(t, cfg)

	const clients, calls, per = 4, 30, 40
	var (
		mu       sync.Mutex
		accepted []string
		tryLater atomic.Int64
		wg       sync.WaitGroup
	)
	pad := strings.Repeat("p", 80)
	deadline := time.Now().Add(2 * time.Minute)
	for w := range clients {
		c := dial(t, a.Addr())
		wg.Go(func() {
			for call := range calls {
				es := make([]*scribethrift.LogEntry, per)
				for i := range es {
					es[i] = &scribethrift.LogEntry{Category: "app", Message: fmt.Appendf(nil, "w%d-c%d-%d-%s", w, call, i, pad)}
				}
				for {
					rc, err := c.Log(context.Background(), es)
					if err != nil {
						t.Errorf("client %d call %d: %v", w, call, err)
						return
					}
					if rc == scribethrift.ResultCode_OK {
						mu.Lock()
						accepted = append(accepted, msgs(es)...)
						mu.Unlock()
						break
					}
					tryLater.Add(1)
					if time.Now().After(deadline) {
						t.Errorf("client %d call %d: still TRY_LATER after 2 minutes", w, call)
						return
					}
					time.Sleep(time.Millisecond)
				}
			}
		})
	}
	var lines []string
	var sb strings.Builder
	for i := range 1500 {
		l := fmt.Sprintf("line-%d-%s", i, pad)
		lines = append(lines, l)
		sb.WriteString(l + "\n")
		if i%100 == 99 {
			appendFile(t, logPath, sb.String())
			sb.Reset()
		}
	}

	testkit.WaitFor(t, "the disk to fill and calls to be refused", func() bool { return tryLater.Load() >= 20 || t.Failed() })
	// The agent keeps serving fb303 while its disk is full.
	counters, err := dial(t, a.Addr()).GetCounters(context.Background())
	if err != nil || counters["agent.try_later_sent.write_error"] == 0 {
		t.Errorf("getCounters with the disk full: %v, write_error TRY_LATERs %d", err, counters["agent.try_later_sent.write_error"])
	}
	up := startUpstream(t, upAddr, nil)
	wg.Wait()
	if t.Failed() {
		t.Logf("queue %+v", a.q.Stats())
		logs := a.logs.String()
		if len(logs) > 6000 {
			logs = logs[:3000] + "\n...\n" + logs[len(logs)-3000:]
		}
		t.Logf("logs: %s", logs)
		out, _ := exec.Command("ls", "-la", filepath.Join(mnt, "queue")).CombinedOutput()
		t.Logf("%s", out)
		t.FailNow()
	}
	want := slices.Concat(accepted, lines)
	testkit.WaitFor(t, "everything upstream", func() bool {
		n := 0
		for _, c := range up.pumaCounts() {
			n += c
		}
		return n >= len(want)
	})
	up.received(t) // no identity with two contents
	wantOnce(t, up.pumaCounts(), want)
	if len(accepted) != clients*calls*per {
		t.Fatalf("%d entries accepted, want %d", len(accepted), clients*calls*per)
	}
	if a.c.tryLater[tryLaterWriteError].Load() == 0 {
		t.Fatal("no TRY_LATER counted")
	}
	t.Logf("%d calls answered TRY_LATER", tryLater.Load())
}

// An agent restarted on a disk that is still full used to die at the next
// call. Now it starts (its queue cannot start a segment yet), answers
// TRY_LATER, ships its backlog, which frees space, and then accepts again.
func TestAgentRestartsOnAFullDisk(t *testing.T) {
	mnt := mountTmpfs(t, 256<<10)
	upAddr := deadAddr(t)
	cfg := testConfig(filepath.Join(mnt, "queue"), upAddr)
	cfg.SegmentBytes = 32 << 10
	a := startAgent(t, cfg)
	c := dial(t, a.Addr())
	pad := strings.Repeat("p", 100)
	var accepted []string
	for call := 0; ; call++ {
		if call > 10000 {
			t.Fatal("the disk never filled")
		}
		es := entries("c", fmt.Sprintf("r%d-%s", call, pad), 0, 20)
		rc, err := c.Log(context.Background(), es)
		if err != nil {
			t.Fatal(err)
		}
		if rc != scribethrift.ResultCode_OK {
			break
		}
		accepted = append(accepted, msgs(es)...)
	}
	a.stopped(t)
	// Take what little space is left.
	filler, err := os.Create(filepath.Join(mnt, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := filler.Write(make([]byte, 1024)); err != nil {
			break
		}
	}
	filler.Close()

	b := startAgent(t, cfg)
	c = dial(t, b.Addr())
	late := entries("c", "late", 0, 5)
	if rc, err := c.Log(context.Background(), late); err != nil || rc != scribethrift.ResultCode_TRY_LATER {
		t.Fatalf("log on a full disk after a restart: %v %v, want TRY_LATER", rc, err)
	}
	up := startUpstream(t, upAddr, nil)
	testkit.WaitFor(t, "the restarted agent to accept again", func() bool {
		rc, err := c.Log(context.Background(), late)
		return err == nil && rc == scribethrift.ResultCode_OK
	})
	want := slices.Concat(accepted, msgs(late))
	testkit.WaitFor(t, "everything upstream", func() bool { return up.count(t) >= len(want) })
	up.received(t)
	wantOnce(t, up.pumaCounts(), want)
}
