package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// built is the binary the tests of this package run, built once.
var built = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "freeway-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "freeway")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	return bin, build.Run()
})

func freewayBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin, err := built()
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	return bin
}

// proc is the binary running in the background.
type proc struct {
	cmd    *exec.Cmd
	out    *testkit.LogBuffer
	exited chan struct{}
	err    error // after exited
}

// startProc runs `freeway all` on cfgFile with extra args, under a file
// descriptor limit when nofile > 0, and waits until api answers /readyz.
func startProc(t *testing.T, cfgFile, api string, nofile int, args ...string) *proc {
	t.Helper()
	bin := freewayBinary(t)
	argv := append([]string{"all", "--config", cfgFile}, args...)
	var cmd *exec.Cmd
	if nofile > 0 {
		cmd = exec.Command("bash", append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, nofile), bin}, argv...)...)
	} else {
		cmd = exec.Command(bin, argv...)
	}
	p := &proc{cmd: cmd, out: &testkit.LogBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // it may have exited already
		<-p.exited
		if t.Failed() {
			t.Logf("freeway output:\n%s", p.out.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			t.Fatalf("freeway exited at start: %v", p.err)
		default:
		}
		if resp, err := http.Get("http://" + api + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("freeway did not become ready")
	return nil
}

// waitOutput waits until the process has written want.
func (p *proc) waitOutput(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(p.out.String(), want) {
		select {
		case <-p.exited:
			t.Fatalf("freeway exited (%v) before writing %q", p.err, want)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("freeway did not write %q", want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stopped waits for the process to exit and checks it exited cleanly.
func (p *proc) stopped(t *testing.T) {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(60 * time.Second):
		t.Fatal("freeway did not exit")
	}
	if p.err != nil {
		t.Fatalf("freeway exited with %v", p.err)
	}
}

func writeConfig(t *testing.T, file, dataDir string, ports []int, extra string) {
	t.Helper()
	cfg := fmt.Sprintf(`data_dir: %s
agent:
  listen: "127.0.0.1:%d"%s
calligraphus: {listen: "127.0.0.1:%d"}
serving: {listen: "127.0.0.1:%d", thrift_listen: "127.0.0.1:%d"}
apps:
  - name: hits
    category: web
    aggregates: [{name: n, fn: count}]
`, dataDir, ports[0], extra, ports[1], ports[2], ports[3])
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

// logWeb sends one entry to the agent, retrying until it is taken.
func logWeb(t *testing.T, agent string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := scribeapi.Dial(agent, thriftsrv.Limits{}, 5*time.Second)
		if err == nil {
			rc, err2 := c.Log(context.Background(), []*scribethrift.LogEntry{{Category: "web", Message: []byte("hello")}})
			c.Close()
			if err2 == nil && rc == scribethrift.ResultCode_OK {
				return
			}
			err = err2
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent does not take an entry: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSurvivesFileDescriptorExhaustion runs the binary under a limit of
// 100 open files and opens 300 idle connections to its HTTP and Scribe
// ports: accepting fails with "too many open files", which the listeners
// ride out (retrying, with a rate-limited warning). Once the connections
// are gone a normal client is served. (Before, the Scribe port took the
// accept error as fatal and the process exited.)
func TestSurvivesFileDescriptorExhaustion(t *testing.T) {
	dir := t.TempDir()
	ports := freePorts(t, 4)
	cfgFile := filepath.Join(dir, "freeway.yaml")
	writeConfig(t, cfgFile, filepath.Join(dir, "data"), ports, "")
	agent := fmt.Sprintf("127.0.0.1:%d", ports[0])
	api := fmt.Sprintf("127.0.0.1:%d", ports[2])
	p := startProc(t, cfgFile, api, 100, "--log.level", "warn")
	logWeb(t, agent)

	var conns []net.Conn
	for i := range 300 {
		addr := agent
		if i%2 == 1 {
			addr = api
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	p.waitOutput(t, "accept failed, retrying")
	p.waitOutput(t, "too many open files")
	select {
	case <-p.exited:
		t.Fatalf("freeway exited while out of file descriptors: %v", p.err)
	default:
	}
	for _, c := range conns {
		c.Close()
	}
	logWeb(t, agent)
	resp, err := http.Get("http://" + api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `freeway_listener_accept_errors_total{listener="agent"}`) {
		t.Fatalf("accept errors of the agent port not counted:\n%s", body)
	}
	select {
	case <-p.exited:
		t.Fatalf("freeway exited: %v", p.err)
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.stopped(t)
}

// TestReloadAndShutdown: fb303 reinitialize and SIGHUP reload a changed
// file, which getOptions then reports; a broken file is refused with its
// position and the process runs on; fb303 shutdown stops it cleanly.
func TestReloadAndShutdown(t *testing.T) {
	dir := t.TempDir()
	ports := freePorts(t, 4)
	cfgFile := filepath.Join(dir, "freeway.yaml")
	data := filepath.Join(dir, "data")
	writeConfig(t, cfgFile, data, ports, "")
	agent := fmt.Sprintf("127.0.0.1:%d", ports[0])
	api := fmt.Sprintf("127.0.0.1:%d", ports[2])
	p := startProc(t, cfgFile, api, 0)

	option := func(key string) string {
		t.Helper()
		c, err := scribeapi.Dial(agent, thriftsrv.Limits{}, 5*time.Second)
		if err != nil {
			return "(unreachable)"
		}
		defer c.Close()
		opts, err := c.GetOptions(context.Background())
		if err != nil {
			return "(" + err.Error() + ")"
		}
		return opts[key]
	}
	waitOption := func(key, want string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for got := option(key); got != want; got = option(key) {
			if time.Now().After(deadline) {
				t.Fatalf("%s = %q, want %q", key, got, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitOption("agent.max_queue_bytes", "1GiB")
	if got := option("agent.upstream"); got != fmt.Sprintf("127.0.0.1:%d", ports[1]) {
		t.Fatalf("agent.upstream = %q", got)
	}

	// reinitialize, as scribe_ctrl reload sends it.
	writeConfig(t, cfgFile, data, ports, "\n  max_queue_bytes: 512MiB")
	c, err := scribeapi.Dial(agent, thriftsrv.Limits{}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Reinitialize(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.Close()
	waitOption("agent.max_queue_bytes", "512MiB")
	logWeb(t, agent)

	// A broken file: refused with its position, the process runs on.
	writeConfig(t, cfgFile, data, ports, "\n  max_queue_bytes: 256MiB\n  colour: red")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitOutput(t, "configuration not reloaded")
	p.waitOutput(t, cfgFile+`:5:3: unknown key \"colour\"`)
	// POST /admin/reload with the broken file answers its error, not
	// 202 "accepted" and a refusal only in the log.
	resp, err := http.Post("http://"+api+"/admin/reload", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(body), `:5:3: unknown key \"colour\"`) {
		t.Fatalf("POST /admin/reload with a broken file: %d %s, want 422 with its error", resp.StatusCode, body)
	}
	if got := option("agent.max_queue_bytes"); got != "512MiB" {
		t.Fatalf("after a broken file, agent.max_queue_bytes = %q", got)
	}
	logWeb(t, agent)

	// SIGHUP with the file fixed.
	writeConfig(t, cfgFile, data, ports, "\n  max_queue_bytes: 256MiB")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitOption("agent.max_queue_bytes", "256MiB")

	// shutdown, as scribe_ctrl stop sends it.
	c, err = scribeapi.Dial(agent, thriftsrv.Limits{}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.stopped(t)
	if strings.Count(p.out.String(), "configuration reloaded") != 2 {
		t.Errorf("want two reloads in the log:\n%s", p.out.String())
	}
}
