package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestConfigCheck(t *testing.T) {
	out, err := run(t, "config", "check", "../../examples/freeway.yaml")
	if err != nil || !strings.Contains(out, "ok (2 apps)") {
		t.Fatalf("example config: %q %v", out, err)
	}
	// Every example, not only the one above (docs_test.go holds their
	// keys to the code).
	examples, err := filepath.Glob("../../examples/*.yaml")
	if err != nil || len(examples) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, e := range examples {
		if out, err := run(t, "config", "check", e); err != nil {
			t.Errorf("freeway config check %s: %v %s", e, err, out)
		}
	}

	dir := t.TempDir()
	appsOnly := filepath.Join(dir, "apps.yaml")
	if err := os.WriteFile(appsOnly, []byte("apps:\n  - name: hits\n    category: web\n    aggregates: [{fn: count}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, "config", "check", appsOnly); err != nil || !strings.Contains(out, "ok (1 app)") {
		t.Fatalf("a file with only apps: %q %v", out, err)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apps:\n  - name: hits\n    category: web\n    aggregates:\n      - {fn: cnt}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = run(t, "config", "check", bad)
	if err == nil || !strings.HasPrefix(err.Error(), bad+":5:") || !strings.Contains(err.Error(), `unknown function "cnt"`) {
		t.Fatalf("bad file: %v", err)
	}

	unknown := filepath.Join(dir, "unknown.yaml")
	if err := os.WriteFile(unknown, []byte("serving:\n  listen: 127.0.0.1:1\n  colour: red\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = run(t, "config", "check", unknown)
	if err == nil || !strings.HasPrefix(err.Error(), unknown+":3:3:") || !strings.Contains(err.Error(), `unknown key "colour"`) {
		t.Fatalf("unknown key: %v", err)
	}
}

func TestHelpShowsFlagsWithDefaults(t *testing.T) {
	out, err := run(t, "all", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--config", "--data-dir", `(default "freeway-data")`, "--dfs", "--store", "--coord", `--serving.listen string`, `(default "127.0.0.1:8080")`, "--demo"} {
		if !strings.Contains(out, want) {
			t.Errorf("help lacks %q", want)
		}
	}
	out, err = run(t, "copier", "--help")
	if err != nil || !strings.Contains(out, "--backfill") || !strings.Contains(out, "--dfs-retention") || !strings.Contains(out, "(default 7d)") {
		t.Errorf("copier help lacks --backfill or --dfs-retention: %v\n%s", err, out)
	}
	out, err = run(t, "puma", "--help")
	if err != nil || strings.Contains(out, "--agent.listen") || !strings.Contains(out, "--puma.checkpoint-interval") {
		t.Errorf("puma help shows other components' flags or lacks its own: %v\n%s", err, out)
	}
}

func TestBadFlagsAndTargets(t *testing.T) {
	if _, err := run(t, "all", "--no-such-flag"); err == nil {
		t.Error("unknown flag accepted")
	}
	if _, err := run(t, "serving", "--data-dir", t.TempDir(), "--log.level", "loud"); err == nil || !strings.Contains(err.Error(), "log.level") {
		t.Errorf("bad log level: %v", err)
	}
	if _, err := run(t, "copier", "--data-dir", t.TempDir(), "--admin-listen", "off"); err == nil || !strings.Contains(err.Error(), "copier.destination") {
		t.Errorf("copier without destination: %v", err)
	}
	if _, err := run(t, "copier", "--backfill", "--data-dir", t.TempDir()); err == nil || !strings.Contains(err.Error(), "copier.destination") {
		t.Errorf("backfill without destination: %v", err)
	}
	out, err := run(t, "version")
	if err != nil || !strings.HasPrefix(out, "freeway ") {
		t.Errorf("version: %q %v", out, err)
	}
}

// TestScaleOutCommandLine: the flags a split deployment (and its tests)
// rely on, per target (issue 9's command line).
func TestScaleOutCommandLine(t *testing.T) {
	common := []string{"--dfs", "--store", "--coord", "--admin-listen", "--advertise", "--config", "--data-dir"}
	for target, own := range map[string][]string{
		"agent":        {"--agent.listen", "--agent.upstream"},
		"calligraphus": {"--calligraphus.listen"},
		"puma":         {"--puma.listen"},
		"serving":      {"--serving.listen"},
	} {
		out, err := run(t, target, "--help")
		if err != nil {
			t.Fatalf("%s --help: %v", target, err)
		}
		for _, f := range append(own, common...) {
			if !strings.Contains(out, f+" ") {
				t.Errorf("freeway %s has no %s flag", target, f)
			}
		}
	}
	out, _ := run(t, "agent", "--help")
	if !strings.Contains(out, "zk://host:port") {
		t.Errorf("freeway agent --help does not say --agent.upstream takes a zk:// URL")
	}
}

// TestMistypedSubcommand: a mistyped subcommand is an error naming the
// one meant, never the help with exit status 0 ("freeway config chek
// FILE" in a script would have passed every file).
func TestMistypedSubcommand(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"config", "chek", "../../examples/freeway.yaml"}, "did you mean check?"},
		{[]string{"agnet"}, "did you mean agent?"},
		{[]string{"pum"}, "did you mean puma?"},
	} {
		_, err := run(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), "unknown command") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an unknown command error with %q", c.args, err, c.want)
		}
	}
	if _, err := run(t, "config", "check"); err == nil || !strings.Contains(err.Error(), "want one FILE") {
		t.Errorf("config check without a file: %v, want it to ask for one", err)
	}
	if out, err := run(t, "config"); err != nil || !strings.Contains(out, "check") {
		t.Errorf("config alone: %v, want its help:\n%s", err, out)
	}
}

// TestDemoWithoutItsApps: --demo with a configuration none of whose apps
// reads the demo's categories is refused before anything starts, saying
// which configuration to add ("freeway --demo" alone ran, and every
// query of the README answered "unknown app"). The listeners are on an
// address no interface has, so that a process that starts anyway fails
// at once instead of running.
func TestDemoWithoutItsApps(t *testing.T) {
	nowhere := "192.0.2.1:0"
	_, err := run(t, "all", "--demo", "--data-dir", t.TempDir(), "--admin-listen", "off",
		"--agent.listen", nowhere, "--calligraphus.listen", nowhere, "--serving.listen", nowhere, "--serving.thrift-listen", "")
	if err == nil || !strings.Contains(err.Error(), "--demo") || !strings.Contains(err.Error(), "examples/freeway.yaml") {
		t.Fatalf("--demo with no app: %v, want it refused naming the example configuration", err)
	}
}

// TestDemoRateBelowOne: --demo with --demo-rate 0 (or less) is refused;
// it ran with no load at all, silently.
func TestDemoRateBelowOne(t *testing.T) {
	nowhere := "192.0.2.1:0"
	for _, rate := range []string{"0", "-5"} {
		_, err := run(t, "all", "--demo", "--demo-rate", rate, "--config", "../../examples/freeway.yaml", "--data-dir", t.TempDir(), "--admin-listen", "off",
			"--agent.listen", nowhere, "--calligraphus.listen", nowhere, "--serving.listen", nowhere, "--serving.thrift-listen", "")
		if err == nil || !strings.Contains(err.Error(), "--demo-rate") {
			t.Errorf("--demo-rate %s: %v, want it refused", rate, err)
		}
	}
	// Without --demo, --demo-rate was ignored: no load, no word.
	_, err := run(t, "all", "--demo-rate", "500", "--config", "../../examples/freeway.yaml", "--data-dir", t.TempDir(), "--admin-listen", "off",
		"--agent.listen", nowhere, "--calligraphus.listen", nowhere, "--serving.listen", nowhere, "--serving.thrift-listen", "")
	if err == nil || !strings.Contains(err.Error(), "--demo-rate") {
		t.Errorf("--demo-rate without --demo: %v, want it refused", err)
	}
}
