package deploy

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ai-lb/ai-lb/registry"
)

// Passwords the tests give the compose files' variables.
var testSecrets = map[string]string{
	"AI_LB_REDIS_PASSWORD":       "balancer-0123456789abcdef",
	"AI_LB_AGENT_REDIS_PASSWORD": "agent-0123456789abcdef",
	"AI_LB_API_KEY":              "sk-ailb-0123456789abcdef",
}

// interpolation is a compose variable: ${NAME}, ${NAME:?message} and the like.
var interpolation = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}`)

// interpolate substitutes compose variables as `docker compose` does with
// the environment given, failing on a required one that is missing.
func interpolate(t *testing.T, s string, env map[string]string) string {
	t.Helper()
	return interpolation.ReplaceAllStringFunc(s, func(m string) string {
		parts := interpolation.FindStringSubmatch(m)
		v, ok := env[parts[1]]
		switch op := parts[2]; {
		case ok && (v != "" || !strings.HasPrefix(op, ":")):
			return v
		case strings.HasSuffix(op, "?"):
			t.Fatalf("compose would fail: %s is required (%s)", parts[1], parts[3])
		case strings.HasSuffix(op, "-"):
			return parts[3]
		}
		return ""
	})
}

// redisACL returns the Redis service's command and its ACL file as the
// compose file configures them.
func redisACL(t *testing.T, c *composeFile) (command []string, aclPath, acl string) {
	t.Helper()
	redis := c.service(t, "redis")
	command = stringList(t, redis["command"])
	require.Equal(t, "redis-server", command[0], "%s: redis runs redis-server (the image drops root for it)", c.path)
	i := indexOf(command, "--aclfile")
	require.GreaterOrEqual(t, i, 0, "%s: Redis must start with --aclfile", c.path)
	aclPath = command[i+1]

	uses, _ := redis["configs"].([]any)
	require.Len(t, uses, 1, "%s: redis mounts its ACL file", c.path)
	use := uses[0].(map[string]any)
	require.Equal(t, aclPath, use["target"], "%s: the ACL file is mounted where --aclfile reads it", c.path)
	configs, _ := c.doc["configs"].(map[string]any)
	cfg, _ := configs[fmt.Sprint(use["source"])].(map[string]any)
	acl, ok := cfg["content"].(string)
	require.True(t, ok, "%s: configs.%s.content", c.path, use["source"])
	return command, aclPath, acl
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// checkACL checks the ACL file's rules as text: every user but a PING-only
// default has a password from the environment, and the two users the
// registry needs exist.
func checkACL(t *testing.T, c *composeFile, acl string) {
	t.Helper()
	users := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(acl), "\n") {
		fields := strings.Fields(line)
		require.GreaterOrEqual(t, len(fields), 3, "%s: ACL line %q", c.path, line)
		require.Equal(t, "user", fields[0])
		users[fields[1]] = line
	}
	require.Equal(t, []string{"agent", "ai-lb", "default"}, keys(users), "%s: ACL users", c.path)
	require.Equal(t, "user default on nopass resetchannels -@all +ping", users["default"],
		"%s: without a password, only PING (the healthcheck)", c.path)
	for user, variable := range map[string]string{"ai-lb": "AI_LB_REDIS_PASSWORD", "agent": "AI_LB_AGENT_REDIS_PASSWORD"} {
		require.Regexp(t, `^user `+user+` on >\$\{`+variable+`:\?[^}]+\} `, users[user],
			"%s: %s's password is the required variable %s, never a literal", c.path, user, variable)
		require.NotContains(t, users[user], "nopass")
		require.NotContains(t, users[user], "allkeys")
		require.NotContains(t, users[user], "+@all")
	}
}

// startACLRedis runs redis-server with the compose command's options and
// ACL file (passwords from testSecrets) on a free loopback port.
func startACLRedis(t *testing.T, command []string, aclPath, acl string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs redis-server: skipped under -short")
	}
	bin, err := exec.LookPath("redis-server")
	require.NoError(t, err, "redis-server is needed (apt-get install redis-server)")
	dir := t.TempDir()
	file := filepath.Join(dir, "users.acl")
	require.NoError(t, os.WriteFile(file, []byte(interpolate(t, acl, testSecrets)), 0o600))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	args := append([]string(nil), command[1:]...)
	args[indexOf(args, aclPath)] = file
	args = append(args, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir)
	cmd := exec.Command(bin, args...)
	out := new(strings.Builder)
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	ping := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer ping.Close()
	require.Eventually(t, func() bool { return ping.Ping(context.Background()).Err() == nil }, 10*time.Second,
		20*time.Millisecond, "redis-server with the ACL file did not start:\n%s", out)
	return addr
}

// userURL is the Redis URL of an ACL user, with the test password of variable.
func userURL(addr, user, variable string) string {
	return fmt.Sprintf("redis://%s:%s@%s", user, testSecrets[variable], addr)
}

// TestRedisACL starts redis-server with each compose file's ACL users and
// checks what they can do: the default user only PINGs; the agent
// registers, heartbeats, publishes load, drains and deregisters but cannot
// touch the API keys or anything else; the balancer's user follows the
// registry and prunes expired entries, reads the API keys, and can write
// neither a node nor a key.
func TestRedisACL(t *testing.T) {
	var acls []string
	for _, c := range []*composeFile{
		loadCompose(t, filepath.Join(repoRoot, "docker-compose.yml"), repoRoot),
		loadCompose(t, filepath.Join("openclaw", "docker-compose.yml"), "openclaw"),
	} {
		_, _, acl := redisACL(t, c)
		checkACL(t, c, acl)
		acls = append(acls, acl)
	}
	require.Equal(t, acls[0], acls[1], "both stacks have the same ACL users")

	c := loadCompose(t, filepath.Join(repoRoot, "docker-compose.yml"), repoRoot)
	command, aclPath, acl := redisACL(t, c)
	addr := startACLRedis(t, command, aclPath, acl)
	ctx := context.Background()
	keys := registry.KeysFor("ai-lb")
	apiKeys := "{ai-lb}:api_keys"

	// Without a password: PING, nothing else.
	anon := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { anon.Close() })
	require.NoError(t, anon.Ping(ctx).Err())
	sub := anon.Subscribe(ctx, keys.Events)
	t.Cleanup(func() { sub.Close() })
	_, subErr := sub.Receive(ctx)
	for _, err := range []error{
		anon.HGetAll(ctx, keys.Nodes).Err(),
		anon.Set(ctx, "x", "y", 0).Err(),
		subErr,
	} {
		require.ErrorContains(t, err, "NOPERM")
	}
	bad, err := registry.Open(fmt.Sprintf("redis://agent:wrong@%s", addr), "")
	require.NoError(t, err)
	t.Cleanup(func() { bad.Close() })
	require.ErrorContains(t, bad.Register(ctx, registry.Node{ID: "x", URL: "http://10.0.0.1:8000"}), "WRONGPASS")

	// The balancer: a watcher that follows events and prunes.
	lb, err := registry.Open(userURL(addr, "ai-lb", "AI_LB_REDIS_PASSWORD"), "ai-lb")
	require.NoError(t, err)
	t.Cleanup(func() { lb.Close() })
	obsCore, logs := observer.New(zapcore.DebugLevel)
	logger := zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), obsCore))
	w := registry.NewWatcher(lb, registry.WatcherOptions{Resync: 100 * time.Millisecond}, logger)
	t.Cleanup(w.Close)

	// An agent registers, heartbeats, publishes load, drains, deregisters.
	agent, err := registry.Open(userURL(addr, "agent", "AI_LB_AGENT_REDIS_PASSWORD"), "ai-lb")
	require.NoError(t, err)
	t.Cleanup(func() { agent.Close() })
	node := registry.Node{ID: "node1", URL: "http://node1:9000", Models: []string{"sim-model"}, TTLMillis: 60_000}
	require.NoError(t, agent.Register(ctx, node))
	require.Eventually(t, func() bool { return len(w.Snapshot().ServingModel("sim-model")) == 1 }, 10*time.Second,
		10*time.Millisecond, "the balancer sees the agent's node")
	require.NoError(t, agent.Register(ctx, node))
	published, err := agent.PublishLoad(ctx, registry.LoadFigures{ID: "node1", Running: 1})
	require.NoError(t, err)
	require.True(t, published)
	drained, err := agent.Drain(ctx, "node1")
	require.NoError(t, err)
	require.True(t, drained)
	entries, err := agent.List(ctx)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	found, err := agent.Deregister(ctx, "node1")
	require.NoError(t, err)
	require.True(t, found)
	require.Eventually(t, func() bool { return len(w.Snapshot().Members) == 0 }, 10*time.Second, 10*time.Millisecond)

	// The balancer prunes a long-expired entry (three TTLs).
	require.NoError(t, agent.Register(ctx, registry.Node{ID: "gone", URL: "http://gone:9000", Models: []string{"m"}, TTLMillis: 100}))
	require.Eventually(t, func() bool {
		entries, err := lb.List(ctx)
		return err == nil && len(entries) == 0
	}, 10*time.Second, 20*time.Millisecond, "the balancer prunes")

	// From the balancer's container, `caddy ai-lb deregister` works (a
	// node whose agent died); a drain is the agent's.
	require.NoError(t, agent.Register(ctx, node))
	_, err = lb.Drain(ctx, "node1")
	require.ErrorContains(t, err, "can't run this command")
	found, err = lb.Deregister(ctx, "node1")
	require.NoError(t, err)
	require.True(t, found)
	for _, e := range logs.All() {
		require.Less(t, e.Level, zapcore.WarnLevel, "the balancer's watcher: %s %v", e.Message, e.ContextMap())
	}

	// Neither user writes an API key (an operator's user does, which the
	// stacks do not define), the agent does not even read them, and
	// neither reaches other keys or administers Redis.
	lbRaw := redis.NewClient(&redis.Options{Addr: addr, Username: "ai-lb", Password: testSecrets["AI_LB_REDIS_PASSWORD"]})
	t.Cleanup(func() { lbRaw.Close() })
	agentRaw := redis.NewClient(&redis.Options{Addr: addr, Username: "agent", Password: testSecrets["AI_LB_AGENT_REDIS_PASSWORD"]})
	t.Cleanup(func() { agentRaw.Close() })
	digests, err := lb.APIKeyDigests(ctx)
	require.NoError(t, err, "the balancer reads the API keys")
	require.Empty(t, digests)
	for name, err := range map[string]error{
		"lb writes a key":        lbRaw.SAdd(ctx, apiKeys, registry.APIKeyDigest("sk-attacker-key-0123456789")).Err(),
		"lb writes a node":       lbRaw.HSet(ctx, keys.Nodes, "evil", `{"id":"evil","url":"http://10.0.0.66:80"}`).Err(),
		"lb writes elsewhere":    lbRaw.Set(ctx, "x", "y", 0).Err(),
		"lb flushes":             lbRaw.FlushAll(ctx).Err(),
		"lb reconfigures":        lbRaw.ConfigSet(ctx, "save", "").Err(),
		"agent writes a key":     agentRaw.SAdd(ctx, apiKeys, registry.APIKeyDigest("sk-attacker-key-0123456789")).Err(),
		"agent reads the keys":   agentRaw.SMembers(ctx, apiKeys).Err(),
		"agent writes elsewhere": agentRaw.Set(ctx, "x", "y", 0).Err(),
		"agent reads elsewhere":  agentRaw.Get(ctx, "x").Err(),
		"agent flushes":          agentRaw.FlushAll(ctx).Err(),
		"agent lists keys":       agentRaw.Keys(ctx, "*").Err(),
		"agent scans keys":       agentRaw.Scan(ctx, 0, "*", 10).Err(),
		"agent scripts the keys": agentRaw.Eval(ctx, "return 1", []string{apiKeys}).Err(),
		"lb lists keys":          lbRaw.Keys(ctx, "*").Err(),
		"agent changes ACLs":     agentRaw.Do(ctx, "ACL", "SETUSER", "agent", "+@all").Err(),
	} {
		require.ErrorContains(t, err, "NOPERM", name)
	}
	// A script runs with its caller's permissions.
	err = agentRaw.Eval(ctx, "return redis.call('SADD', KEYS[1], 'x')", []string{"{ai-lb}:nodes"}).Err()
	require.ErrorContains(t, err, "can't run this command")
	err = lbRaw.Eval(ctx, "return redis.call('HSET', KEYS[1], 'evil', 'x')", []string{keys.Nodes}).Err()
	require.ErrorContains(t, err, "can't run this command")
}
