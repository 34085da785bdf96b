package freeway

import "testing"

// TestWriterHasItsOwnDFSClient: in a process that also runs Puma (and
// retention, the copier), the writer gets a dfs client of its own, so
// that on HDFS its calls on an acknowledgement's path do not wait for a
// NameNode connection behind Puma's listings and opens; a writer alone
// uses the process's one client.
func TestWriterHasItsOwnDFSClient(t *testing.T) {
	all := startWith(t, testConfig(t.TempDir()), All, Options{AdminListen: "off"})
	if all.p.fs == nil || all.p.wfs == nil || all.p.wfs == all.p.fs {
		t.Errorf("freeway all: the writer's dfs %p, the process's %p; want two clients", all.p.wfs, all.p.fs)
	}
	alone := startWith(t, testConfig(t.TempDir()), Calligraphus, Options{AdminListen: "127.0.0.1:0"})
	if alone.p.wfs != nil || alone.p.fs == nil {
		t.Errorf("freeway calligraphus: the writer's own dfs %p, the process's %p; want the process's alone", alone.p.wfs, alone.p.fs)
	}
}
