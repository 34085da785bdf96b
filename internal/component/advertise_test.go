package component

import (
	"net"
	"strings"
	"testing"
)

func TestAdvertisedAddr(t *testing.T) {
	tcp := func(s string) net.Addr {
		a, err := net.ResolveTCPAddr("tcp", s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	for _, tc := range []struct {
		listen, advertise, want, err string
	}{
		{"127.0.0.1:1464", "", "127.0.0.1:1464", ""},
		{"10.1.2.3:99", "", "10.1.2.3:99", ""},
		{"[::1]:1464", "", "[::1]:1464", ""},
		{"0.0.0.0:1464", "writer-1.example", "writer-1.example:1464", ""},
		{"[::]:7", "fd00::1", "[fd00::1]:7", ""},
		{"[::]:7", "[fd00::1]", "[fd00::1]:7", ""},
		{"127.0.0.1:5", "h", "h:5", ""},
		{"0.0.0.0:1464", "", "", "--advertise"},
		{"[::]:1464", "", "", "--advertise"},
		{"0.0.0.0:1464", "h:80", "", "host name"},
	} {
		got, err := AdvertisedAddr(tcp(tc.listen), tc.advertise)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("AdvertisedAddr(%s, %q) = %q, %v; want error containing %q", tc.listen, tc.advertise, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("AdvertisedAddr(%s, %q) = %q, %v; want %q", tc.listen, tc.advertise, got, err, tc.want)
		}
	}
}
