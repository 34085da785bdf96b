package hdfs

import (
	"errors"
	"os/user"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		url  string
		want config
	}{
		{"hdfs://127.0.0.1:9000/freeway", config{
			addrs: []string{"127.0.0.1:9000"}, root: "/freeway",
			dialTimeout: defaultDialTimeout, ioTimeout: defaultIOTimeout, connections: defaultConnections,
		}},
		{"hdfs://nn1:9000,nn2:9001/a/b/?user=etl", config{
			addrs: []string{"nn1:9000", "nn2:9001"}, root: "/a/b", user: "etl",
			dialTimeout: defaultDialTimeout, ioTimeout: defaultIOTimeout, connections: defaultConnections,
		}},
		{"hdfs://namenode/", config{
			addrs: []string{"namenode:8020"}, root: "/",
			dialTimeout: defaultDialTimeout, ioTimeout: defaultIOTimeout, connections: defaultConnections,
		}},
		{"hdfs://[::1]:9000,[::2]/x", config{
			addrs: []string{"[::1]:9000", "[::2]:8020"}, root: "/x",
			dialTimeout: defaultDialTimeout, ioTimeout: defaultIOTimeout, connections: defaultConnections,
		}},
		{"hdfs://h:1/x?dial_timeout=2s&io_timeout=150ms&block_size=1048576&datanode_hostname=true", config{
			addrs: []string{"h:1"}, root: "/x",
			dialTimeout: 2 * time.Second, ioTimeout: 150 * time.Millisecond,
			blockSize: 1 << 20, datanodeHostname: true, connections: defaultConnections,
		}},
		{"hdfs://h:1/x?namenode_connections=1", config{
			addrs: []string{"h:1"}, root: "/x",
			dialTimeout: defaultDialTimeout, ioTimeout: defaultIOTimeout, connections: 1,
		}},
	}
	for _, tc := range tests {
		got, err := parseURL(tc.url)
		if err != nil {
			t.Errorf("parseURL(%q): %v", tc.url, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseURL(%q) = %+v, want %+v", tc.url, got, tc.want)
		}
	}
}

func TestParseURLString(t *testing.T) {
	cfg, err := parseURL("hdfs://a:1,b:2/root/dir?user=x")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.String(), "hdfs://a:1,b:2/root/dir"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestParseURLErrors(t *testing.T) {
	tests := []struct {
		url  string
		want string // part of the error
	}{
		{"", "want hdfs://host:port/root"},
		{"file:///tmp/x", `scheme is "file", want hdfs`},
		{"hdfs:relative", "want hdfs://host:port/root"},
		{"hdfs:///freeway", "no NameNode address"},
		{"hdfs://127.0.0.1:9000", "no root directory"},
		{"hdfs://127.0.0.1:9000?user=x", "no root directory"},
		{"hdfs://h:9000/a/../b", "not a clean absolute path"},
		{"hdfs://h:9000//a", "not a clean absolute path"},
		{"hdfs://h:0/a", `bad port "0"`},
		{"hdfs://h:99999/a", `bad port "99999"`},
		{"hdfs://h:9000,/a", "empty NameNode address"},
		{"hdfs://:9000/a", "no host"},
		{"hdfs://h:9000/a?user=", "empty user"},
		{"hdfs://h:9000/a?user=a&user=b", "given 2 times"},
		{"hdfs://h:9000/a?timeout=1s", `unknown parameter "timeout"`},
		{"hdfs://h:9000/a?io_timeout=soon", "not a positive duration"},
		{"hdfs://h:9000/a?dial_timeout=-1s", "not a positive duration"},
		{"hdfs://h:9000/a?block_size=1000", "not a positive multiple of 512"},
		{"hdfs://h:9000/a?datanode_hostname=maybe", "not a bool"},
		{"hdfs://h:9000/a?namenode_connections=0", "not a number from 1 to 64"},
		{"hdfs://h:9000/a?namenode_connections=65", "not a number from 1 to 64"},
		{"hdfs://h:9000/a#frag", "unexpected fragment"},
		{"hdfs://h:9000/a b%zz", "parse url"},
		{"hdfs://h:9000/a?user=%zz", "parameters"},
		{"hdfs://[::1/a", "missing ']'"},
	}
	for _, tc := range tests {
		_, err := parseURL(tc.url)
		if err == nil {
			t.Errorf("parseURL(%q) succeeded", tc.url)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseURL(%q) = %q, want it to mention %q", tc.url, err, tc.want)
		}
	}
}

func TestParseURLHidesPassword(t *testing.T) {
	for _, u := range []string{"hdfs://bob:s3cret@h:9000/a", "hdfs://bob:s3cret@h:9000/a%zz", "hdfs://bob:s3cret@[::1/a"} {
		_, err := parseURL(u)
		if err == nil {
			t.Fatalf("parseURL(%q) accepted user information", u)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error repeats the password: %v", err)
		}
	}
}

func TestOpenBadURL(t *testing.T) {
	_, err := Open("hdfs://127.0.0.1:9000")
	if err == nil || !strings.HasPrefix(err.Error(), "open hdfs: ") {
		t.Fatalf("Open without root = %v, want an error starting with %q", err, "open hdfs: ")
	}
}

func TestResolveUser(t *testing.T) {
	env := func(m map[string]string) func(string) string {
		return func(k string) string { return m[k] }
	}
	osUser := func() (*user.User, error) { return &user.User{Username: "osuser"}, nil }
	noUser := func() (*user.User, error) { return nil, errors.New("no passwd entry") }

	tests := []struct {
		name    string
		fromURL string
		env     map[string]string
		current func() (*user.User, error)
		want    string
		wantErr bool
	}{
		{"url wins", "etl", map[string]string{"HADOOP_USER_NAME": "hadoop"}, osUser, "etl", false},
		{"env before os", "", map[string]string{"HADOOP_USER_NAME": "hadoop"}, osUser, "hadoop", false},
		{"os user", "", nil, osUser, "osuser", false},
		{"no user at all", "", nil, noUser, "", true},
	}
	for _, tc := range tests {
		got, err := resolveUser(tc.fromURL, env(tc.env), tc.current)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("%s: resolveUser = %q, %v; want %q, error %v", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}
