package registry

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
)

// refusedByDefault are node URLs the default allowlist refuses, with a
// part of the reason. Nothing here is ever dialled: the allowlist only
// parses URLs.
var refusedByDefault = map[string]string{
	"http://169.254.169.254:80":               "cloud metadata",
	"http://169.254.169.254":                  "cloud metadata",
	"https://169.254.170.2:443":               "cloud metadata",
	"http://[fd00:ec2::254]:80":               "cloud metadata",
	"http://100.100.100.200:80":               "cloud metadata",
	"http://168.63.129.16:80":                 "cloud metadata",
	"http://[::ffff:169.254.169.254]:80":      "cloud metadata",
	"http://[::ffff:a9fe:a9fe]:80":            "cloud metadata",
	"http://[64:ff9b::a9fe:a9fe]:80":          "cloud metadata",
	"http://169.254.10.20:8000":               "link-local",
	"http://[fe80::1]:8000":                   "link-local",
	"http://[fe80::1%25eth0]:8000":            "link-local",
	"http://metadata.google.internal:80":      "metadata host",
	"http://METADATA.google.internal.:80":     "metadata host",
	"http://metadata:80":                      "metadata host",
	"http://instance-data:80":                 "metadata host",
	"http://2852039166:80":                    "not standard",
	"http://0xa9fea9fe:80":                    "not standard",
	"http://0251.0376.0251.0376:80":           "not standard",
	"http://169.254.169.254.:80":              "not standard",
	"ftp://10.0.0.1:21":                       "scheme",
	"gopher://metadata.google.internal:70":    "scheme",
	"http://user:secret@169.254.169.254:8000": "cloud metadata",
}

// allowedByDefault are ordinary node URLs.
var allowedByDefault = []string{
	"http://127.0.0.1:8000",
	"http://[::1]:8000",
	"http://10.0.0.7:8000",
	"https://gpu-1.example.com",
	"http://vllm:8000",
	"http://node1:9000/v1",
	"http://192.168.1.20:11434",
	"http://[2001:db8::7]:8000",
	"http://metadata.example.com:80", // only the exact metadata names are refused
}

func TestNodeAllowlistDefault(t *testing.T) {
	for _, l := range []*NodeAllowlist{nil, {}} {
		a, err := l.compile()
		require.NoError(t, err)
		for u, reason := range refusedByDefault {
			err := a.check(&Node{ID: "n", URL: u})
			require.ErrorContains(t, err, reason, u)
		}
		for _, u := range allowedByDefault {
			require.NoError(t, a.check(&Node{ID: "n", URL: u}), u)
		}
	}
}

func TestNodeAllowlistRestricts(t *testing.T) {
	l := &NodeAllowlist{
		Networks:     []string{"10.0.0.0/8", "fd00:1::/64", "192.168.1.5"},
		Hosts:        []string{"*.gpu.internal", "vllm-*"},
		Schemes:      []string{"https"},
		DenyNetworks: []string{"10.0.0.13"},
		DenyHosts:    []string{"bad.gpu.internal"},
	}
	a, err := l.compile()
	require.NoError(t, err)
	for u, ok := range map[string]bool{
		"https://10.1.2.3:8000":            true,
		"https://[fd00:1::5]:8000":         true,
		"https://192.168.1.5:8000":         true,
		"https://a.gpu.internal":           true,
		"https://A.GPU.internal.":          true,
		"https://vllm-3:8000":              true,
		"http://10.1.2.3:8000":             false, // scheme
		"https://10.0.0.13:8000":           false, // deny_networks
		"https://192.168.1.6:8000":         false, // not in networks
		"https://127.0.0.1:8000":           false,
		"https://bad.gpu.internal":         false, // deny_hosts
		"https://a.b.gpu.internal":         false, // * is one label
		"https://gpu.internal":             false,
		"https://vllm-3.evil.example":      false,
		"https://metadata.google.internal": false,
	} {
		err := a.check(&Node{ID: "n", URL: u})
		require.Equal(t, ok, err == nil, "%s: %v", u, err)
	}

	// Link-local networks can be allowed; metadata endpoints cannot.
	a, err = (&NodeAllowlist{AllowLinkLocal: true}).compile()
	require.NoError(t, err)
	require.NoError(t, a.check(&Node{URL: "http://169.254.10.20:8000"}))
	require.NoError(t, a.check(&Node{URL: "http://[fe80::1]:8000"}))
	require.ErrorContains(t, a.check(&Node{URL: "http://169.254.169.254:80"}), "cloud metadata")
	a, err = (&NodeAllowlist{Networks: []string{"169.254.0.0/16"}, AllowLinkLocal: true}).compile()
	require.NoError(t, err)
	require.ErrorContains(t, a.check(&Node{URL: "http://169.254.169.254:80"}), "cloud metadata")
}

func TestNodeAllowlistErrors(t *testing.T) {
	for l, want := range map[*NodeAllowlist]string{
		{Networks: []string{"10.0.0.0/33"}}:   "networks",
		{DenyNetworks: []string{"nonsense"}}:  "deny_networks",
		{Hosts: []string{"[a-"}}:              "hosts",
		{DenyHosts: []string{"x[", "ok"}}:     "deny_hosts",
		{Schemes: []string{"http", "gopher"}}: "schemes",
	} {
		_, err := l.compile()
		require.ErrorContains(t, err, "node_allowlist: "+want)
	}
}

func TestNodeAllowlistCaddyfile(t *testing.T) {
	var a App
	require.NoError(t, a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`ai_lb {
		node_allowlist {
			networks 10.0.0.0/8 fd00::/8
			networks 192.168.1.5
			hosts *.gpu.internal
			schemes http https
			deny_networks 127.0.0.0/8 ::1/128
			deny_hosts load_balancer
			allow_link_local
		}
	}`)))
	require.Equal(t, &NodeAllowlist{
		Networks: []string{"10.0.0.0/8", "fd00::/8", "192.168.1.5"}, Hosts: []string{"*.gpu.internal"},
		Schemes: []string{"http", "https"}, DenyNetworks: []string{"127.0.0.0/8", "::1/128"},
		DenyHosts: []string{"load_balancer"}, AllowLinkLocal: true,
	}, a.NodeAllowlist)

	for input, want := range map[string]string{
		"node_allowlist {\n networks 10.0.0.0/40\n}":    "parsing node_allowlist networks",
		"node_allowlist {\n hosts [x\n}":                "parsing node_allowlist hosts",
		"node_allowlist {\n schemes ftp\n}":             "parsing node_allowlist schemes",
		"node_allowlist {\n networks\n}":                "wrong argument count",
		"node_allowlist {\n allow_link_local yes\n}":    "wrong argument count",
		"node_allowlist {\n resolve\n}":                 "unrecognized node_allowlist option 'resolve'",
		"node_allowlist 10.0.0.0/8":                     "wrong argument count",
		"node_allowlist {\n deny_networks 1.2.3.4/x\n}": "parsing node_allowlist deny_networks",
		"node_allowlist {\n deny_hosts a[\n}":           "parsing node_allowlist deny_hosts",
	} {
		var a App
		err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser("ai_lb {\n" + input + "\n}"))
		require.ErrorContains(t, err, want, input)
	}
}

// TestWatcherRefusesNodesOutsideAllowlist: with the app's admission, nodes
// at metadata, link-local and numeric-trick addresses never reach the
// snapshot, their models stay unknown, and each is logged once with its ID
// however often it heartbeats or is re-read.
func TestWatcherRefusesNodesOutsideAllowlist(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	list, err := (*NodeAllowlist)(nil).compile()
	require.NoError(t, err)
	logger, logs := observedLogger(t)
	w := NewWatcher(e.client, WatcherOptions{Resync: 100 * time.Millisecond, Admit: newAdmission(list, logger).admit}, logger)
	t.Cleanup(w.Close)

	refused := map[string]string{
		"imds":     "http://169.254.169.254:80",
		"imds6":    "http://[fd00:ec2::254]:80",
		"linklo":   "http://[fe80::1]:8000",
		"gce":      "http://metadata.google.internal:80",
		"dotless":  "http://2852039166:80",
		"v4mapped": "http://[::ffff:169.254.169.254]:80",
	}
	for id, u := range refused {
		require.NoError(t, e.client.Register(ctx, Node{ID: id, URL: u, Models: []string{"secret-model"}, TTLMillis: 60_000}))
	}
	require.NoError(t, e.client.Register(ctx, Node{ID: "good", URL: "http://127.0.0.1:9001", Models: []string{"m"}, TTLMillis: 60_000}))
	waitFor(t, func() bool { return hasID(w, "good") }, "the allowed node")

	calls := e.hgetallCalls()
	for range 3 {
		for id, u := range refused { // heartbeats
			require.NoError(t, e.client.Register(ctx, Node{ID: id, URL: u, Models: []string{"secret-model"}, TTLMillis: 60_000}))
		}
	}
	waitFor(t, func() bool { return e.hgetallCalls() >= calls+3 }, "three resyncs")
	snap := w.Snapshot()
	require.Equal(t, []string{"good"}, ids(snap))
	require.False(t, snap.Known("secret-model"))
	require.Empty(t, snap.ServingModel("secret-model"))
	for id := range refused {
		require.Equal(t, 1, countLogs(logs, "refusing registry entry outside the node allowlist: not routed, not listed", id), id)
	}
	// The log names the node, never a credential in its URL.
	require.NoError(t, e.client.Register(ctx, Node{ID: "creds", URL: "http://user:hunter2@169.254.169.254:80", Models: []string{"secret-model"}}))
	waitFor(t, func() bool {
		return countLogs(logs, "refusing registry entry outside the node allowlist: not routed, not listed", "creds") == 1
	}, "the refusal of the node with credentials")
	for _, entry := range logs.All() {
		for _, f := range entry.Context {
			require.NotContains(t, f.String, "hunter2")
		}
	}
	require.Equal(t, []string{"good"}, ids(w.Snapshot()))
}

func TestAdmissionLogsOncePerEntry(t *testing.T) {
	list, err := (&NodeAllowlist{}).compile()
	require.NoError(t, err)
	logger, logs := observedLogger(t)
	adm := newAdmission(list, logger)
	const msg = "refusing registry entry outside the node allowlist: not routed, not listed"
	for range 3 {
		require.False(t, adm.admit(&Node{ID: "a", URL: "http://169.254.169.254"}))
	}
	require.Equal(t, 1, countLogs(logs, msg, "a"))
	require.False(t, adm.admit(&Node{ID: "a", URL: "http://169.254.170.2"})) // a new entry: logged again
	require.Equal(t, 2, countLogs(logs, msg, "a"))
	require.True(t, adm.admit(&Node{ID: "a", URL: "http://10.0.0.1"}))
	require.False(t, adm.admit(&Node{ID: "a", URL: "http://169.254.170.2"})) // refused again after being allowed
	require.Equal(t, 3, countLogs(logs, msg, "a"))
	entry := logs.FilterMessage(msg).All()[0]
	require.Equal(t, zap.WarnLevel, entry.Level)
}

func TestRedactedError(t *testing.T) {
	// A URL that does not parse: url.Parse's own error would quote it.
	_, err := Open("redis://ai-lb:s3cr%zzet@redis:6379", "")
	require.Error(t, err)
	red := redactedError(err, "redis://ai-lb:s3cr%zzet@redis:6379")
	require.NotContains(t, red.Error(), "s3cr")
	require.Contains(t, red.Error(), "invalid URL escape")

	red = redactedError(errors.New("dial redis://ai-lb:hunter2@redis:6379 failed"), "redis://ai-lb:hunter2@redis:6379")
	require.Equal(t, "dial redis://ai-lb:xxxxx@redis:6379 failed", red.Error())
	plain := errors.New("no password here")
	require.Same(t, plain, redactedError(plain, "redis://redis:6379"))
	require.False(t, strings.Contains(redactedError(errors.New("x"), "::bad").Error(), "::bad"))
}
