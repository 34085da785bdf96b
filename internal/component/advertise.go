package component

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// AdvertisedAddr is the address other processes reach a listener bound
// at listen by ("host:port", as coord group members publish it). A
// listener bound to a specific address advertises that address; one
// bound to every interface (0.0.0.0, [::] or an empty host) advertises
// advertise (--advertise, a host name or IP without port) with the
// listener's port, and without it is an error: there is no single
// address of "every interface" another machine could dial. A given
// advertise wins over a specific bind address too (a listener behind
// NAT, say).
func AdvertisedAddr(listen net.Addr, advertise string) (string, error) {
	if listen == nil {
		return "", errors.New("advertise: no listener address")
	}
	host, port, err := net.SplitHostPort(listen.String())
	if err != nil {
		return "", fmt.Errorf("advertise listener %s: %w", listen, err)
	}
	if advertise != "" {
		h := strings.TrimSuffix(strings.TrimPrefix(advertise, "["), "]")
		if strings.ContainsAny(h, "/ []") || strings.Contains(h, ":") && net.ParseIP(h) == nil {
			return "", fmt.Errorf("advertise %q: want a host name or IP address, without port", advertise)
		}
		return net.JoinHostPort(h, port), nil
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		return "", fmt.Errorf("listener %s binds every interface: set --advertise HOST (the host name or IP address other processes reach this one by)", listen)
	}
	return net.JoinHostPort(host, port), nil
}
