package deploy

// These tests check docker-compose.yml and the Dockerfiles it builds without
// a Docker engine: they parse the files and compare them with each other,
// with the files they reference, and with the freeway binary, whose command
// lines and configuration they run through the real parsers. If a docker
// compose client is on PATH, `config -q` runs too (it needs no engine).

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/goccy/go-yaml"
	"github.com/spf13/pflag"

	"github.com/freeway-dev/freeway/internal/freeway"
)

const (
	repoRoot          = ".." // go test runs in deploy/
	composeFile       = "docker-compose.yml"
	freewayDockerfile = "deploy/docker/freeway/Dockerfile"
	hbaseDockerfile   = "deploy/docker/hbase/Dockerfile"
	hbaseTemplate     = "deploy/engines/conf/hbase-site.xml.in"
	hbaseRender       = "deploy/docker/hbase/render-site.sh"
	hbaseEntrypoint   = "deploy/docker/hbase/entrypoint.sh"
)

// ---------------------------------------------------------------- the model

type project struct {
	services map[string]*service
	names    []string        // sorted
	volumes  map[string]bool // top-level named volumes
}

type service struct {
	name      string
	raw       map[string]any
	image     string
	build     *buildSpec
	command   []string
	profiles  []string
	dependsOn map[string]string // service -> condition
	envFiles  []string          // as written (relative to the repository root)
	env       map[string]string // env files first, then environment:
	ports     []portSpec
	expose    []int
	mounts    []mountSpec
	health    []string // healthcheck test
}

type buildSpec struct {
	context    string // relative to the repository root
	dockerfile string // relative to the repository root
}

type portSpec struct {
	raw       string
	hostIP    string
	published int // 0: none
	target    int
}

type mountSpec struct {
	raw      string
	bind     bool   // a host path; else a named volume
	source   string // host path relative to the repository root, or the volume's name
	target   string
	readOnly bool
}

var knownServiceKeys = map[string]bool{
	"build": true, "cap_add": true, "cap_drop": true, "command": true, "configs": true,
	"container_name": true, "cpus": true, "depends_on": true, "deploy": true, "entrypoint": true,
	"env_file": true, "environment": true, "expose": true, "extra_hosts": true, "healthcheck": true,
	"hostname": true, "image": true, "init": true, "labels": true, "logging": true, "mem_limit": true,
	"networks": true, "platform": true, "ports": true, "profiles": true, "pull_policy": true,
	"read_only": true, "restart": true, "secrets": true, "shm_size": true, "stop_grace_period": true,
	"stop_signal": true, "tmpfs": true, "ulimits": true, "user": true, "volumes": true, "working_dir": true,
}

var knownTopKeys = map[string]bool{"name": true, "services": true, "volumes": true, "networks": true, "configs": true, "secrets": true}

// loadProject reads docker-compose.yml the way compose does (YAML with
// anchors and merge keys, then ${VAR} interpolation with every variable
// unset) into the model. Problems with the file's shape are fatal.
func loadProject(t *testing.T) *project {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, composeFile))
	if err != nil {
		t.Fatal(err)
	}
	return parseProject(t, data)
}

func parseProject(t *testing.T, data []byte) *project {
	t.Helper()
	var top map[string]any
	if err := yaml.Unmarshal(data, &top); err != nil {
		t.Fatalf("%s: %v", composeFile, err)
	}
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	interpolateAll(top, "", bad)
	for k := range top {
		if !knownTopKeys[k] && !strings.HasPrefix(k, "x-") {
			bad("unknown top-level key %q", k)
		}
	}
	// Top-level configs and secrets read host files.
	for _, kind := range []string{"configs", "secrets"} {
		entries, _ := top[kind].(map[string]any)
		for name, e := range entries {
			if m, ok := e.(map[string]any); ok && m["file"] != nil {
				if err := exists(fmt.Sprint(m["file"])); err != nil {
					bad("%s.%s: %v", kind, name, err)
				}
			}
		}
	}
	p := &project{services: map[string]*service{}, volumes: map[string]bool{}}
	vols, ok := top["volumes"].(map[string]any)
	if top["volumes"] != nil && !ok {
		bad("volumes: want a map")
	}
	for name := range vols {
		p.volumes[name] = true
	}
	svcs, ok := top["services"].(map[string]any)
	if !ok || len(svcs) == 0 {
		t.Fatalf("%s: no services", composeFile)
	}
	for name, v := range svcs {
		raw, ok := v.(map[string]any)
		if !ok {
			bad("services.%s: want a map", name)
			continue
		}
		s := &service{name: name, raw: raw, dependsOn: map[string]string{}, env: map[string]string{}}
		sbad := func(format string, args ...any) { bad("services.%s: %s", name, fmt.Sprintf(format, args...)) }
		for k := range raw {
			if !knownServiceKeys[k] && !strings.HasPrefix(k, "x-") {
				sbad("unknown key %q", k)
			}
		}
		s.image, _ = raw["image"].(string)
		switch b := raw["build"].(type) {
		case nil:
		case string:
			s.build = &buildSpec{context: path.Clean(b), dockerfile: path.Join(b, "Dockerfile")}
		case map[string]any:
			ctx, _ := b["context"].(string)
			if ctx == "" {
				ctx = "."
			}
			df, _ := b["dockerfile"].(string)
			if df == "" {
				df = "Dockerfile"
			}
			s.build = &buildSpec{context: path.Clean(ctx), dockerfile: path.Join(ctx, df)}
		default:
			sbad("build: want a string or a map")
		}
		var err error
		if s.command, err = stringList(raw["command"], true); err != nil {
			sbad("command: %v", err)
		}
		if s.profiles, err = stringList(raw["profiles"], false); err != nil {
			sbad("profiles: %v", err)
		}
		switch d := raw["depends_on"].(type) {
		case nil:
		case []any:
			for _, e := range d {
				s.dependsOn[fmt.Sprint(e)] = "service_started"
			}
		case map[string]any:
			for dep, opts := range d {
				cond := "service_started"
				if m, ok := opts.(map[string]any); ok && m["condition"] != nil {
					cond = fmt.Sprint(m["condition"])
				}
				s.dependsOn[dep] = cond
			}
		default:
			sbad("depends_on: want a list or a map")
		}
		switch e := raw["env_file"].(type) {
		case nil:
		case string:
			s.envFiles = []string{e}
		case []any:
			for _, f := range e {
				switch f := f.(type) {
				case string:
					s.envFiles = append(s.envFiles, f)
				case map[string]any:
					s.envFiles = append(s.envFiles, fmt.Sprint(f["path"]))
				}
			}
		default:
			sbad("env_file: want a string or a list")
		}
		for _, f := range s.envFiles {
			kv, err := readEnvFile(filepath.Join(repoRoot, f))
			if err != nil {
				sbad("env_file: %v", err)
			}
			for k, v := range kv {
				s.env[k] = v
			}
		}
		switch e := raw["environment"].(type) {
		case nil:
		case map[string]any:
			for k, v := range e {
				if v == nil {
					v = ""
				}
				s.env[k] = fmt.Sprint(v)
			}
		case []any:
			for _, kv := range e {
				k, v, _ := strings.Cut(fmt.Sprint(kv), "=")
				s.env[k] = v
			}
		default:
			sbad("environment: want a map or a list")
		}
		if ps, ok := raw["ports"].([]any); ok {
			for _, pv := range ps {
				ps, err := parsePort(pv)
				if err != nil {
					sbad("ports: %v", err)
					continue
				}
				s.ports = append(s.ports, ps)
			}
		} else if raw["ports"] != nil {
			sbad("ports: want a list")
		}
		exp, err := stringList(raw["expose"], false)
		if err != nil {
			sbad("expose: %v", err)
		}
		for _, e := range exp {
			n, err := strconv.Atoi(strings.TrimSuffix(e, "/tcp"))
			if err != nil || n < 1 || n > 65535 {
				sbad("expose: %q is not a TCP port", e)
				continue
			}
			s.expose = append(s.expose, n)
		}
		if vs, ok := raw["volumes"].([]any); ok {
			for _, vv := range vs {
				m, err := parseMount(vv)
				if err != nil {
					sbad("volumes: %v", err)
					continue
				}
				s.mounts = append(s.mounts, m)
			}
		} else if raw["volumes"] != nil {
			sbad("volumes: want a list")
		}
		if hc, ok := raw["healthcheck"].(map[string]any); ok {
			switch test := hc["test"].(type) {
			case string:
				s.health = []string{"CMD-SHELL", test}
			default:
				if s.health, err = stringList(test, false); err != nil {
					sbad("healthcheck.test: %v", err)
				}
			}
		}
		p.services[name] = s
		p.names = append(p.names, name)
	}
	sort.Strings(p.names)
	if len(errs) > 0 {
		sort.Strings(errs)
		t.Fatalf("%s:\n  %s", composeFile, strings.Join(errs, "\n  "))
	}
	return p
}

// stringList reads a YAML list of scalars (or, if allowed, one string,
// split on spaces as compose would for a simple command).
func stringList(v any, splitString bool) ([]string, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case string:
		if splitString {
			return strings.Fields(x), nil
		}
		return []string{x}, nil
	case []any:
		out := make([]string, 0, len(x))
		for _, e := range x {
			switch e.(type) {
			case map[string]any, []any, nil:
				return nil, fmt.Errorf("want a list of scalars, got %v", e)
			}
			out = append(out, fmt.Sprint(e))
		}
		return out, nil
	}
	return nil, fmt.Errorf("want a list, got %T", v)
}

func parsePort(v any) (portSpec, error) {
	switch x := v.(type) {
	case map[string]any:
		ps := portSpec{raw: fmt.Sprint(x)}
		ps.hostIP, _ = x["host_ip"].(string)
		var err error
		if ps.target, err = strconv.Atoi(fmt.Sprint(x["target"])); err != nil {
			return ps, fmt.Errorf("%v: bad target", x)
		}
		if x["published"] != nil {
			if ps.published, err = strconv.Atoi(fmt.Sprint(x["published"])); err != nil {
				return ps, fmt.Errorf("%v: bad published port (ranges are not supported here)", x)
			}
		}
		return ps, nil
	case nil:
		return portSpec{}, fmt.Errorf("empty port")
	}
	raw := fmt.Sprint(v)
	ps := portSpec{raw: raw}
	spec, proto, _ := strings.Cut(raw, "/")
	if proto != "" && proto != "tcp" {
		return ps, fmt.Errorf("%q: only tcp is used here", raw)
	}
	if strings.Contains(spec, "[") {
		return ps, fmt.Errorf("%q: IPv6 host addresses are not supported here", raw)
	}
	parts := strings.Split(spec, ":")
	num := func(s string) (int, error) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 65535 {
			return 0, fmt.Errorf("%q: %q is not a port (ranges are not supported here)", raw, s)
		}
		return n, nil
	}
	var err error
	switch len(parts) {
	case 1:
		ps.target, err = num(parts[0])
	case 2:
		if ps.published, err = num(parts[0]); err == nil {
			ps.target, err = num(parts[1])
		}
	case 3:
		ps.hostIP = parts[0]
		if ps.published, err = num(parts[1]); err == nil {
			ps.target, err = num(parts[2])
		}
	default:
		err = fmt.Errorf("%q: want [HOST_IP:]HOST_PORT:CONTAINER_PORT", raw)
	}
	return ps, err
}

func parseMount(v any) (mountSpec, error) {
	if x, ok := v.(map[string]any); ok {
		m := mountSpec{raw: fmt.Sprint(x)}
		typ, _ := x["type"].(string)
		m.source, _ = x["source"].(string)
		m.target, _ = x["target"].(string)
		m.readOnly, _ = x["read_only"].(bool)
		switch typ {
		case "bind":
			m.bind = true
		case "volume":
		default:
			return m, fmt.Errorf("%v: type %q is not checked here (want bind or volume)", x, typ)
		}
		if m.target == "" || m.source == "" {
			return m, fmt.Errorf("%v: want source and target", x)
		}
		return m, nil
	}
	raw := fmt.Sprint(v)
	m := mountSpec{raw: raw}
	parts := strings.Split(raw, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return m, fmt.Errorf("%q: want SOURCE:TARGET[:MODE] (an anonymous volume keeps nothing)", raw)
	}
	m.source, m.target = parts[0], parts[1]
	if len(parts) == 3 {
		for _, opt := range strings.Split(parts[2], ",") {
			m.readOnly = m.readOnly || opt == "ro"
		}
	}
	m.bind = strings.HasPrefix(m.source, ".") || strings.HasPrefix(m.source, "/") || strings.HasPrefix(m.source, "~")
	return m, nil
}

// readEnvFile reads a compose env file: KEY=VALUE lines, # comments.
func readEnvFile(name string) (map[string]string, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s:%d: want KEY=VALUE", name, i+1)
		}
		out[k] = v
	}
	return out, nil
}

// interpolateAll applies compose's ${VAR} interpolation to every string,
// with every variable unset: the file must work without any set.
func interpolateAll(v any, where string, bad func(string, ...any)) any {
	switch x := v.(type) {
	case string:
		s, err := interpolate(x)
		if err != nil {
			bad("%s: %v", strings.TrimPrefix(where, "."), err)
		}
		return s
	case map[string]any:
		for k, e := range x {
			x[k] = interpolateAll(e, where+"."+k, bad)
		}
	case []any:
		for i, e := range x {
			x[i] = interpolateAll(e, fmt.Sprintf("%s[%d]", where, i), bad)
		}
	}
	return v
}

func isNameChar(c byte, first bool) bool {
	return c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || !first && '0' <= c && c <= '9'
}

// interpolate expands $$, ${VAR:-default}, ${VAR-default}, ${VAR:+x},
// ${VAR+x}; a variable with no default is an error, as is a lone $ (compose
// refuses it: write $$ for a literal dollar).
func interpolate(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' {
			b.WriteByte(s[i])
			continue
		}
		switch {
		case i+1 < len(s) && s[i+1] == '$':
			b.WriteByte('$')
			i++
		case i+1 < len(s) && s[i+1] == '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				return "", fmt.Errorf("%q: unclosed ${", s)
			}
			expr := s[i+2 : i+2+end]
			i += 2 + end
			n := 0
			for n < len(expr) && isNameChar(expr[n], n == 0) {
				n++
			}
			name, rest := expr[:n], expr[n:]
			if name == "" {
				return "", fmt.Errorf("%q: bad variable in ${%s}", s, expr)
			}
			switch {
			case strings.HasPrefix(rest, ":-"):
				b.WriteString(rest[2:])
			case strings.HasPrefix(rest, "-"):
				b.WriteString(rest[1:])
			case strings.HasPrefix(rest, ":+"), strings.HasPrefix(rest, "+"):
				// unset: empty
			case rest == "":
				return "", fmt.Errorf("%q: ${%s} has no default (the file must work with no variable set)", s, name)
			default:
				return "", fmt.Errorf("%q: ${%s} is required or malformed", s, expr)
			}
		default:
			j := i + 1
			for j < len(s) && isNameChar(s[j], j == i+1) {
				j++
			}
			if j == i+1 {
				return "", fmt.Errorf("%q: a lone $ (write $$ for a literal dollar)", s)
			}
			return "", fmt.Errorf("%q: $%s has no default (use ${%s:-default})", s, s[i+1:j], s[i+1:j])
		}
	}
	return b.String(), nil
}

// ---------------------------------------------------------------- helpers on the model

func (s *service) exposes(port int) bool {
	if slices.Contains(s.expose, port) {
		return true
	}
	for _, p := range s.ports {
		if p.target == port {
			return true
		}
	}
	return false
}

// enabledWith says whether s runs when the profiles are active ("" stands
// for running with no --profile).
func (s *service) enabledWith(profile string) bool {
	return len(s.profiles) == 0 || slices.Contains(s.profiles, profile)
}

// activations are the profile sets under which s runs: "" (no profile) for
// a service without profiles, else each of its profiles.
func (s *service) activations() []string {
	if len(s.profiles) == 0 {
		return []string{""}
	}
	return s.profiles
}

// hostPath maps a path inside s's container to the host file mounted there.
func (p *project) hostPath(s *service, inContainer string) (string, error) {
	var best *mountSpec
	for i, m := range s.mounts {
		t := path.Clean(m.target)
		if inContainer == t || strings.HasPrefix(inContainer, t+"/") {
			if best == nil || len(t) > len(path.Clean(best.target)) {
				best = &s.mounts[i]
			}
		}
	}
	if best == nil {
		return "", fmt.Errorf("%s is not mounted from the host", inContainer)
	}
	if !best.bind {
		return "", fmt.Errorf("%s is on volume %s, not a host file", inContainer, best.source)
	}
	rel := strings.TrimPrefix(inContainer, path.Clean(best.target))
	return filepath.Join(repoRoot, filepath.FromSlash(best.source+rel)), nil
}

// onMount says whether a container path is on a mount (survives the container).
func (s *service) onMount(inContainer string) bool {
	for _, m := range s.mounts {
		t := path.Clean(m.target)
		if inContainer == t || strings.HasPrefix(inContainer, t+"/") {
			return true
		}
	}
	return false
}

func (s *service) isFreeway() bool {
	return s.build != nil && s.build.dockerfile == freewayDockerfile
}

// checkPinned: a tag with a version (major.minor at least), not latest; or a digest.
var versionTag = regexp.MustCompile(`\d+\.\d+`)

func checkPinned(ref string) error {
	if strings.Contains(ref, "@sha256:") {
		return nil
	}
	name := ref[strings.LastIndex(ref, "/")+1:]
	_, tag, ok := strings.Cut(name, ":")
	switch {
	case !ok || tag == "":
		return fmt.Errorf("image %q has no tag (pin a version)", ref)
	case tag == "latest":
		return fmt.Errorf("image %q uses latest (pin a version)", ref)
	case !versionTag.MatchString(tag):
		return fmt.Errorf("image %q: tag %q is not a specific version (want at least major.minor)", ref, tag)
	}
	return nil
}

func exists(rel string) error {
	_, err := os.Stat(filepath.Join(repoRoot, filepath.FromSlash(rel)))
	return err
}

// ---------------------------------------------------------------- compose file

func TestComposeServices(t *testing.T) {
	p := loadProject(t)
	for _, name := range p.names {
		s := p.services[name]
		t.Run(name, func(t *testing.T) {
			// Images: pinned, or built from files that exist.
			switch {
			case s.build != nil:
				if fi, err := os.Stat(filepath.Join(repoRoot, s.build.context)); err != nil || !fi.IsDir() {
					t.Errorf("build context %s is not a directory", s.build.context)
				}
				if err := exists(s.build.dockerfile); err != nil {
					t.Errorf("build: Dockerfile %s: %v", s.build.dockerfile, err)
				}
				if s.image != "" && (strings.HasSuffix(s.image, ":latest") || !strings.Contains(s.image[strings.LastIndex(s.image, "/")+1:], ":")) {
					t.Errorf("image %q (the name of the built image) should carry a tag other than latest", s.image)
				}
			case s.image == "":
				t.Errorf("neither image nor build")
			default:
				if err := checkPinned(s.image); err != nil {
					t.Error(err)
				}
			}

			// depends_on: services that exist, run whenever this one does,
			// and have a healthcheck when waited on for health.
			for dep, cond := range s.dependsOn {
				d, ok := p.services[dep]
				if !ok {
					t.Errorf("depends_on %q: no such service", dep)
					continue
				}
				for _, prof := range s.activations() {
					if !d.enabledWith(prof) {
						t.Errorf("depends_on %q, which does not run with profile %q", dep, prof)
					}
				}
				switch cond {
				case "service_started", "service_completed_successfully":
				case "service_healthy":
					if len(d.health) == 0 {
						t.Errorf("depends_on %q with service_healthy, but %s has no healthcheck", dep, dep)
					}
				default:
					t.Errorf("depends_on %q: unknown condition %q", dep, cond)
				}
			}

			// Files and volumes.
			for _, f := range s.envFiles {
				if err := exists(f); err != nil {
					t.Errorf("env_file: %v", err)
				}
			}
			for _, m := range s.mounts {
				if !path.IsAbs(m.target) {
					t.Errorf("volume %s: target %q is not an absolute path", m.raw, m.target)
				}
				if m.bind {
					if strings.HasPrefix(m.source, "/") || strings.HasPrefix(m.source, "~") {
						t.Errorf("volume %s: bind a path inside the repository (./...), not %s", m.raw, m.source)
					} else if err := exists(m.source); err != nil {
						t.Errorf("volume %s: %v", m.raw, err)
					}
				} else if !p.volumes[m.source] {
					t.Errorf("volume %s: named volume %q is not declared under the top-level volumes:", m.raw, m.source)
				}
			}

			// Ports: published only on the loopback, and declared in expose
			// (the list of ports other services may dial).
			for _, ps := range s.ports {
				if ps.published == 0 {
					t.Errorf("port %s: publish a fixed host port on 127.0.0.1 (not a random one on every address)", ps.raw)
				}
				if ps.hostIP != "127.0.0.1" {
					t.Errorf("port %s: must be published on 127.0.0.1, got host IP %q", ps.raw, ps.hostIP)
				}
				if !slices.Contains(s.expose, ps.target) {
					t.Errorf("port %s: container port %d is not in expose: %v", ps.raw, ps.target, s.expose)
				}
			}

			if s.raw["restart"] == nil {
				t.Errorf("no restart policy: a backend that is not up yet makes Freeway exit, and nothing restarts it")
			}
			if len(s.health) > 0 && s.health[0] != "CMD" && s.health[0] != "CMD-SHELL" && s.health[0] != "NONE" {
				t.Errorf("healthcheck.test %v: want CMD or CMD-SHELL first", s.health)
			}
		})
	}

	t.Run("host ports unique", func(t *testing.T) {
		seen := map[int]string{}
		for _, name := range p.names {
			for _, ps := range p.services[name].ports {
				if other, dup := seen[ps.published]; dup {
					t.Errorf("host port %d is published by both %s and %s", ps.published, other, name)
				}
				seen[ps.published] = name
			}
		}
	})
	t.Run("volumes used", func(t *testing.T) {
		used := map[string]bool{}
		for _, s := range p.services {
			for _, m := range s.mounts {
				used[m.source] = true
			}
		}
		for v := range p.volumes {
			if !used[v] {
				t.Errorf("top-level volume %q is used by no service", v)
			}
		}
	})
}

// dialTarget checks that host:port names a service of p that exposes the
// port and that from depends on.
func dialTarget(p *project, from *service, what, hostport string) error {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("%s: %q: %v", what, hostport, err)
	}
	port, _ := strconv.Atoi(portStr)
	target, ok := p.services[host]
	if !ok {
		return fmt.Errorf("%s: host %q is not a service of %s (containers reach each other by service name)", what, host, composeFile)
	}
	if !target.exposes(port) {
		return fmt.Errorf("%s: %s does not expose port %d (expose: %v)", what, host, port, target.expose)
	}
	if host != from.name {
		if _, ok := from.dependsOn[host]; !ok {
			return fmt.Errorf("%s: dials %s but does not depend_on it", what, host)
		}
	}
	return nil
}

// authority splits scheme://h1:p1,h2:p2/rest into host:port pairs, adding
// defaultPort where a host has none.
func authority(raw, defaultPort string) (scheme string, hosts []string, rest string, err error) {
	scheme, tail, ok := strings.Cut(raw, "://")
	if !ok {
		return "", nil, "", fmt.Errorf("%q is not a URL", raw)
	}
	end := strings.IndexAny(tail, "/?")
	if end < 0 {
		end = len(tail)
	}
	for _, h := range strings.Split(tail[:end], ",") {
		if !strings.Contains(h, ":") {
			h = net.JoinHostPort(h, defaultPort)
		}
		hosts = append(hosts, h)
	}
	return scheme, hosts, tail[end:], nil
}

// ---------------------------------------------------------------- engines

func TestComposeEngines(t *testing.T) {
	p := loadProject(t)
	get := func(name string) *service {
		s, ok := p.services[name]
		if !ok {
			t.Fatalf("no %s service", name)
		}
		return s
	}
	zk, nn, dn, hb := get("zookeeper"), get("namenode"), get("datanode"), get("hbase")

	t.Run("zookeeper", func(t *testing.T) {
		port := 2181 // the official image's clientPort unless ZOO_PORT says otherwise
		if v, ok := zk.env["ZOO_PORT"]; ok {
			port, _ = strconv.Atoi(v)
		}
		if !zk.exposes(port) {
			t.Errorf("zookeeper listens on %d but does not expose it", port)
		}
		for _, dir := range []string{"/data", "/datalog"} {
			if !zk.onMount(dir) {
				t.Errorf("zookeeper's %s is not on a volume", dir)
			}
		}
	})

	t.Run("hdfs", func(t *testing.T) {
		defaultFS := nn.env["CORE-SITE.XML_fs.defaultFS"]
		if defaultFS == "" {
			t.Fatalf("namenode: no CORE-SITE.XML_fs.defaultFS")
		}
		if dn.env["CORE-SITE.XML_fs.defaultFS"] != defaultFS {
			t.Errorf("datanode's fs.defaultFS %q differs from the namenode's %q", dn.env["CORE-SITE.XML_fs.defaultFS"], defaultFS)
		}
		scheme, hosts, _, err := authority(defaultFS, "8020")
		if err != nil || scheme != "hdfs" || len(hosts) != 1 {
			t.Fatalf("fs.defaultFS %q: want hdfs://namenode:port", defaultFS)
		}
		if err := dialTarget(p, nn, "namenode fs.defaultFS", hosts[0]); err != nil {
			t.Error(err)
		}
		if err := dialTarget(p, dn, "datanode fs.defaultFS", hosts[0]); err != nil {
			t.Error(err)
		}
		if rpc := nn.env["HDFS-SITE.XML_dfs.namenode.rpc-address"]; rpc != "" && rpc != hosts[0] {
			t.Errorf("dfs.namenode.rpc-address %q differs from fs.defaultFS %q", rpc, defaultFS)
		}
		if v := dn.env["HDFS-SITE.XML_dfs.replication"]; v != "1" {
			t.Errorf("dfs.replication is %q; one DataNode holds one replica", v)
		}
		// Clients dial DataNodes by the name they register with: it must
		// be the datanode service's (Docker's DNS knows service names).
		if h := dn.env["HDFS-SITE.XML_dfs.datanode.hostname"]; h != dn.name {
			t.Errorf("dfs.datanode.hostname is %q, want the service name %q", h, dn.name)
		}
		if a := dn.env["HDFS-SITE.XML_dfs.datanode.address"]; a != "" {
			t.Errorf("dfs.datanode.address is set (%s); the checks here assume the default :9866", a)
		}
		if !dn.exposes(9866) {
			t.Errorf("datanode does not expose its data transfer port 9866")
		}

		// The image's starter formats the name directory only when
		// ENSURE_NAMENODE_DIR does not exist, so it must be the name
		// directory itself, below (not at) a volume's mount point.
		ensure := nn.env["ENSURE_NAMENODE_DIR"]
		nameDir := strings.TrimPrefix(nn.env["HDFS-SITE.XML_dfs.namenode.name.dir"], "file://")
		switch {
		case ensure == "":
			t.Errorf("namenode: ENSURE_NAMENODE_DIR is not set; nothing formats HDFS on the first start")
		case nameDir != ensure:
			t.Errorf("ENSURE_NAMENODE_DIR %q is not dfs.namenode.name.dir %q", ensure, nameDir)
		case !nn.onMount(path.Dir(ensure)):
			t.Errorf("the name directory %s is not on a volume", ensure)
		}
		for _, m := range nn.mounts {
			if path.Clean(m.target) == ensure {
				t.Errorf("a volume is mounted at ENSURE_NAMENODE_DIR %s: the directory always exists, so it is never formatted", ensure)
			}
		}
		if dataDir := strings.TrimPrefix(dn.env["HDFS-SITE.XML_dfs.datanode.data.dir"], "file://"); dataDir == "" || !dn.onMount(dataDir) {
			t.Errorf("the DataNode's data directory %q is not on a volume", dataDir)
		}
		if nn.env["HDFS-SITE.XML_dfs.namenode.safemode.min.datanodes"] != "1" {
			t.Errorf("set dfs.namenode.safemode.min.datanodes=1: the namenode's healthcheck (safe mode OFF) stands for 'HDFS can store a block'")
		}
		if cond := dn.dependsOn[nn.name]; cond == "service_healthy" {
			t.Errorf("datanode waits for a healthy namenode, which waits for a DataNode: deadlock")
		}
	})

	t.Run("hbase", func(t *testing.T) {
		site := renderHBaseSite(t, hb)
		want := map[string]string{
			"hbase.cluster.distributed":          "true",
			"hbase.regionserver.thrift.framed":   "true",
			"hbase.regionserver.thrift.compact":  "false",
			"hbase.master.hostname":              hb.name,
			"hbase.unsafe.regionserver.hostname": hb.name,
			"dfs.client.use.datanode.hostname":   "true",
		}
		for k, v := range want {
			if site[k] != v {
				t.Errorf("hbase-site %s = %q, want %q", k, site[k], v)
			}
		}
		zkPort := site["hbase.zookeeper.property.clientPort"]
		for _, h := range strings.Split(site["hbase.zookeeper.quorum"], ",") {
			if err := dialTarget(p, hb, "hbase.zookeeper.quorum", net.JoinHostPort(h, zkPort)); err != nil {
				t.Error(err)
			}
		}
		scheme, hosts, _, err := authority(site["hbase.rootdir"], "8020")
		switch {
		case err != nil:
			t.Errorf("hbase.rootdir: %v", err)
		case scheme == "hdfs":
			if err := dialTarget(p, hb, "hbase.rootdir", hosts[0]); err != nil {
				t.Error(err)
			}
			if nnScheme, nnHosts, _, _ := authority(nn.env["CORE-SITE.XML_fs.defaultFS"], "8020"); nnScheme != "hdfs" || nnHosts[0] != hosts[0] {
				t.Errorf("hbase.rootdir %s is not on fs.defaultFS %s", site["hbase.rootdir"], nn.env["CORE-SITE.XML_fs.defaultFS"])
			}
			if r := nn.env["HDFS-SITE.XML_dfs.replication"]; site["dfs.replication"] != r {
				t.Errorf("hbase-site dfs.replication = %q but the NameNode's is %q: HBase's client asks for its own", site["dfs.replication"], r)
			}
			if site["hbase.unsafe.stream.capability.enforce"] != "true" {
				t.Errorf("hbase.rootdir is on HDFS: keep hbase.unsafe.stream.capability.enforce=true (a durable WAL)")
			}
		case scheme == "file":
			dir := strings.TrimPrefix(site["hbase.rootdir"], "file://")
			if !hb.onMount(dir) {
				t.Errorf("hbase.rootdir %s is not on a volume", dir)
			}
		default:
			t.Errorf("hbase.rootdir %q: want hdfs:// or file://", site["hbase.rootdir"])
		}
		for _, key := range []string{"HBASE_THRIFT_PORT", "HBASE_MASTER_PORT", "HBASE_REGIONSERVER_PORT"} {
			def := map[string]int{"HBASE_THRIFT_PORT": 9090, "HBASE_MASTER_PORT": 16000, "HBASE_REGIONSERVER_PORT": 16020}[key]
			port := def
			if v, ok := hb.env[key]; ok {
				port, _ = strconv.Atoi(v)
			}
			if !hb.exposes(port) {
				t.Errorf("hbase listens on %d (%s) but does not expose it", port, key)
			}
		}
		if got := site["hbase.master.port"]; got != "" && !hb.exposes(atoi(got)) {
			t.Errorf("hbase.master.port %s is not exposed", got)
		}
		// The gateway's own flags: -f (framed), and no -c (compact).
		ep, err := os.ReadFile(filepath.Join(repoRoot, hbaseEntrypoint))
		if err != nil {
			t.Fatal(err)
		}
		_, thrift, ok := strings.Cut(string(ep), "org.apache.hadoop.hbase.thrift2.ThriftServer")
		thrift, _, _ = strings.Cut(thrift, ";;")
		if f := strings.Fields(thrift); !ok || !slices.Contains(f, "-f") || slices.Contains(f, "-c") {
			t.Errorf("%s: the Thrift2 gateway must run with -f and without -c (framed, binary): %q", hbaseEntrypoint, thrift)
		}
		if len(hb.command) > 0 && !slices.Contains([]string{"all", "master", "regionserver", "thrift"}, hb.command[0]) {
			t.Errorf("hbase command %v: want all (or master, regionserver, thrift)", hb.command)
		}
	})
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// renderHBaseSite runs the image's render-site.sh on the tests' template
// with the hbase service's environment and returns the properties.
func renderHBaseSite(t *testing.T, hb *service) map[string]string {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash to run " + hbaseRender)
	}
	cmd := exec.Command(bash, filepath.Join(repoRoot, hbaseRender), filepath.Join(repoRoot, hbaseTemplate))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOSTNAME=container-id"}
	for k, v := range hb.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("%s %s: %v\n%s", hbaseRender, hbaseTemplate, err, msg)
	}
	var conf struct {
		Props []struct {
			Name  string `xml:"name"`
			Value string `xml:"value"`
		} `xml:"property"`
	}
	if err := xml.Unmarshal(out, &conf); err != nil {
		t.Fatalf("rendered hbase-site.xml is not XML: %v\n%s", err, out)
	}
	site := map[string]string{}
	for _, p := range conf.Props {
		if _, dup := site[p.Name]; dup {
			t.Errorf("rendered hbase-site.xml defines %s twice", p.Name)
		}
		site[p.Name] = p.Value
	}
	if regexp.MustCompile(`@[A-Z_]+@`).Match(out) {
		t.Errorf("rendered hbase-site.xml still has @TOKENS@")
	}
	return site
}

// ---------------------------------------------------------------- freeway services

var (
	buildOnce sync.Once
	binDir    string
	binErr    error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// freewayBinary builds ./cmd/freeway once for the package's tests.
func freewayBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		goCmd, err := exec.LookPath("go") // go test puts its own go first on PATH
		if err != nil {
			binErr = err
			return
		}
		if binDir, binErr = os.MkdirTemp("", "freeway-compose-test-"); binErr != nil {
			return
		}
		cmd := exec.Command(goCmd, "build", "-o", filepath.Join(binDir, "freeway"), "./cmd/freeway")
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ./cmd/freeway: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "freeway")
}

// freewayProc is what one freeway service runs, as the binary would see it.
type freewayProc struct {
	svc         *service
	target      string
	modules     []string
	cfg         freeway.Config
	configFile  string // host path of --config, or ""
	adminListen string
}

func (f *freewayProc) has(module string) bool { return slices.Contains(f.modules, module) }

// parseFreeway reads a freeway service's command line with the flags the
// binary registers (internal/freeway) and its configuration file, the way
// cmd/freeway does. Flags only cmd/freeway knows are skipped here; running
// the binary with --help checks them.
func parseFreeway(p *project, s *service) (*freewayProc, error) {
	if len(s.command) == 0 {
		return nil, fmt.Errorf("no command: say which target it runs (freeway all|agent|...)")
	}
	target := s.command[0]
	mods, ok := freeway.Targets()[target]
	if !ok {
		return nil, fmt.Errorf("command %v: %q is not a freeway target", s.command, target)
	}
	fs := pflag.NewFlagSet(target, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.ParseErrorsAllowlist.UnknownFlags = true
	flags := freeway.RegisterFlags(fs, target)
	configPath := fs.String("config", "", "")
	admin := fs.String("admin-listen", "", "")
	if err := fs.Parse(s.command[1:]); err != nil {
		return nil, fmt.Errorf("command %v: %v", s.command, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("command %v: unexpected arguments %v", s.command, fs.Args())
	}
	f := &freewayProc{svc: s, target: target, modules: mods, cfg: freeway.DefaultConfig(), adminListen: *admin}
	if *configPath != "" {
		host, err := p.hostPath(s, *configPath)
		if err != nil {
			return nil, fmt.Errorf("--config: %v", err)
		}
		f.configFile = host
		if f.cfg, err = freeway.LoadFile(host); err != nil {
			return nil, fmt.Errorf("--config %s (%s): %v", *configPath, host, err)
		}
	}
	flags.Apply(&f.cfg)
	if err := f.cfg.Validate(); err != nil {
		return nil, fmt.Errorf("configuration with the flags applied: %v", err)
	}
	return f, nil
}

type listener struct{ what, addr string }

// listeners are the addresses the process binds.
func (f *freewayProc) listeners() ([]listener, error) {
	var ls []listener
	if f.has(freeway.Agent) {
		ls = append(ls, listener{"agent.listen", f.cfg.Agent.Listen})
	}
	if f.has(freeway.Calligraphus) {
		ls = append(ls, listener{"calligraphus.listen", f.cfg.Calligraphus.Listen})
	}
	if f.has(freeway.Serving) {
		ls = append(ls, listener{"serving.listen", f.cfg.Serving.Listen})
		if f.cfg.Serving.ThriftListen != "" {
			ls = append(ls, listener{"serving.thrift_listen", f.cfg.Serving.ThriftListen})
		}
	} else if f.adminListen != "off" {
		if f.adminListen == "" {
			return nil, fmt.Errorf("target %s has no serving module: pass --admin-listen explicitly, so its /healthz and /metrics port is written here", f.target)
		}
		ls = append(ls, listener{"admin-listen", f.adminListen})
	}
	return ls, nil
}

// backend is one URL the process opens.
type backend struct{ what, url, defaultPort string }

func (f *freewayProc) backends() []backend {
	var bs []backend
	copier := f.has(freeway.Copier) && (f.target == freeway.Copier || f.cfg.Copier.Destination != "")
	if f.has(freeway.Calligraphus) || f.has(freeway.Puma) || copier {
		bs = append(bs, backend{"dfs", f.cfg.DFS, "8020"}, backend{"coord", f.cfg.Coord, "2181"})
	}
	if f.has(freeway.Puma) || f.has(freeway.Serving) || copier {
		bs = append(bs, backend{"store", f.cfg.Store, "9090"})
	}
	if copier {
		bs = append(bs, backend{"copier.destination", f.cfg.Copier.Destination, "8020"})
	}
	return bs
}

func (f *freewayProc) backend(what string) string {
	for _, b := range f.backends() {
		if b.what == what {
			return b.url
		}
	}
	return ""
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

var healthURL = regexp.MustCompile(`https?://(?:127\.0\.0\.1|localhost):(\d+)/`)

func TestComposeFreeway(t *testing.T) {
	p := loadProject(t)
	bin := freewayBinary(t)
	procs := map[string]*freewayProc{}
	var names []string
	for _, name := range p.names {
		if p.services[name].isFreeway() {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		t.Fatalf("no service builds %s", freewayDockerfile)
	}
	for _, name := range names {
		s := p.services[name]
		t.Run(name, func(t *testing.T) {
			// The real command line: --help exits 0 only if every flag parses.
			args := append(append([]string{}, s.command...), "--help")
			if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
				t.Errorf("freeway %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			f, err := parseFreeway(p, s)
			if err != nil {
				t.Fatal(err)
			}
			procs[name] = f
			if f.configFile != "" {
				if out, err := exec.Command(bin, "config", "check", f.configFile).CombinedOutput(); err != nil {
					t.Errorf("freeway config check %s: %v\n%s", f.configFile, err, out)
				}
			}

			// Listeners: every port other containers or the host may dial is
			// bound on all addresses; every such listener is declared.
			ls, err := f.listeners()
			if err != nil {
				t.Fatal(err)
			}
			bound := map[int]listener{}
			for _, l := range ls {
				host, portStr, err := net.SplitHostPort(l.addr)
				if err != nil {
					t.Errorf("%s %q: %v", l.what, l.addr, err)
					continue
				}
				port := atoi(portStr)
				bound[port] = l
				if !loopback(host) && !slices.Contains(s.expose, port) {
					t.Errorf("%s %s listens beyond the container but port %d is not in expose: %v", l.what, l.addr, port, s.expose)
				}
			}
			for _, port := range s.expose {
				l, ok := bound[port]
				if !ok {
					t.Errorf("expose %d: no listener of freeway %s is on that port (%v)", port, f.target, ls)
					continue
				}
				if host, _, _ := net.SplitHostPort(l.addr); loopback(host) {
					t.Errorf("port %d is exposed but %s is %s: unreachable from outside the container (listen on 0.0.0.0)", port, l.what, l.addr)
				}
			}

			// The healthcheck asks one of the process's own listeners.
			if len(s.health) == 0 {
				t.Errorf("no healthcheck (wget http://127.0.0.1:PORT/healthz is cheap)")
			} else if m := healthURL.FindStringSubmatch(strings.Join(s.health, " ")); m == nil {
				t.Errorf("healthcheck %v: no http://127.0.0.1:PORT/ URL found", s.health)
			} else if _, ok := bound[atoi(m[1])]; !ok {
				t.Errorf("healthcheck %v asks port %s, on which freeway %s does not listen (%v)", s.health, m[1], f.target, ls)
			}

			// Backends: real engines of this file, dialled by service name.
			for _, b := range f.backends() {
				scheme, hosts, rest, err := authority(b.url, b.defaultPort)
				if err != nil {
					t.Errorf("%s: %v", b.what, err)
					continue
				}
				switch scheme {
				case "file", "bolt", "inproc":
					t.Errorf("%s is %q, an embedded backend inside one container: use the compose engines", b.what, b.url)
					continue
				}
				if scheme == "hdfs" {
					_, query, _ := strings.Cut(rest, "?")
					if q, err := url.ParseQuery(query); err != nil || q.Get("datanode_hostname") != "true" {
						t.Errorf("%s %s: add ?datanode_hostname=true (DataNodes register by a name only the compose network resolves)", b.what, b.url)
					}
				}
				for _, h := range hosts {
					if err := dialTarget(p, s, b.what+" "+b.url, h); err != nil {
						t.Error(err)
					}
				}
			}
			if f.target == freeway.Agent {
				for _, up := range f.cfg.Agent.Upstream {
					if err := dialTarget(p, s, "agent.upstream", up); err != nil {
						t.Error(err)
					}
				}
			}

			// The agent's queue is what makes an acknowledgement durable: it
			// must be on a volume, not in the container's writable layer.
			if f.has(freeway.Agent) {
				q := f.cfg.Agent.QueueDir
				if q == "" {
					q = path.Join(f.cfg.DataDir, "agent")
				}
				if !path.IsAbs(q) {
					t.Errorf("agent queue %q: pass an absolute --data-dir", q)
				} else if !s.onMount(q) {
					t.Errorf("agent queue %s is not on a volume: acknowledged entries would not survive the container", q)
				}
			}
		})
	}

	// One pipeline per set of profiles: its components must agree on the
	// backends and the apps; pipelines that run together must not share
	// ZooKeeper roots, dfs directories or store tables.
	t.Run("pipelines", func(t *testing.T) {
		pipes := map[string][]*freewayProc{}
		for _, name := range names {
			if f := procs[name]; f != nil {
				key := strings.Join(f.svc.profiles, ",")
				pipes[key] = append(pipes[key], f)
			}
		}
		type claim struct{ pipe, url string }
		owners := map[string]map[string]claim{} // what -> resource -> claim
		for key, fs := range pipes {
			for _, what := range []string{"dfs", "store", "coord"} {
				var first *freewayProc
				for _, f := range fs {
					u := f.backend(what)
					if u == "" {
						continue
					}
					if first == nil {
						first = f
					} else if fu := first.backend(what); fu != u {
						t.Errorf("pipeline %q: %s is %s in %s but %s in %s", key, what, fu, first.svc.name, u, f.svc.name)
					}
					if owners[what] == nil {
						owners[what] = map[string]claim{}
					}
					if c, ok := owners[what][u]; ok && c.pipe != key {
						t.Errorf("pipelines %q and %q share %s %s: they would fight over the same buckets", c.pipe, key, what, u)
					}
					owners[what][u] = claim{key, u}
				}
			}
			var cfgFile string
			for _, f := range fs {
				if cfgFile == "" {
					cfgFile = f.configFile
				} else if f.configFile != cfgFile {
					t.Errorf("pipeline %q: %s reads apps from %s, others from %s", key, f.svc.name, f.configFile, cfgFile)
				}
				if f.target == freeway.Agent {
					for _, up := range f.cfg.Agent.Upstream {
						host, _, _ := net.SplitHostPort(up)
						if u := procs[host]; u == nil || !u.has(freeway.Calligraphus) || strings.Join(u.svc.profiles, ",") != key {
							t.Errorf("pipeline %q: agent %s ships to %s, which is not a calligraphus of the same pipeline", key, f.svc.name, up)
						}
					}
				}
			}
			// A pipeline needs every component somewhere.
			for _, m := range []string{freeway.Agent, freeway.Calligraphus, freeway.Puma, freeway.Serving} {
				found := false
				for _, f := range fs {
					found = found || f.has(m)
				}
				if !found {
					t.Errorf("pipeline %q has no %s", key, m)
				}
			}
		}
	})
}

// ---------------------------------------------------------------- Dockerfiles

type instruction struct {
	line int
	cmd  string // upper case
	args string
}

func parseDockerfile(name string) ([]instruction, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	var out []instruction
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || trimmed == "" && cur.Len() == 0 {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		out = append(out, instruction{start, strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	if cur.Len() > 0 {
		return nil, fmt.Errorf("%s: ends inside a continued line", name)
	}
	return out, nil
}

// words splits an instruction's arguments: JSON array form or plain words.
func words(args string) ([]string, error) {
	if strings.HasPrefix(args, "[") {
		var w []string
		err := json.Unmarshal([]byte(args), &w)
		return w, err
	}
	return strings.Fields(args), nil
}

// dockerignore is a .dockerignore's patterns, matched the way BuildKit
// does: the last pattern matching a path or one of its parents decides.
type dockerignore []struct {
	re     *regexp.Regexp
	negate bool
}

func loadDockerignore(name string) (dockerignore, error) {
	data, err := os.ReadFile(name)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var d dockerignore
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		neg := strings.HasPrefix(line, "!")
		pat := path.Clean(strings.TrimPrefix(strings.TrimPrefix(line, "!"), "/"))
		var re strings.Builder
		re.WriteString("^")
		for i := 0; i < len(pat); i++ {
			switch c := pat[i]; {
			case strings.HasPrefix(pat[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(pat[i:], "**"):
				re.WriteString(".*")
				i++
			case c == '*':
				re.WriteString("[^/]*")
			case c == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(string(c)))
			}
		}
		re.WriteString("$")
		rx, err := regexp.Compile(re.String())
		if err != nil {
			return nil, fmt.Errorf("%s: pattern %q: %v", name, line, err)
		}
		d = append(d, struct {
			re     *regexp.Regexp
			negate bool
		}{rx, neg})
	}
	return d, nil
}

func (d dockerignore) ignored(rel string) bool {
	rel = path.Clean(rel)
	if rel == "." {
		return false
	}
	excluded := false
	for _, p := range d {
		for q := rel; ; q = path.Dir(q) {
			if p.re.MatchString(q) {
				excluded = !p.negate
				break
			}
			if !strings.Contains(q, "/") {
				break
			}
		}
	}
	return excluded
}

// builds are the distinct (context, Dockerfile) pairs of the compose file.
func builds(p *project) []buildSpec {
	seen := map[buildSpec]bool{}
	var out []buildSpec
	for _, name := range p.names {
		if b := p.services[name].build; b != nil && !seen[*b] {
			seen[*b] = true
			out = append(out, *b)
		}
	}
	return out
}

func TestDockerfiles(t *testing.T) {
	p := loadProject(t)
	bs := builds(p)
	for _, want := range []string{freewayDockerfile, hbaseDockerfile} {
		if !slices.ContainsFunc(bs, func(b buildSpec) bool { return b.dockerfile == want }) {
			t.Errorf("no service builds %s", want)
		}
	}
	for _, b := range bs {
		t.Run(b.dockerfile, func(t *testing.T) {
			ins, err := parseDockerfile(filepath.Join(repoRoot, b.dockerfile))
			if err != nil {
				t.Fatal(err)
			}
			// BuildKit reads <Dockerfile>.dockerignore before the context's.
			ignoreFile := filepath.Join(repoRoot, b.dockerfile+".dockerignore")
			if _, err := os.Stat(ignoreFile); err != nil {
				ignoreFile = filepath.Join(repoRoot, b.context, ".dockerignore")
			}
			ign, err := loadDockerignore(ignoreFile)
			if err != nil {
				t.Fatal(err)
			}
			stages := map[string]bool{}
			var cmd []string
			for _, in := range ins {
				where := fmt.Sprintf("%s:%d: %s", b.dockerfile, in.line, in.cmd)
				w, err := words(in.args)
				if err != nil {
					t.Errorf("%s %s: %v", where, in.args, err)
					continue
				}
				var flags []string
				for len(w) > 0 && strings.HasPrefix(w[0], "--") {
					flags, w = append(flags, w[0]), w[1:]
				}
				switch in.cmd {
				case "FROM":
					if len(w) == 0 {
						t.Errorf("%s: no image", where)
						continue
					}
					img := w[0]
					switch {
					case stages[img] || img == "scratch":
					case strings.Contains(img, "$"):
						t.Errorf("%s %s: the test cannot check an image named by a build argument", where, img)
					default:
						if err := checkPinned(img); err != nil {
							t.Errorf("%s: %v", where, err)
						}
					}
					// Stages are usable from the next FROM on.
					if len(w) >= 3 && strings.EqualFold(w[1], "AS") {
						stages[w[2]] = true
					}
				case "COPY", "ADD":
					fromStage := slices.ContainsFunc(flags, func(f string) bool { return strings.HasPrefix(f, "--from=") })
					if len(w) < 2 {
						t.Errorf("%s: want SOURCE... DEST", where)
						continue
					}
					if fromStage {
						continue
					}
					for _, src := range w[:len(w)-1] {
						if strings.Contains(src, "://") {
							t.Errorf("%s %s: a download at build time is not checked (and not pinned)", where, src)
							continue
						}
						rel := path.Clean(path.Join(b.context, src))
						matches, _ := filepath.Glob(filepath.Join(repoRoot, filepath.FromSlash(rel)))
						if len(matches) == 0 {
							t.Errorf("%s %s: no such file in the build context %s", where, src, b.context)
							continue
						}
						ctxRel := path.Clean(src)
						if ign.ignored(ctxRel) {
							t.Errorf("%s %s: excluded from the build context by %s", where, src, ignoreFile)
						}
					}
				case "CMD":
					cmd = w
				}
			}

			if b.dockerfile == freewayDockerfile {
				// The image's default command parses.
				bin := freewayBinary(t)
				if len(cmd) == 0 {
					t.Errorf("no CMD")
				} else if out, err := exec.Command(bin, append(cmd, "--help")...).CombinedOutput(); err != nil {
					t.Errorf("CMD %v: %v\n%s", cmd, err, out)
				}
				// Nothing the build of ./cmd/freeway reads is excluded from
				// the context.
				for _, f := range buildInputs(t) {
					if ign.ignored(f) {
						t.Errorf("%s is needed by go build ./cmd/freeway but excluded by %s", f, ignoreFile)
					}
				}
			}
		})
	}
}

// buildInputs lists the files go build ./cmd/freeway reads from this
// module, relative to the repository root.
func buildInputs(t *testing.T) []string {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(goCmd, "list", "-deps", "-f",
		`{{if .Module}}{{if .Module.Main}}{{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{range .EmbedFiles}} {{.}}{{end}}{{end}}{{end}}`,
		"./cmd/freeway")
	cmd.Dir = repoRoot
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	files := []string{"go.mod", "go.sum"}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		dir, err := filepath.Rel(root, f[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range f[1:] {
			files = append(files, filepath.ToSlash(filepath.Join(dir, name)))
		}
	}
	if len(files) < 10 {
		t.Fatalf("go list found only %v", files)
	}
	return files
}

// ---------------------------------------------------------------- docker compose config

// composeCLI finds a docker compose client: the docker plugin or the
// standalone binary. `config` needs no engine.
func composeCLI() []string {
	if docker, err := exec.LookPath("docker"); err == nil {
		if exec.Command(docker, "compose", "version").Run() == nil {
			return []string{docker, "compose"}
		}
	}
	if dc, err := exec.LookPath("docker-compose"); err == nil {
		if exec.Command(dc, "version").Run() == nil {
			return []string{dc}
		}
	}
	return nil
}

func TestDockerComposeConfig(t *testing.T) {
	cli := composeCLI()
	if cli == nil {
		t.Skip("no docker compose client on PATH (docker compose or docker-compose)")
	}
	p := loadProject(t)
	profiles := map[string]bool{"": true}
	for _, s := range p.services {
		for _, prof := range s.profiles {
			profiles[prof] = true
		}
	}
	for prof := range profiles {
		args := append([]string{}, cli[1:]...)
		args = append(args, "-f", composeFile)
		if prof != "" {
			args = append(args, "--profile", prof)
		}
		args = append(args, "config", "-q")
		cmd := exec.Command(cli[0], args...)
		cmd.Dir = repoRoot
		// The file must work with no variable set.
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "FREEWAY_") && !strings.HasPrefix(kv, "COMPOSE_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s %s: %v\n%s", cli[0], strings.Join(args, " "), err, out)
		}
	}
}
