package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestProcsFor(t *testing.T) {
	for _, c := range []struct {
		name          string
		set           bool
		cpus, current int
		want          int
	}{
		{"the runtime's default: twice the CPUs", false, 2, 2, 4},
		{"GOMAXPROCS in the environment wins", true, 2, 2, 0},
		{"set in the environment to more than the CPUs", true, 2, 8, 0},
		{"a CPU quota below the CPUs: left", false, 16, 2, 0},
		{"one CPU", false, 1, 1, 2},
	} {
		if got := procsFor(c.set, c.cpus, c.current); got != c.want {
			t.Errorf("%s: procsFor(%v, %d, %d) = %d, want %d", c.name, c.set, c.cpus, c.current, got, c.want)
		}
	}
}

// TestBinaryWidensProcs: the binary runs with twice the CPUs as
// GOMAXPROCS, and with GOMAXPROCS from its environment when that is set.
func TestBinaryWidensProcs(t *testing.T) {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOMAXPROCS=") {
			env = append(env, kv)
		}
	}
	for _, c := range []struct {
		name string
		env  []string
		want int
	}{
		{"default", env, 2 * runtime.NumCPU()},
		{"from the environment", append(slices.Clone(env), "GOMAXPROCS=3"), 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			ports := freePorts(t, 4)
			cfgFile := filepath.Join(dir, "freeway.yaml")
			writeConfig(t, cfgFile, filepath.Join(dir, "data"), ports, "")
			api := fmt.Sprintf("127.0.0.1:%d", ports[2])
			p := startProcEnv(t, c.env, cfgFile, api, 0)
			if c.name == "default" && strings.Contains(p.out.String(), "GOMAXPROCS left as it is") {
				t.Skipf("the runtime's default is below the CPUs here (a CPU quota): %s", p.out.String())
			}
			resp, err := http.Get("http://" + api + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := fmt.Sprintf("go_sched_gomaxprocs_threads %d\n", c.want)
			if !strings.Contains(string(body), want) {
				t.Errorf("/metrics lacks %q", want)
			}
			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			p.stopped(t)
		})
	}
}
