package freeway

import (
	"fmt"
	"net/url"
	"sort"
	"strings"

	"github.com/goccy/go-yaml"
)

// Options is the effective configuration as flat key -> value strings,
// as fb303's getOptions reports it: "agent.listen", "apps[0].name",
// "categories.access.buckets"; a list of scalars is one comma-separated
// value. Secrets are left out: passwords in backend URLs, and any value
// whose key or URL parameter names a password, secret or token, but for
// keys naming files (tls.key_file, auth.query_tokens_file), whose values
// are paths: the files' contents are never reported.
func (p *Process) Options() map[string]string {
	return flatOptions(p.cfg)
}

func flatOptions(cfg Config) map[string]string {
	out := map[string]string{}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		out["error"] = "encode configuration: " + err.Error()
		return out
	}
	var tree any
	if err := yaml.Unmarshal(b, &tree); err != nil {
		out["error"] = "decode configuration: " + err.Error()
		return out
	}
	flatten(out, "", tree)
	return out
}

func flatten(out map[string]string, key string, v any) {
	join := func(k string) string {
		if key == "" {
			return k
		}
		return key + "." + k
	}
	switch v := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			flatten(out, join(k), v[k])
		}
	case []any:
		scalars := make([]string, 0, len(v))
		for i, e := range v {
			switch e.(type) {
			case map[string]any, []any:
				flatten(out, fmt.Sprintf("%s[%d]", key, i), e)
			default:
				scalars = append(scalars, redact(key, scalar(e)))
			}
		}
		if len(scalars) == len(v) {
			out[key] = strings.Join(scalars, ",")
		}
	default:
		out[key] = redact(key, scalar(v))
	}
}

func scalar(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

func secretName(s string) bool {
	s = strings.ToLower(s)
	for _, w := range []string{"password", "passwd", "secret", "token", "credential"} {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

// redact hides a secret value, a URL's password and its secret-looking
// parameters.
func redact(key, v string) string {
	if k := key[strings.LastIndexByte(key, '.')+1:]; secretName(k) && !strings.HasSuffix(k, "_file") && v != "" {
		return "(redacted)"
	}
	if !strings.Contains(v, "://") {
		return v
	}
	u, err := url.Parse(v)
	if err != nil {
		return "(unparsable URL, redacted)"
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "redacted")
	}
	q := u.Query()
	changed := false
	for k := range q {
		if secretName(k) {
			q.Set(k, "redacted")
			changed = true
		}
	}
	if changed {
		u.RawQuery = q.Encode()
	}
	return u.String()
}
