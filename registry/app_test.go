package registry

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/stretchr/testify/require"
)

func TestAppUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    App
		wantErr string
	}{
		{
			name: "full block",
			input: `ai_lb {
				redis           redis://user:pw@redis.internal:6380/2
				prefix          prod
				resync_interval 2s
				legacy_keys
			}`,
			want: App{
				Redis:          "redis://user:pw@redis.internal:6380/2",
				Prefix:         "prod",
				ResyncInterval: caddy.Duration(2 * time.Second),
				LegacyKeys:     true,
			},
		},
		{name: "bare option", input: `ai_lb`, want: App{}},
		{name: "empty block", input: "ai_lb {\n}", want: App{}},
		{name: "placeholder", input: "ai_lb {\n redis {env.REDIS_URL}\n}", want: App{Redis: "{env.REDIS_URL}"}},
		{name: "unknown option", input: "ai_lb {\n redis_url redis://x\n}", wantErr: "unrecognized ai_lb option 'redis_url'"},
		{name: "missing redis", input: "ai_lb {\n redis\n}", wantErr: "wrong argument count"},
		{name: "missing prefix", input: "ai_lb {\n prefix\n}", wantErr: "wrong argument count"},
		{name: "missing resync_interval", input: "ai_lb {\n resync_interval\n}", wantErr: "wrong argument count"},
		{name: "extra argument", input: "ai_lb {\n prefix a b\n}", wantErr: "wrong argument count"},
		{name: "argument to legacy_keys", input: "ai_lb {\n legacy_keys yes\n}", wantErr: "wrong argument count"},
		{name: "argument to ai_lb", input: "ai_lb redis://x", wantErr: "wrong argument count"},
		{name: "bad duration", input: "ai_lb {\n resync_interval soon\n}", wantErr: "parsing resync_interval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a App
			err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, a)
		})
	}
}

func newCaddyContext(t *testing.T) caddy.Context {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	return ctx
}

func TestAppProvisionErrors(t *testing.T) {
	tests := []struct {
		name    string
		app     App
		wantErr string
	}{
		{"unparsable url", App{Redis: "redis://127.0.0.1:port"}, "redis: "},
		{"bad escape", App{Redis: "redis://%zz"}, "redis: "},
		{"not redis", App{Redis: "http://127.0.0.1:6379"}, "redis: "},
		{"bad sentinel url", App{Redis: "http://127.0.0.1:6379?master_name=m"}, "redis: "},
		{"negative resync", App{Redis: "redis://127.0.0.1:6379", ResyncInterval: -1}, "resync_interval: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := tt.app
			err := a.Provision(newCaddyContext(t))
			require.Error(t, err)
			require.True(t, strings.HasPrefix(err.Error(), tt.wantErr), "error %q should name the field %q", err, tt.wantErr)
			require.Nil(t, a.Watcher())
			require.NoError(t, a.Cleanup())
		})
	}
}

// TestAppProvision checks that configs with the same settings share one
// watcher, that it follows the registry, and that it stops when the last
// config is cleaned up.
func TestAppProvision(t *testing.T) {
	e := newTestEnv(t)
	t.Setenv("AI_LB_TEST_REDIS", e.redis.URL())
	ctx := newCaddyContext(t)

	a1 := &App{Redis: "{env.AI_LB_TEST_REDIS}", Prefix: "test", ResyncInterval: caddy.Duration(200 * time.Millisecond)}
	require.NoError(t, a1.Provision(ctx))
	a2 := &App{Redis: e.redis.URL(), Prefix: "test", ResyncInterval: caddy.Duration(200 * time.Millisecond)}
	require.NoError(t, a2.Provision(ctx))
	other := &App{Redis: e.redis.URL(), Prefix: "other", ResyncInterval: caddy.Duration(200 * time.Millisecond)}
	require.NoError(t, other.Provision(ctx))

	require.NotNil(t, a1.Watcher())
	require.Same(t, a1.Watcher(), a2.Watcher(), "a reload with the same settings reuses the watcher")
	require.NotSame(t, a1.Watcher(), other.Watcher())

	require.NoError(t, e.client.Register(context.Background(), Node{ID: "n", URL: "http://127.0.0.1:9001", Models: []string{"m"}}))
	waitFor(t, func() bool { return len(a1.Snapshot().ServingModel("m")) == 1 }, "the app to see the node")
	require.Empty(t, other.Snapshot().Members, "another prefix is another registry")

	require.NoError(t, other.Cleanup())
	require.NoError(t, a1.Cleanup())
	require.NoError(t, a1.Cleanup(), "a second Cleanup is a no-op")
	// a2 still uses the watcher: it keeps following the registry.
	require.NoError(t, e.client.Register(context.Background(), Node{ID: "n2", URL: "http://127.0.0.1:9002", Models: []string{"m"}}))
	waitFor(t, func() bool { return len(a2.Snapshot().ServingModel("m")) == 2 }, "the shared watcher to live on")
	require.NoError(t, a2.Cleanup())

	// The last user is gone: a new config gets a new watcher.
	a3 := &App{Redis: e.redis.URL(), Prefix: "test", ResyncInterval: caddy.Duration(200 * time.Millisecond)}
	require.NoError(t, a3.Provision(ctx))
	t.Cleanup(func() { a3.Cleanup() })
	require.NotSame(t, a2.Watcher(), a3.Watcher())
}
