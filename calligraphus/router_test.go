package calligraphus

import (
	"fmt"
	"sync"
	"testing"

	"github.com/freeway-dev/freeway/internal/apps"
)

// userRoute routes a JSON category by its "user" field, as an app with
// shard_key [user] does.
func userRoute(t *testing.T, category string, buckets int) Route {
	t.Helper()
	app, err := apps.Compile(apps.Spec{
		Name: "by_user", Category: category, Format: "json",
		GroupBy: []string{"user"}, Aggregates: []apps.AggregateSpec{{Fn: "count"}},
	}, "$.apps[0]")
	if err != nil {
		t.Fatal(err)
	}
	return Route{Buckets: buckets, NewKeyFunc: func() func([]byte) (string, error) {
		return app.NewKeyExtractor([]string{"user"}).Key
	}}
}

func userMsg(user string, i int) string {
	return fmt.Sprintf(`{"user": %q, "i": %d}`, user, i)
}

func TestRouterStableAndSpread(t *testing.T) {
	route := userRoute(t, "access", 8)
	r1 := NewRouter(1, map[string]Route{"access": route})
	r2 := NewRouter(1, map[string]Route{"access": route})
	counts := make([]int, 8)
	for i := 0; i < 800; i++ {
		m := []byte(userMsg(fmt.Sprintf("u%d", i), 0))
		b1, ok1 := r1.Bucket("access", m)
		b2, ok2 := r2.Bucket("access", []byte(userMsg(fmt.Sprintf("u%d", i), 99)))
		if !ok1 || !ok2 || b1 != b2 {
			t.Fatalf("user u%d: bucket %d/%v in one router, %d/%v in another", i, b1, ok1, b2, ok2)
		}
		if want := BucketOf(apps.EncodeKey([]string{fmt.Sprintf("u%d", i)}), 8); b1 != want {
			t.Fatalf("user u%d: bucket %d, BucketOf says %d", i, b1, want)
		}
		counts[b1]++
	}
	for b, n := range counts {
		if n < 50 {
			t.Errorf("bucket %d got %d of 800 keys: %v", b, n, counts)
		}
	}
	if b, ok := r1.Bucket("access", []byte("not json")); b != 0 || ok {
		t.Errorf("unparseable key: bucket %d ok %v, want 0 false", b, ok)
	}
	if b, ok := r1.Bucket("unrouted", []byte(userMsg("x", 1))); b != 0 || !ok {
		t.Errorf("unrouted category: bucket %d ok %v, want 0 true", b, ok)
	}
	if r1.Buckets("access") != 8 || r1.Buckets("unrouted") != 1 || NewRouter(0, nil).Buckets("x") != 1 {
		t.Errorf("bucket counts %d %d", r1.Buckets("access"), r1.Buckets("unrouted"))
	}
	one := NewRouter(4, map[string]Route{"one": {Buckets: 1, NewKeyFunc: route.NewKeyFunc}})
	if b, ok := one.Bucket("one", []byte("not json")); b != 0 || !ok {
		t.Errorf("one bucket: %d %v", b, ok)
	}
	// Concurrent use shares pooled key functions.
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				m := []byte(userMsg(fmt.Sprintf("u%d", i), g))
				if b, _ := r1.Bucket("access", m); b != BucketOf(apps.EncodeKey([]string{fmt.Sprintf("u%d", i)}), 8) {
					t.Errorf("concurrent routing of u%d: %d", i, b)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestRouterScanRoutesAsTheFullParse: a route that reads its JSON key
// fields itself sends every line the full parse takes to the bucket the
// full parse does: lines it reads alone, lines it leaves to the full
// parse; and lines neither can read to bucket 0, unroutable. A line the
// full parse refuses only after the key's fields goes where its key says
// (the scan does not read on), and is taken all the same.
func TestRouterScanRoutesAsTheFullParse(t *testing.T) {
	full := userRoute(t, "access", 8)
	scan := full
	scan.JSONFields = []string{"user"}
	rFull := NewRouter(1, map[string]Route{"access": full})
	rScan := NewRouter(1, map[string]Route{"access": scan})
	for _, c := range []struct{ line, key string }{
		{`{"user":"x",}`, "x"},
		{`{"user":"x"} trailing`, "x"},
		{`{"user":"x","n":1.2.3,"a":[`, "x"},
		{`{"a":1,"user":7,"b":tru}`, "7"},
	} {
		if b, ok := rFull.Bucket("access", []byte(c.line)); b != 0 || ok {
			t.Fatalf("line %q: bucket %d/%v by the full parse, want 0, unroutable", c.line, b, ok)
		}
		if b, ok := rScan.Bucket("access", []byte(c.line)); b != BucketOf(c.key, 8) || !ok {
			t.Fatalf("line %q: bucket %d/%v by the scan, want %d (key %q)", c.line, b, ok, BucketOf(c.key, 8), c.key)
		}
	}
	lines := []string{`not json`, `{"user":"a\"b"}`, `{"user":{"id":1}}`, `{"user":null}`, `{"user":12.50}`, `{"user",}`, `{"a":tru,"user":"x"}`, `{"user"`, `[]`}
	for i := 0; i < 500; i++ {
		lines = append(lines, userMsg(fmt.Sprintf("u%d", i), i))
	}
	read := 0
	kr := rScan.routes["access"].readers.Get().(*keyReader)
	for _, l := range lines {
		b1, ok1 := rFull.Bucket("access", []byte(l))
		b2, ok2 := rScan.Bucket("access", []byte(l))
		if b1 != b2 || ok1 != ok2 {
			t.Fatalf("line %q: bucket %d/%v by the full parse, %d/%v by the scan", l, b1, ok1, b2, ok2)
		}
		if _, r := kr.scan.appendKey(nil, []byte(l)); r == scanKey {
			read++
		}
	}
	if read < 500 {
		t.Fatalf("the scan read %d of %d lines alone; every plain line is its own", read, len(lines))
	}
}
