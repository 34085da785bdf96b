package zkcoord

import (
	"fmt"
	"strings"
)

// checkName applies the coord naming rule: slash-separated, non-empty,
// no leading or trailing slash, no empty component.
func checkName(kind, name string) error {
	if name == "" || strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") || strings.Contains(name, "//") {
		return fmt.Errorf("invalid %s name %q", kind, name)
	}
	return nil
}

// checkMember refuses member ids that are empty or hold a slash.
func checkMember(id string) error {
	if id == "" || strings.Contains(id, "/") {
		return fmt.Errorf("invalid member id %q", id)
	}
	return nil
}

// escape maps a coord name to a single znode name.
//
// Names are not mapped to nested znodes ("a/b" to .../a/b) on purpose: a
// lease node is ephemeral and ephemeral nodes cannot have children, so the
// leases "a" and "a/b" could not both exist, and the persistent directory
// created for "a/b" would make "a" look held forever. One flat level avoids
// both. Every byte outside [A-Za-z0-9._~-] becomes %XX, so "/" cannot
// appear, the result is plain ASCII (ZooKeeper refuses some code points),
// and because "%" itself is escaped the mapping is injective. "." and "..",
// which ZooKeeper refuses as path components, are escaped too.
func escape(name string) string {
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		if unreserved(c) {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	switch s := b.String(); s {
	case ".":
		return "%2E"
	case "..":
		return "%2E%2E"
	default:
		return s
	}
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == '.' || c == '~'
}

// unescape inverts escape. It refuses anything escape cannot produce, so a
// foreign znode dropped into one of our directories is recognised as such.
func unescape(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case unreserved(c):
			b.WriteByte(c)
		case c == '%' && i+2 < len(s) && isUpperHex(s[i+1]) && isUpperHex(s[i+2]):
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
		default:
			return "", fmt.Errorf("znode name %q was not written by zkcoord", s)
		}
	}
	name := b.String()
	if escape(name) != s {
		return "", fmt.Errorf("znode name %q was not written by zkcoord", s)
	}
	return name, nil
}

func isUpperHex(c byte) bool { return '0' <= c && c <= '9' || 'A' <= c && c <= 'F' }

func unhex(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'A' + 10
}
