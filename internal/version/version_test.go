package version

import (
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestGet(t *testing.T) {
	// A test binary has no module version.
	if v := Get(); v != Dev {
		t.Fatalf("Get() = %q, want %q", v, Dev)
	}
	if v := Or(""); v != Dev {
		t.Fatalf("Or(\"\") = %q", v)
	}
	if v := Or("v1.2.3"); v != "v1.2.3" {
		t.Fatalf("Or(v1.2.3) = %q", v)
	}
}

func TestBuildInfo(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(BuildInfo("v1.2.3"))
	want := `# HELP freeway_build_info Always 1; its labels say which build runs (version, Go version).
# TYPE freeway_build_info gauge
freeway_build_info{goversion="` + runtimeVersion() + `",version="v1.2.3"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "freeway_build_info"); err != nil {
		t.Fatal(err)
	}
}

func runtimeVersion() string { return runtime.Version() }
