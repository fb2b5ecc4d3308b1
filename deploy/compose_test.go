package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/ai-lb/ai-lb/registry"
)

// composeFile is a parsed compose file; dir is the directory paths in it
// are relative to (the first file's directory for override files).
type composeFile struct {
	path     string
	dir      string
	doc      map[string]any
	node     *yaml.Node
	services map[string]map[string]any
}

func loadCompose(t *testing.T, path, dir string) *composeFile {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	c := &composeFile{path: path, dir: dir, node: new(yaml.Node), services: map[string]map[string]any{}}
	require.NoError(t, yaml.Unmarshal(raw, c.node), path)
	require.NoError(t, yaml.Unmarshal(raw, &c.doc), path)
	services, ok := c.doc["services"].(map[string]any)
	require.True(t, ok, "%s: no services", path)
	for name, s := range services {
		svc, ok := s.(map[string]any)
		require.True(t, ok, "%s: service %s is not a mapping", path, name)
		c.services[name] = svc
	}
	return c
}

func (c *composeFile) service(t *testing.T, name string) map[string]any {
	t.Helper()
	svc, ok := c.services[name]
	require.True(t, ok, "%s: no service %q", c.path, name)
	return svc
}

// stringList reads a compose list of strings (a command, a healthcheck
// test); a single string is split on spaces.
func stringList(t *testing.T, v any) []string {
	t.Helper()
	switch v := v.(type) {
	case nil:
		return nil
	case string:
		return strings.Fields(v)
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			out = append(out, fmt.Sprint(e))
		}
		return out
	}
	t.Fatalf("not a list of strings: %#v", v)
	return nil
}

// environment reads a service's environment, in map or list form.
func environment(t *testing.T, svc map[string]any) map[string]string {
	t.Helper()
	env := map[string]string{}
	switch e := svc["environment"].(type) {
	case nil:
	case map[string]any:
		for k, v := range e {
			env[k] = fmt.Sprint(v)
		}
	case []any:
		for _, kv := range e {
			k, v, _ := strings.Cut(fmt.Sprint(kv), "=")
			env[k] = v
		}
	default:
		t.Fatalf("environment: %#v", e)
	}
	return env
}

// portMapping is one entry of a service's ports.
type portMapping struct {
	published string // host port or range; empty when not published
	target    int
}

// ports reads a service's ports, short ("8000:8000", "127.0.0.1:8000:8000",
// "8000") and long syntax.
func ports(t *testing.T, svc map[string]any) []portMapping {
	t.Helper()
	list, _ := svc["ports"].([]any)
	var out []portMapping
	for _, p := range list {
		switch p := p.(type) {
		case map[string]any:
			target, err := strconv.Atoi(fmt.Sprint(p["target"]))
			require.NoError(t, err, "port %v", p)
			published := ""
			if v, ok := p["published"]; ok {
				published = fmt.Sprint(v)
			}
			out = append(out, portMapping{published: published, target: target})
		default:
			spec, _, _ := strings.Cut(fmt.Sprint(p), "/") // drop /tcp
			parts := strings.Split(spec, ":")
			target, err := strconv.Atoi(parts[len(parts)-1])
			require.NoError(t, err, "port %v (container port ranges are not used here)", p)
			published := ""
			if len(parts) >= 2 {
				published = parts[len(parts)-2]
			}
			out = append(out, portMapping{published: published, target: target})
		}
	}
	return out
}

func publishes(t *testing.T, svc map[string]any, target int) bool {
	for _, p := range ports(t, svc) {
		if p.target == target && p.published != "" {
			return true
		}
	}
	return false
}

// checkNoAdminPort: nothing publishes Caddy's admin API, nor the 2019 of
// a port range.
func checkNoAdminPort(t *testing.T, c *composeFile) {
	t.Helper()
	for name, svc := range c.services {
		for _, p := range ports(t, svc) {
			require.NotEqual(t, adminPort, p.target, "%s: service %s publishes the admin API", c.path, name)
			lo, hi, isRange := strings.Cut(p.published, "-")
			if !isRange {
				hi = lo
			}
			if l, err1 := strconv.Atoi(lo); err1 == nil {
				if h, err2 := strconv.Atoi(hi); err2 == nil {
					require.False(t, l <= adminPort && adminPort <= h,
						"%s: service %s publishes host port %d", c.path, name, adminPort)
				}
			}
		}
	}
}

// The networks of the stacks: the backend (Redis, nodes, balancers), which
// other stacks' nodes join by name, and the front (the balancers' API port
// and the clients that run in Docker).
const (
	backendNetwork = "llm-mesh"
	frontNetwork   = "llm-api"
)

// checkNetworks: the compose file declares both networks with their real
// names; the balancer is on both, every other service on one; the clients
// are on the front only, where the only other members are balancers (and
// the scale override's edge): they reach the API port and nothing else.
func checkNetworks(t *testing.T, c *composeFile, clients ...string) {
	t.Helper()
	networks, ok := c.doc["networks"].(map[string]any)
	require.True(t, ok, "%s: no top-level networks", c.path)
	for _, name := range []string{backendNetwork, frontNetwork} {
		n, ok := networks[name].(map[string]any)
		require.True(t, ok, "%s: no network %s", c.path, name)
		require.Equal(t, name, n["name"], "%s: %s needs `name: %s` so other stacks can join it", c.path, name, name)
	}
	members := map[string][]string{}
	for name, svc := range c.services {
		nets := serviceNetworks(t, svc)
		slices.Sort(nets)
		switch {
		case name == "load_balancer":
			require.Equal(t, []string{frontNetwork, backendNetwork}, nets, "%s: the balancer is on both networks", c.path)
		case slices.Contains(clients, name):
			require.Equal(t, []string{frontNetwork}, nets, "%s: client %s is on %s only", c.path, name, frontNetwork)
		default:
			require.Equal(t, []string{backendNetwork}, nets, "%s: service %s is on %s only", c.path, name, backendNetwork)
		}
		for _, n := range nets {
			members[n] = append(members[n], name)
		}
	}
	for _, name := range members[frontNetwork] {
		require.True(t, name == "load_balancer" || name == "edge" || slices.Contains(clients, name),
			"%s: %s shares %s with the clients", c.path, name, frontNetwork)
	}
	require.NotContains(t, members[frontNetwork], "redis")
}

func serviceNetworks(t *testing.T, svc map[string]any) []string {
	t.Helper()
	switch n := svc["networks"].(type) {
	case []any:
		return stringList(t, n)
	case map[string]any:
		var out []string
		for k := range n {
			out = append(out, k)
		}
		return out
	}
	return nil
}

// checkBuild: a service built from xcaddy.Dockerfile names an existing
// context and Dockerfile, and that context is the repository root.
func checkBuild(t *testing.T, c *composeFile, name string) {
	t.Helper()
	build, ok := c.service(t, name)["build"].(map[string]any)
	require.True(t, ok, "%s: service %s has no build section", c.path, name)
	context := filepath.Join(c.dir, fmt.Sprint(build["context"]))
	df := filepath.Join(context, fmt.Sprint(build["dockerfile"]))
	require.DirExists(t, context)
	require.FileExists(t, df)
	same, err := sameDir(context, repoRoot)
	require.NoError(t, err)
	require.True(t, same, "%s: service %s: the build context must be the repository root", c.path, name)
	require.Equal(t, dockerfile, filepath.Base(df))
}

func sameDir(a, b string) (bool, error) {
	fa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	fb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(fa, fb), nil
}

func dependsOnHealthy(t *testing.T, svc map[string]any, dep string) bool {
	t.Helper()
	deps, ok := svc["depends_on"].(map[string]any)
	if !ok {
		return false
	}
	d, ok := deps[dep].(map[string]any)
	return ok && d["condition"] == "service_healthy"
}

// checkRedis: Redis 7 with the healthcheck the others wait for, started
// with ACL users (checked in redis_acl_test.go), never published.
func checkRedis(t *testing.T, c *composeFile) {
	t.Helper()
	redis := c.service(t, "redis")
	require.Equal(t, "redis:7-alpine", redis["image"])
	hc, ok := redis["healthcheck"].(map[string]any)
	require.True(t, ok, "%s: redis has no healthcheck", c.path)
	require.Subset(t, stringList(t, hc["test"]), []string{"redis-cli", "ping"})
	require.Empty(t, ports(t, redis), "%s: Redis must not be published", c.path)
	_, _, acl := redisACL(t, c)
	checkACL(t, c, acl)
	require.NotContains(t, redis, "environment", "%s: Redis gets its passwords in its ACL file only", c.path)
}

// redisURL is a REDIS_URL of the stacks: redis://<user>:${<VAR>:?...}@redis:6379.
var redisURL = regexp.MustCompile(`^redis://([a-z-]+):\$\{([A-Z_]+):\?[^}]+\}@redis:6379$`)

// checkRedisURL: a REDIS_URL names the ACL user, and its password is the
// required variable of that user, never a literal.
func checkRedisURL(t *testing.T, c *composeFile, service, url, user string) {
	t.Helper()
	m := redisURL.FindStringSubmatch(url)
	require.NotNil(t, m, "%s: %s: REDIS_URL %q must be redis://%s:${VAR:?...}@redis:6379", c.path, service, url, user)
	require.Equal(t, user, m[1], "%s: %s's Redis user", c.path, service)
	want := map[string]string{"ai-lb": "AI_LB_REDIS_PASSWORD", "agent": "AI_LB_AGENT_REDIS_PASSWORD"}[user]
	require.Equal(t, want, m[2], "%s: %s's password", c.path, service)
}

// checkBalancer: the balancer publishes the API, finds Redis and waits for it.
func checkBalancer(t *testing.T, c *composeFile) {
	t.Helper()
	lb := c.service(t, "load_balancer")
	checkBuild(t, c, "load_balancer")
	require.True(t, publishes(t, lb, apiPort), "%s: load_balancer must publish %d", c.path, apiPort)
	for _, p := range ports(t, lb) {
		if p.target == apiPort {
			require.Equal(t, strconv.Itoa(apiPort), p.published, "%s: the API is published on host port %d", c.path, apiPort)
		}
	}
	env := environment(t, lb)
	checkRedisURL(t, c, "load_balancer", env["REDIS_URL"], "ai-lb")
	if admin, ok := env["CADDY_ADMIN"]; ok {
		require.Regexp(t, `^(localhost|127\.0\.0\.1|\[::1\]):`, admin, "%s: the admin API stays on the container's loopback", c.path)
	}
	require.True(t, dependsOnHealthy(t, lb, "redis"), "%s: load_balancer must wait for a healthy redis", c.path)
	_, hasCommand := lb["command"]
	require.False(t, hasCommand, "%s: load_balancer runs the image's default command", c.path)
	require.NotContains(t, lb, "container_name", "%s: a fixed container name prevents --scale", c.path)
}

// checkSimNodes checks every service that runs `caddy ai-lb simnode` and
// returns their names: each registers itself under its service name, at a
// URL that resolves on llm-mesh and matches the port it listens on, and
// overrides the image's healthcheck (which probes the balancer port).
func checkSimNodes(t *testing.T, c *composeFile) []string {
	t.Helper()
	var names []string
	for name, svc := range c.services {
		args := stringList(t, svc["command"])
		if len(args) < 3 || args[0] != "caddy" || args[1] != "ai-lb" || args[2] != "simnode" {
			continue
		}
		names = append(names, name)
		checkBuild(t, c, name)
		fs := ParseCaddyCommand(t, args)
		register, err := fs.GetBool("register")
		require.NoError(t, err)
		require.True(t, register, "%s: %s must --register", c.path, name)
		flagURL, _ := fs.GetString("redis")
		require.Empty(t, flagURL, "%s: %s: the Redis URL carries a password: it comes from REDIS_URL, not the command line", c.path, name)
		checkRedisURL(t, c, name, environment(t, svc)["REDIS_URL"], "agent")
		id, _ := fs.GetString("id")
		require.Equal(t, name, id, "%s: %s --id (the default is the listen address, the same for every node)", c.path, name)
		advertise, _ := fs.GetString("advertise")
		require.Equal(t, "http://"+name+":9000", advertise, "%s: %s --advertise", c.path, name)
		listen, _ := fs.GetString("listen")
		require.Equal(t, "0.0.0.0:9000", listen, "%s: %s --listen", c.path, name)
		models, _ := fs.GetStringSlice("models")
		node := registry.Node{ID: id, URL: advertise, Models: models}
		require.NoError(t, node.Validate(), "%s: %s registers an invalid node", c.path, name)

		hc, ok := svc["healthcheck"].(map[string]any)
		require.True(t, ok, "%s: %s must override the image's healthcheck (it probes :%d)", c.path, name, apiPort)
		require.Contains(t, stringList(t, hc["test"]), "http://127.0.0.1:9000/health", "%s: %s healthcheck", c.path, name)
		require.True(t, dependsOnHealthy(t, svc, "redis"), "%s: %s must wait for a healthy redis", c.path, name)
		require.Empty(t, ports(t, svc), "%s: %s: nodes are reached through the balancer only", c.path, name)
	}
	slices.Sort(names)
	return names
}

func TestRootCompose(t *testing.T) {
	c := loadCompose(t, filepath.Join(repoRoot, "docker-compose.yml"), repoRoot)
	require.ElementsMatch(t, []string{"redis", "load_balancer", "node1", "node2"}, keys(c.services))
	checkNetworks(t, c)
	checkNoAdminPort(t, c)
	checkRedis(t, c)
	checkBalancer(t, c)
	require.Equal(t, []string{"node1", "node2"}, checkSimNodes(t, c))

	// The deployment's Caddyfile is mounted where the image's CMD reads it.
	mounts := volumeSources(t, c, c.service(t, "load_balancer"), "/etc/caddy/Caddyfile")
	require.Equal(t, []string{filepath.Join(repoRoot, "deploy", "Caddyfile")}, mounts)
}

func TestScaleOverride(t *testing.T) {
	// An override file; it names no host path, so it applies to the root
	// stack and to deploy/openclaw's alike.
	c := loadCompose(t, filepath.Join(repoRoot, "deploy", "compose.scale.yml"), repoRoot)
	checkNoAdminPort(t, c)

	// load_balancer's ports are reset, so replicas do not fight over 8000.
	lbNode := mappingValue(t, mappingValue(t, c.node.Content[0], "services"), "load_balancer")
	portsNode := mappingValue(t, lbNode, "ports")
	require.Equal(t, "!reset", portsNode.Tag, "load_balancer ports must be `!reset []`")

	edge := c.service(t, "edge")
	require.True(t, publishes(t, edge, apiPort), "edge must publish %d", apiPort)
	require.Equal(t, []string{frontNetwork}, serviceNetworks(t, edge), "edge reaches the replicas' API ports, never Redis")
	require.Equal(t, "caddy:2.11.9-alpine", edge["image"])
	require.NotContains(t, edge, "volumes", "no host paths: they would resolve differently for each stack")

	// edge's Caddyfile is inline; it must adapt and find every replica.
	configs, ok := c.doc["configs"].(map[string]any)
	require.True(t, ok, "top-level configs")
	edgeCfg, ok := configs["edge_caddyfile"].(map[string]any)
	require.True(t, ok, "configs.edge_caddyfile")
	content, ok := edgeCfg["content"].(string)
	require.True(t, ok, "configs.edge_caddyfile.content")
	require.NotContains(t, content, "$", "compose would interpolate it")
	uses, _ := edge["configs"].([]any)
	require.Len(t, uses, 1)
	use := uses[0].(map[string]any)
	require.Equal(t, "edge_caddyfile", use["source"])
	require.Equal(t, "/etc/caddy/Caddyfile", use["target"])
	path := filepath.Join(t.TempDir(), "Caddyfile")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
	cfg := adaptCaddyfile(t, path)
	require.Contains(t, string(cfg), `"source":"a"`, "edge must find replicas with dynamic a")
	require.Contains(t, string(cfg), `"name":"load_balancer"`)
	require.Contains(t, string(cfg), `"port":"8000"`)

	// Merged with either stack, exactly one service publishes 8000: edge.
	for _, base := range []*composeFile{
		loadCompose(t, filepath.Join(repoRoot, "docker-compose.yml"), repoRoot),
		loadCompose(t, filepath.Join("openclaw", "docker-compose.yml"), "openclaw"),
	} {
		var publishers []string
		for name, svc := range base.services {
			if name != "load_balancer" && publishes(t, svc, apiPort) { // load_balancer's are reset
				publishers = append(publishers, name)
			}
		}
		for name, svc := range c.services {
			if publishes(t, svc, apiPort) {
				publishers = append(publishers, name)
			}
		}
		require.Equal(t, []string{"edge"}, publishers, base.path)
	}
}

func TestOpenClawCompose(t *testing.T) {
	dir := "openclaw"
	c := loadCompose(t, filepath.Join(dir, "docker-compose.yml"), dir)
	checkNetworks(t, c, "openclaw")
	checkNoAdminPort(t, c)
	checkRedis(t, c)
	checkBalancer(t, c)
	nodes := checkSimNodes(t, c)
	require.NotEmpty(t, nodes, "at least one simulated node")

	// The stand-in agent platform: named as test_connection.sh expects, and
	// configured with the OpenAI base URL only.
	oc := c.service(t, "openclaw")
	require.Equal(t, "node:20-slim", oc["image"])
	require.Equal(t, "openclaw_agent_platform", oc["container_name"])
	require.Equal(t, []string{"sleep", "infinity"}, stringList(t, oc["command"]))
	env := environment(t, oc)
	require.Equal(t, "http://load_balancer:8000/v1", env["OPENAI_BASE_URL"])
	require.Empty(t, ports(t, oc))
	require.NotContains(t, env, "REDIS_URL", "the agent platform knows nothing of Redis")

	// OpenClaw's key is one the balancer accepts (api_keys { env
	// AI_LB_API_KEYS } in its Caddyfile), from one required variable.
	require.Regexp(t, `^\$\{AI_LB_API_KEY:\?[^}]+\}$`, env["OPENAI_API_KEY"])
	require.Equal(t, env["OPENAI_API_KEY"], environment(t, c.service(t, "load_balancer"))["AI_LB_API_KEYS"])

	// The deployment's Caddyfile is mounted where the image's CMD reads it.
	lb := c.service(t, "load_balancer")
	mounts := volumeSources(t, c, lb, "/etc/caddy/Caddyfile")
	require.Equal(t, []string{filepath.Join(dir, "Caddyfile")}, mounts)

	expected := []string{"redis", "load_balancer", "openclaw"}
	require.ElementsMatch(t, append(expected, nodes...), keys(c.services))
}

// volumeSources returns the host paths mounted at target; each must exist.
func volumeSources(t *testing.T, c *composeFile, svc map[string]any, target string) []string {
	t.Helper()
	var out []string
	list, _ := svc["volumes"].([]any)
	for _, v := range list {
		var source, dest string
		switch v := v.(type) {
		case string:
			parts := strings.Split(v, ":")
			require.GreaterOrEqual(t, len(parts), 2, "volume %q", v)
			source, dest = parts[0], parts[1]
		case map[string]any:
			source, dest = fmt.Sprint(v["source"]), fmt.Sprint(v["target"])
		}
		if dest != target {
			continue
		}
		require.True(t, strings.HasPrefix(source, "."), "%s: %s is not a relative bind mount", c.path, source)
		path := filepath.Join(c.dir, source)
		require.FileExists(t, path, "%s: mount source", c.path)
		out = append(out, path)
	}
	return out
}

func mappingValue(t *testing.T, n *yaml.Node, key string) *yaml.Node {
	t.Helper()
	require.Equal(t, yaml.MappingNode, n.Kind)
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	t.Fatalf("no key %q", key)
	return nil
}

// TestComposeSecrets: the compose files hold no secret. Every variable
// they use is one of the stack's secrets and is required (`${VAR:?...}`),
// so a stack without them fails to start rather than run with an empty
// password, and no Redis URL carries a literal password.
func TestComposeSecrets(t *testing.T) {
	literal := regexp.MustCompile(`redis://[^$\s/@]*:[^$\s/@{]+@`)
	for _, path := range []string{
		filepath.Join(repoRoot, "docker-compose.yml"),
		filepath.Join("openclaw", "docker-compose.yml"),
		"compose.scale.yml",
	} {
		raw, err := os.ReadFile(path)
		require.NoError(t, err)
		text := string(raw)
		for _, m := range interpolation.FindAllStringSubmatch(text, -1) {
			require.Contains(t, testSecrets, m[1], "%s: %s is not a secret of the stacks", path, m[0])
			require.Equal(t, ":?", m[2], "%s: %s must be required (${%s:?message})", path, m[0], m[1])
		}
		require.Empty(t, literal.FindAllString(text, -1), "%s: a Redis URL with a literal password", path)
		require.NotContains(t, interpolate(t, text, testSecrets), "${", path)
	}
}
