// Package deploy checks the deployment files (xcaddy.Dockerfile, the
// compose files, the OpenClaw integration) without a Docker engine: every
// path they name exists, every command they run parses with ai-lb's own
// command line, every Caddyfile adapts, and test_connection.sh works
// against a fake balancer.
package deploy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	_ "github.com/ai-lb/ai-lb"
	_ "github.com/ai-lb/ai-lb/simnode/simnodecmd"
	"github.com/ai-lb/ai-lb/internal/testredis"
	"github.com/ai-lb/ai-lb/registry"
)

const (
	repoRoot   = ".."
	modulePath = "github.com/ai-lb/ai-lb"
	dockerfile = "xcaddy.Dockerfile"
	// adminPort is Caddy's admin API: never published on the host.
	adminPort = 2019
	apiPort   = 8000
)

// ---------------------------------------------------------------------------
// Compose files
// ---------------------------------------------------------------------------

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

// checkNetwork: the compose file declares llm-mesh with that real name and
// every service is on it.
func checkNetwork(t *testing.T, c *composeFile) {
	t.Helper()
	networks, ok := c.doc["networks"].(map[string]any)
	require.True(t, ok, "%s: no top-level networks", c.path)
	mesh, ok := networks["llm-mesh"].(map[string]any)
	require.True(t, ok, "%s: no network llm-mesh", c.path)
	require.Equal(t, "llm-mesh", mesh["name"], "%s: llm-mesh needs `name: llm-mesh` so other stacks can join it", c.path)
	for name, svc := range c.services {
		require.Contains(t, serviceNetworks(t, svc), "llm-mesh", "%s: service %s is not on llm-mesh", c.path, name)
	}
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

// checkRedis: Redis 7 with the healthcheck the others wait for.
func checkRedis(t *testing.T, c *composeFile) {
	t.Helper()
	redis := c.service(t, "redis")
	require.Equal(t, "redis:7-alpine", redis["image"])
	hc, ok := redis["healthcheck"].(map[string]any)
	require.True(t, ok, "%s: redis has no healthcheck", c.path)
	require.Subset(t, stringList(t, hc["test"]), []string{"redis-cli", "ping"})
	require.Empty(t, ports(t, redis), "%s: Redis must not be published", c.path)
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
	require.Equal(t, "redis://redis:6379", environment(t, lb)["REDIS_URL"])
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
		fs := parseCaddyCommand(t, args)
		register, err := fs.GetBool("register")
		require.NoError(t, err)
		require.True(t, register, "%s: %s must --register", c.path, name)
		redisURL, _ := fs.GetString("redis")
		require.Equal(t, "redis://redis:6379", redisURL, "%s: %s --redis", c.path, name)
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

// parseCaddyCommand parses `caddy <command> [<subcommand>...] <flags>`
// with the command line of the binary the image ships (Caddy plus ai-lb),
// so a misspelt flag or subcommand fails here rather than in a container.
func parseCaddyCommand(t *testing.T, args []string) *pflag.FlagSet {
	t.Helper()
	require.GreaterOrEqual(t, len(args), 2, "command %q", args)
	require.Equal(t, "caddy", args[0], "command %q", args)
	c, ok := caddycmd.Commands()[args[1]]
	require.True(t, ok, "command %q: caddy has no %q command", args, args[1])
	root := &cobra.Command{Use: c.Name}
	if c.CobraFunc != nil {
		c.CobraFunc(root)
	} else {
		root.Flags().AddGoFlagSet(c.Flags)
	}
	cmd, rest, err := root.Find(args[2:])
	require.NoError(t, err, "command %q", args)
	require.NoError(t, cmd.ParseFlags(rest), "command %q", args)
	require.NoError(t, cmd.ValidateArgs(cmd.Flags().Args()), "command %q", args)
	require.True(t, cmd.Runnable(), "command %q is not runnable", args)
	return cmd.Flags()
}

func TestRootCompose(t *testing.T) {
	c := loadCompose(t, filepath.Join(repoRoot, "docker-compose.yml"), repoRoot)
	require.ElementsMatch(t, []string{"redis", "load_balancer", "node1", "node2"}, keys(c.services))
	checkNetwork(t, c)
	checkNoAdminPort(t, c)
	checkRedis(t, c)
	checkBalancer(t, c)
	require.Equal(t, []string{"node1", "node2"}, checkSimNodes(t, c))
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
	require.Contains(t, serviceNetworks(t, edge), "llm-mesh")
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
	checkNetwork(t, c)
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
	require.NotEmpty(t, env["OPENAI_API_KEY"])
	require.Empty(t, ports(t, oc))

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

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// ---------------------------------------------------------------------------
// xcaddy.Dockerfile
// ---------------------------------------------------------------------------

type instruction struct {
	cmd  string // upper case
	args string
}

type stage struct {
	image, name  string
	instructions []instruction
}

func (s *stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.instructions {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// parseDockerfile splits a Dockerfile into stages, joining continued lines,
// dropping comments and substituting the ARGs declared before the first FROM.
func parseDockerfile(t *testing.T, path string) []*stage {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var logical []string
	var cur strings.Builder
	for _, line := range strings.Split(string(raw), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		logical = append(logical, cur.String())
		cur.Reset()
	}
	require.Zero(t, cur.Len(), "%s ends in a continued line", path)

	globalArgs := map[string]string{}
	var stages []*stage
	for _, l := range logical {
		cmd, args, _ := strings.Cut(l, " ")
		cmd, args = strings.ToUpper(cmd), strings.TrimSpace(args)
		switch {
		case cmd == "ARG" && len(stages) == 0:
			k, v, _ := strings.Cut(args, "=")
			globalArgs[k] = v
		case cmd == "FROM":
			fields := strings.Fields(args)
			s := &stage{image: os.Expand(fields[0], func(k string) string { return globalArgs[k] })}
			if len(fields) == 3 && strings.EqualFold(fields[1], "AS") {
				s.name = fields[2]
			}
			stages = append(stages, s)
		default:
			require.NotEmpty(t, stages, "%s: %s before FROM", path, cmd)
			st := stages[len(stages)-1]
			st.instructions = append(st.instructions, instruction{cmd, args})
		}
	}
	return stages
}

// copySources returns the sources of a COPY (flags and destination
// removed) and its --from stage, if any.
func copySources(t *testing.T, in instruction) (sources []string, from string) {
	t.Helper()
	var fields []string
	if strings.HasPrefix(in.args, "[") {
		require.NoError(t, json.Unmarshal([]byte(in.args), &fields), "COPY %s", in.args)
	} else {
		fields = strings.Fields(in.args)
	}
	var rest []string
	for _, f := range fields {
		switch {
		case strings.HasPrefix(f, "--from="):
			from = strings.TrimPrefix(f, "--from=")
		case strings.HasPrefix(f, "--"):
		default:
			rest = append(rest, f)
		}
	}
	require.GreaterOrEqual(t, len(rest), 2, "COPY %s", in.args)
	return rest[:len(rest)-1], from
}

// goModVersions reads the go directive and Caddy's version from go.mod.
func goModVersions(t *testing.T) (goVersion, caddyVersion string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(string(raw))
	require.NotNil(t, m, "go.mod: no go directive")
	c := regexp.MustCompile(`(?m)^\s*github\.com/caddyserver/caddy/v2 v(\S+)`).FindStringSubmatch(string(raw))
	require.NotNil(t, c, "go.mod: no Caddy requirement")
	return m[1], c[1]
}

func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t, filepath.Join(repoRoot, dockerfile))
	require.Len(t, stages, 2, "a builder stage and the final image")
	builder, final := stages[0], stages[1]
	goVersion, caddyVersion := goModVersions(t)

	// Builder: an official Go image at least as new as go.mod's go directive.
	require.Equal(t, "builder", builder.name)
	m := regexp.MustCompile(`^golang:(\d+)\.(\d+)`).FindStringSubmatch(builder.image)
	require.NotNil(t, m, "the builder is an official golang image, not %q", builder.image)
	require.False(t, versionLess(m[1]+"."+m[2], goVersion),
		"builder image %s is older than go.mod's go %s", builder.image, goVersion)
	var builds []instruction
	for _, in := range builder.all("RUN") {
		if strings.Contains(in.args, "scripts/build.sh") {
			builds = append(builds, in)
		}
	}
	require.Len(t, builds, 1, "the builder runs scripts/build.sh once")
	require.Contains(t, builds[0].args, "OUTPUT=/out/ai-lb")
	var cgoOff bool
	for _, in := range builder.all("ENV") {
		cgoOff = cgoOff || strings.Contains(in.args, "CGO_ENABLED=0")
	}
	require.True(t, cgoOff || strings.Contains(builds[0].args, "CGO_ENABLED=0"),
		"the binary must be static (CGO_ENABLED=0) to run on alpine")

	// scripts/build.sh's Caddy version, go.mod's and the final image's agree.
	buildScript, err := os.ReadFile(filepath.Join(repoRoot, "scripts", "build.sh"))
	require.NoError(t, err)
	require.Contains(t, string(buildScript), `CADDY_VERSION:-v`+caddyVersion+`}`)
	require.Equal(t, "caddy:"+caddyVersion+"-alpine", final.image)

	// Every COPY source exists in the build context and is not ignored.
	ignore := readDockerignore(t)
	var copied []string
	for _, st := range stages {
		for _, in := range st.all("COPY") {
			sources, from := copySources(t, in)
			if from != "" {
				require.Equal(t, "builder", from)
				continue
			}
			for _, src := range sources {
				matches, err := filepath.Glob(filepath.Join(repoRoot, src))
				require.NoError(t, err)
				require.NotEmpty(t, matches, "COPY %s: no such file in the build context", src)
				for _, match := range matches {
					rel, err := filepath.Rel(repoRoot, match)
					require.NoError(t, err)
					require.False(t, ignored(ignore, rel), "COPY %s: %s is excluded by .dockerignore", src, rel)
				}
				copied = append(copied, filepath.Clean(src))
			}
		}
	}

	// The builder copies what scripts/build.sh needs...
	for _, need := range []string{"go.mod", "go.sum", "scripts", "Caddyfile.example"} {
		require.Contains(t, copied, need, "the builder must COPY %s", need)
	}
	// ...and every package of the module that the binary is built from.
	for _, dir := range modulePackageDirs(t) {
		covered := slices.ContainsFunc(copied, func(src string) bool {
			if dir == "." {
				return src == "*.go" || src == "."
			}
			return src == "." || src == dir || strings.HasPrefix(dir, src+string(filepath.Separator))
		})
		require.True(t, covered, "package directory %q is imported by %s but not copied by %s", dir, modulePath, dockerfile)
	}

	// Final image: the built binary replaces Caddy's, the example config is
	// the default config, and it runs as an unprivileged user.
	var binary bool
	for _, in := range final.all("COPY") {
		sources, from := copySources(t, in)
		fields := strings.Fields(in.args)
		if from == "builder" && slices.Equal(sources, []string{"/out/ai-lb"}) && fields[len(fields)-1] == "/usr/bin/caddy" {
			binary = true
		}
	}
	require.True(t, binary, "COPY --from=builder /out/ai-lb /usr/bin/caddy")
	require.Contains(t, final.all("COPY"), instruction{"COPY", "Caddyfile.example /etc/caddy/Caddyfile"})

	users := final.all("USER")
	require.NotEmpty(t, users, "the final image sets USER")
	user, _, _ := strings.Cut(users[len(users)-1].args, ":")
	require.NotContains(t, []string{"root", "0"}, user, "the final image must not run as root")
	var chowned bool
	for _, in := range final.all("RUN") {
		chowned = chowned || (strings.Contains(in.args, "chown") && strings.Contains(in.args, "/config") && strings.Contains(in.args, "/data"))
	}
	require.True(t, chowned, "/config and /data must belong to the unprivileged user")

	require.Contains(t, final.all("EXPOSE"), instruction{"EXPOSE", strconv.Itoa(apiPort)})
	for _, in := range final.all("EXPOSE") {
		require.NotContains(t, in.args, strconv.Itoa(adminPort))
	}

	hcs := final.all("HEALTHCHECK")
	require.Len(t, hcs, 1)
	require.Regexp(t, `CMD wget -q -O /dev/null http://127\.0\.0\.1:8000/health\b`, hcs[0].args)

	env := map[string]string{}
	for _, in := range final.all("ENV") {
		for _, kv := range strings.Fields(in.args) {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
	}
	require.Equal(t, "redis://redis:6379", env["REDIS_URL"])
	require.Equal(t, "0.0.0.0:2019", env["CADDY_ADMIN"])

	cmds := final.all("CMD")
	require.Len(t, cmds, 1)
	var cmd []string
	require.NoError(t, json.Unmarshal([]byte(cmds[0].args), &cmd), "CMD in exec form, so caddy is PID 1 and gets SIGTERM")
	require.Equal(t, []string{"caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"}, cmd)
	parseCaddyCommand(t, cmd)
}

func versionLess(a, b string) bool {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(pa) && i < len(pb); i++ {
		x, _ := strconv.Atoi(pa[i])
		y, _ := strconv.Atoi(pb[i])
		if x != y {
			return x < y
		}
	}
	return len(pa) < len(pb)
}

// modulePackageDirs lists the directories (relative to the repository
// root) of the module's packages that the root package imports,
// transitively, outside tests: what xcaddy compiles.
func modulePackageDirs(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}\t{{.Dir}}", modulePath).Output()
	require.NoError(t, err, "go list")
	root, err := filepath.Abs(repoRoot)
	require.NoError(t, err)
	var dirs []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, dir, _ := strings.Cut(line, "\t")
		if path != modulePath && !strings.HasPrefix(path, modulePath+"/") {
			continue
		}
		rel, err := filepath.Rel(root, dir)
		require.NoError(t, err)
		dirs = append(dirs, rel)
	}
	require.Contains(t, dirs, ".")
	return dirs
}

// readDockerignore returns the exclusion patterns of .dockerignore.
func readDockerignore(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	require.NoError(t, err)
	var patterns []string
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		require.False(t, strings.HasPrefix(line, "!"), ".dockerignore: keep it a plain exclusion list (%s)", line)
		patterns = append(patterns, filepath.Clean(strings.TrimPrefix(line, "/")))
	}
	return patterns
}

// ignored reports whether a path of the build context, or a directory
// containing it, matches a .dockerignore pattern (`**/` matches any depth).
func ignored(patterns []string, rel string) bool {
	parts := strings.Split(filepath.ToSlash(rel), "/")
	for _, p := range patterns {
		p = filepath.ToSlash(p)
		for i := 1; i <= len(parts); i++ {
			prefix := strings.Join(parts[:i], "/")
			if ok, _ := filepath.Match(p, prefix); ok {
				return true
			}
			if rest, ok := strings.CutPrefix(p, "**/"); ok {
				for j := 0; j < i; j++ {
					if m, _ := filepath.Match(rest, strings.Join(parts[j:i], "/")); m {
						return true
					}
				}
			}
		}
	}
	return false
}

func TestDockerignore(t *testing.T) {
	patterns := readDockerignore(t)
	for _, junk := range []string{".git", "bin/ai-lb", "tmp/ai-lb.log", "gateway/gateway.test"} {
		require.True(t, ignored(patterns, junk), ".dockerignore should exclude %s", junk)
	}
	for _, kept := range []string{"go.mod", "module.go", "gateway/handler.go", "scripts/build.sh", "Caddyfile.example"} {
		require.False(t, ignored(patterns, kept), ".dockerignore must not exclude %s", kept)
	}
}

// ---------------------------------------------------------------------------
// Caddyfiles
// ---------------------------------------------------------------------------

// adaptCaddyfile adapts a Caddyfile in-process, as `caddy run --adapter
// caddyfile` in the image does, and requires no error and no warning; it
// then provisions the config without starting it (`caddy validate`).
func adaptCaddyfile(t *testing.T, path string) []byte {
	t.Helper()
	body, err := os.ReadFile(path)
	require.NoError(t, err)
	adapter := caddyconfig.GetAdapter("caddyfile")
	require.NotNil(t, adapter)
	cfg, warnings, err := adapter.Adapt(body, map[string]any{"filename": path})
	require.NoError(t, err, "adapting %s", path)
	require.Empty(t, warnings, "adapting %s", path)

	// Provisioning opens the registry ({env.REDIS_URL}): give it a Redis of
	// its own (an unreachable one would not fail, but costs seconds).
	t.Setenv("REDIS_URL", testredis.Start(t).URL())
	var config caddy.Config
	require.NoError(t, json.Unmarshal(cfg, &config))
	require.NoError(t, caddy.Validate(&config), "validating %s", path)
	return cfg
}

// adaptedConfig is the part of an adapted config these tests look at.
type adaptedConfig struct {
	Admin struct {
		Listen  string   `json:"listen"`
		Origins []string `json:"origins"`
	} `json:"admin"`
	Apps struct {
		AILB *struct {
			Redis  string `json:"redis"`
			Prefix string `json:"prefix"`
		} `json:"ai_lb"`
		HTTP struct {
			Servers map[string]struct {
				Listen []string `json:"listen"`
				Routes []struct {
					Handle []map[string]any `json:"handle"`
				} `json:"routes"`
			} `json:"servers"`
		} `json:"http"`
	} `json:"apps"`
}

func TestOpenClawCaddyfile(t *testing.T) {
	var cfg adaptedConfig
	require.NoError(t, json.Unmarshal(adaptCaddyfile(t, filepath.Join("openclaw", "Caddyfile")), &cfg))

	// The admin API listens on the container network, and lets `caddy
	// reload` in (inside the container, and --address load_balancer:2019).
	require.Equal(t, "0.0.0.0:2019", cfg.Admin.Listen)
	require.Subset(t, cfg.Admin.Origins, []string{"load_balancer:2019", "0.0.0.0:2019"})

	require.NotNil(t, cfg.Apps.AILB)
	require.Equal(t, "{env.REDIS_URL}", cfg.Apps.AILB.Redis)

	// One site on :8000 that runs ai_lb -> hedge -> reverse_proxy.
	srv, ok := cfg.Apps.HTTP.Servers["srv0"]
	require.True(t, ok)
	require.Equal(t, []string{":8000"}, srv.Listen)
	require.Len(t, srv.Routes, 1)
	var handlers []string
	for _, h := range srv.Routes[0].Handle {
		handlers = append(handlers, fmt.Sprint(h["handler"]))
	}
	require.Equal(t, []string{"ai_lb", "hedge", "reverse_proxy"}, handlers)
	rp := srv.Routes[0].Handle[2]
	require.Equal(t, map[string]any{"source": "ai_lb"}, rp["dynamic_upstreams"])
}

// TestExampleCaddyfile: the config the image ships by default (and the
// JSON paths DEPLOYMENT.md patches through the admin API).
func TestExampleCaddyfile(t *testing.T) {
	var cfg adaptedConfig
	require.NoError(t, json.Unmarshal(adaptCaddyfile(t, filepath.Join(repoRoot, "Caddyfile.example")), &cfg))
	require.Empty(t, cfg.Admin.Listen, "the image sets the admin address with CADDY_ADMIN")
	require.NotNil(t, cfg.Apps.AILB)
	require.Equal(t, "ai-lb", cfg.Apps.AILB.Prefix) // PATCH /config/apps/ai_lb/prefix
	srv := cfg.Apps.HTTP.Servers["srv0"]            // /config/apps/http/servers/srv0/...
	require.Equal(t, []string{":8000"}, srv.Listen)
	require.NotEmpty(t, srv.Routes)
	require.Equal(t, "ai_lb", srv.Routes[0].Handle[0]["handler"]) // .../routes/0/handle/0
}

// ---------------------------------------------------------------------------
// OpenClaw provider config
// ---------------------------------------------------------------------------

func TestOpenClawProvider(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("openclaw", "openclaw.provider.json"))
	require.NoError(t, err)
	var doc struct {
		Models struct {
			Providers map[string]struct {
				BaseURL string `json:"baseUrl"`
				APIKey  string `json:"apiKey"`
				API     string `json:"api"`
				Models  []struct {
					ID            string `json:"id"`
					Name          string `json:"name"`
					ContextWindow int    `json:"contextWindow"`
					MaxTokens     int    `json:"maxTokens"`
				} `json:"models"`
			} `json:"providers"`
		} `json:"models"`
		Agents struct {
			Defaults struct {
				Model struct {
					Primary string `json:"primary"`
				} `json:"model"`
			} `json:"defaults"`
		} `json:"agents"`
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	require.NoError(t, dec.Decode(&doc))
	p, ok := doc.Models.Providers["ai-lb"]
	require.True(t, ok, "provider ai-lb")
	require.Equal(t, "openai-completions", p.API)
	require.NotEmpty(t, p.APIKey)

	// The same base URL as the OpenClaw container's OPENAI_BASE_URL.
	c := loadCompose(t, filepath.Join("openclaw", "docker-compose.yml"), "openclaw")
	require.Equal(t, environment(t, c.service(t, "openclaw"))["OPENAI_BASE_URL"], p.BaseURL)

	require.NotEmpty(t, p.Models)
	for _, m := range p.Models {
		require.NotEmpty(t, m.ID)
		require.NotEmpty(t, m.Name)
		require.Positive(t, m.ContextWindow)
		require.Positive(t, m.MaxTokens)
		require.LessOrEqual(t, m.MaxTokens, m.ContextWindow)
	}
	require.Equal(t, "sim-model", p.Models[0].ID)
	require.Equal(t, "ai-lb/sim-model", doc.Agents.Defaults.Model.Primary)

	// The simulated nodes serve that model.
	for _, name := range checkSimNodes(t, c) {
		fs := parseCaddyCommand(t, stringList(t, c.service(t, name)["command"]))
		models, _ := fs.GetStringSlice("models")
		require.Contains(t, models, "sim-model", "%s serves sim-model", name)
	}
}

// ---------------------------------------------------------------------------
// test_connection.sh
// ---------------------------------------------------------------------------

// fakeBalancer answers /health and a streamed chat completion like ai-lb.
type fakeBalancer struct {
	healthStatus int  // /health status
	chatStatus   int  // chat/completions status
	done         bool // end the stream with data: [DONE]
}

func (f fakeBalancer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/health":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.healthStatus)
		status := "ok"
		if f.healthStatus != http.StatusOK {
			status = "unavailable"
		}
		fmt.Fprintf(w, `{"status":%q,"nodes_found":2,"models":1,"minimum_required":1,"registry_synced":true}`, status)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/chat/completions":
		var req struct {
			Model  string `json:"model"`
			Stream bool   `json:"stream"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Model != "sim-model" || !req.Stream ||
			r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, `{"error":{"message":"bad request"}}`, http.StatusBadRequest)
			return
		}
		if f.chatStatus != http.StatusOK {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(f.chatStatus)
			fmt.Fprint(w, `{"error":{"message":"upstream failed","type":"server_error","code":"upstream_error"}}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("X-AI-LB-Node", "node2")
		for _, word := range []string{"Hello", " from", " ai-lb"} {
			fmt.Fprintf(w, "data: {\"object\":\"chat.completion.chunk\",\"model\":\"sim-model\",\"choices\":[{\"index\":0,\"delta\":{\"content\":%q}}]}\n\n", word)
			w.(http.Flusher).Flush()
		}
		if f.done {
			fmt.Fprint(w, "data: [DONE]\n\n")
		}
	default:
		http.NotFound(w, r)
	}
}

// runTestConnection runs test_connection.sh with args and extra
// environment, returning its exit code and combined output.
func runTestConnection(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	_, err := exec.LookPath("bash")
	require.NoError(t, err, "bash is needed to run test_connection.sh")
	_, err = exec.LookPath("curl")
	require.NoError(t, err, "curl is needed to run test_connection.sh --host")
	script, err := filepath.Abs(filepath.Join("openclaw", "test_connection.sh"))
	require.NoError(t, err)
	info, err := os.Stat(script)
	require.NoError(t, err)
	require.NotZero(t, info.Mode()&0o111, "test_connection.sh must be executable")
	cmd := exec.Command("bash", append([]string{script}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if exitErr, ok := err.(*exec.ExitError); ok {
		return exitErr.ExitCode(), string(out)
	}
	require.NoError(t, err)
	return 0, string(out)
}

func TestConnectionScriptHost(t *testing.T) {
	cases := []struct {
		name     string
		fake     fakeBalancer
		code     int
		contains []string
	}{
		{
			name: "success",
			fake: fakeBalancer{healthStatus: 200, chatStatus: 200, done: true},
			contains: []string{
				`✅ Success! Health response: {"status":"ok","nodes_found":2`,
				"✅ Success! Streamed chat completion: 3 chunks, ended with data: [DONE] (node node2)",
			},
		},
		{
			name:     "stream without DONE",
			fake:     fakeBalancer{healthStatus: 200, chatStatus: 200},
			code:     1,
			contains: []string{"✅ Success! Health response:", "❌ Stream did not end with data: [DONE]"},
		},
		{
			name:     "unhealthy",
			fake:     fakeBalancer{healthStatus: 503, chatStatus: 200, done: true},
			code:     1,
			contains: []string{"❌ Health check failed at ", `HTTP 503: {"status":"unavailable"`},
		},
		{
			name:     "completion fails",
			fake:     fakeBalancer{healthStatus: 200, chatStatus: 502, done: true},
			code:     1,
			contains: []string{"❌ Streamed chat completion answered HTTP 502"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.fake)
			defer srv.Close()
			// A trailing /v1 is accepted, as in OPENAI_BASE_URL.
			code, out := runTestConnection(t, []string{"AI_LB_URL=" + srv.URL + "/v1", "AI_LB_WAIT=0"}, "--host")
			require.Equal(t, tc.code, code, out)
			for _, s := range tc.contains {
				require.Contains(t, out, s)
			}
			if tc.code == 0 {
				require.NotContains(t, out, "❌")
			}
		})
	}

	t.Run("unreachable", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL
		srv.Close()
		code, out := runTestConnection(t, []string{"AI_LB_URL=" + url, "AI_LB_WAIT=0"}, "--host")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "❌ Health check failed at "+url+"/health")
	})

	t.Run("bad argument", func(t *testing.T) {
		code, out := runTestConnection(t, nil, "--nope")
		require.NotZero(t, code)
		require.Contains(t, out, "❌ unknown argument: --nope")
	})
}

// TestConnectionScriptContainer runs the default (in-container) mode with
// a fake `docker` that runs `node -e` on this machine with the container's
// environment. It needs Node.js 18+ (fetch); without it only the fallback
// to the host check is exercised.
func TestConnectionScriptContainer(t *testing.T) {
	srv := httptest.NewServer(fakeBalancer{healthStatus: 200, chatStatus: 200, done: true})
	defer srv.Close()

	dir := t.TempDir()
	fakeDocker := `#!/usr/bin/env bash
# A stand-in for docker: openclaw_agent_platform "runs" on this machine.
set -euo pipefail
case "$1" in
inspect) [ "${FAKE_RUNNING:-true}" = true ] && echo true || { echo false; exit 1; } ;;
exec)
	shift
	envs=()
	while [ "$1" = -e ]; do envs+=("$2"); shift 2; done
	[ "$1" = openclaw_agent_platform ] || { echo "no such container: $1" >&2; exit 125; }
	shift
	exec env OPENAI_BASE_URL="$FAKE_BASE_URL" OPENAI_API_KEY=unused "${envs[@]}" "$@"
	;;
*) echo "fake docker: $*" >&2; exit 125 ;;
esac
`
	require.NoError(t, os.WriteFile(filepath.Join(dir, "docker"), []byte(fakeDocker), 0o755))
	path := "PATH=" + dir + string(os.PathListSeparator) + os.Getenv("PATH")

	// The container is not running: the script falls back to the host check.
	code, out := runTestConnection(t, []string{path, "FAKE_RUNNING=false", "AI_LB_URL=" + srv.URL, "AI_LB_WAIT=0"})
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "openclaw_agent_platform is not running; checking from the host instead")
	require.Contains(t, out, "✅ Success! Streamed chat completion: 3 chunks")

	if _, err := exec.LookPath("node"); err != nil {
		t.Log("node is not installed: the in-container check (node -e) is not exercised")
		return
	}
	code, out = runTestConnection(t, []string{path, "FAKE_BASE_URL=" + srv.URL + "/v1", "AI_LB_WAIT=0"})
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "→ checking from inside openclaw_agent_platform")
	require.Contains(t, out, `✅ Success! Health response: {"status":"ok"`)
	require.Contains(t, out, "✅ Success! Streamed chat completion: 3 chunks, ended with data: [DONE] (node node2)")

	broken := httptest.NewServer(fakeBalancer{healthStatus: 200, chatStatus: 200})
	defer broken.Close()
	code, out = runTestConnection(t, []string{path, "FAKE_BASE_URL=" + broken.URL + "/v1", "AI_LB_WAIT=0"})
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "❌ Stream did not end with data: [DONE]")
}

// ---------------------------------------------------------------------------
// Documentation
// ---------------------------------------------------------------------------

// TestDocs: relative links (and their #anchors) resolve, the OpenClaw
// quick start is the two commands the compose file and the script
// implement, every `caddy ...` command in a sh block parses, and the
// compose snippets of INTEGRATION.md are valid services.
func TestDocs(t *testing.T) {
	docs := []string{filepath.Join(repoRoot, "DEPLOYMENT.md"), filepath.Join("openclaw", "INTEGRATION.md")}
	link := regexp.MustCompile(`\]\(([^)#\s]*)(?:#([^)\s]*))?\)`)
	for _, doc := range docs {
		raw, err := os.ReadFile(doc)
		require.NoError(t, err)
		for _, m := range link.FindAllStringSubmatch(string(raw), -1) {
			target, anchor := m[1], m[2]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			path := doc
			if target != "" {
				path = filepath.Join(filepath.Dir(doc), target)
			}
			_, err := os.Stat(path)
			require.NoError(t, err, "%s links to %s", doc, target)
			if anchor != "" {
				require.Contains(t, headingAnchors(t, path), anchor, "%s links to %s#%s", doc, target, anchor)
			}
		}
		for _, line := range codeBlockLines(string(raw), "sh") {
			if args := caddyCommandIn(line); args != nil {
				parseCaddyCommand(t, args)
			}
		}
	}
	deployment, err := os.ReadFile(docs[0])
	require.NoError(t, err)
	require.Contains(t, string(deployment), "(deploy/openclaw/INTEGRATION.md)")
	require.Contains(t, string(deployment), "docker build -f xcaddy.Dockerfile -t ai-lb .")

	integration, err := os.ReadFile(docs[1])
	require.NoError(t, err)
	require.Contains(t, string(integration), "```sh\ndocker compose up -d\n./test_connection.sh\n```")

	// The vLLM and Ollama snippets: valid compose services whose sidecar
	// commands parse and register a valid node.
	var sidecars int
	for _, block := range codeBlocks(string(integration), "yaml") {
		var doc struct {
			Services map[string]map[string]any `yaml:"services"`
		}
		require.NoError(t, yaml.Unmarshal([]byte(block), &doc), block)
		require.NotEmpty(t, doc.Services, block)
		c := &composeFile{path: docs[1] + " (snippet)", dir: "openclaw", doc: map[string]any{}, services: doc.Services}
		checkNoAdminPort(t, c)
		for name, svc := range doc.Services {
			require.Contains(t, serviceNetworks(t, svc), "llm-mesh", "%s", name)
			args := stringList(t, svc["command"])
			if len(args) == 0 || args[0] != "caddy" {
				continue
			}
			checkBuild(t, c, name)
			require.Contains(t, svc, "healthcheck", "%s must override the image's healthcheck", name)
			require.True(t, dependsOnHealthy(t, svc, "redis"), "%s waits for redis", name)
			fs := parseCaddyCommand(t, args)
			require.Equal(t, []string{"caddy", "ai-lb", "register"}, args[:3], name)
			url, _ := fs.GetString("url")
			id, _ := fs.GetString("id")
			node := registry.Node{ID: id, URL: url, Models: []string{"m"}}
			require.NoError(t, node.Validate(), "%s", name)
			server, _, _ := strings.Cut(strings.TrimPrefix(url, "http://"), ":")
			require.Contains(t, doc.Services, server, "%s registers a server of the snippet", name)
			require.True(t, dependsOnHealthy(t, svc, server), "%s starts once %s is healthy", name, server)
			sidecars++
		}
	}
	require.Equal(t, 2, sidecars, "the vLLM and the Ollama sidecars")
}

// codeBlocks returns the fenced code blocks of a Markdown text in lang.
func codeBlocks(md, lang string) []string {
	var blocks []string
	var cur []string
	in := false
	for _, line := range strings.Split(md, "\n") {
		switch {
		case !in && line == "```"+lang:
			in, cur = true, nil
		case in && line == "```":
			in = false
			blocks = append(blocks, strings.Join(cur, "\n")+"\n")
		case in:
			cur = append(cur, line)
		}
	}
	return blocks
}

// codeBlockLines returns the commands of the code blocks in lang, with
// continued lines joined.
func codeBlockLines(md, lang string) []string {
	var lines []string
	for _, block := range codeBlocks(md, lang) {
		joined := strings.ReplaceAll(block, "\\\n", " ")
		lines = append(lines, strings.Split(joined, "\n")...)
	}
	return lines
}

// caddyCommandIn returns the `caddy <command> ...` a shell line runs, up
// to the first shell operator, or nil.
func caddyCommandIn(line string) []string {
	fields := strings.Fields(line)
	for i, f := range fields {
		if f != "caddy" || i+1 >= len(fields) {
			continue
		}
		if _, ok := caddycmd.Commands()[fields[i+1]]; !ok {
			continue
		}
		var args []string
		for _, a := range fields[i:] {
			if slices.Contains([]string{"|", "||", "&&", ";", ">", "2>&1"}, a) {
				break
			}
			args = append(args, a)
		}
		return args
	}
	return nil
}

// headingAnchors returns GitHub's anchors for the headings of a Markdown file.
func headingAnchors(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var anchors []string
	inCode := false
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "```") {
			inCode = !inCode
		}
		if inCode || !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || ('a' <= r && r <= 'z') || ('0' <= r && r <= '9') || r > 127:
				b.WriteRune(r)
			}
		}
		anchors = append(anchors, b.String())
	}
	return anchors
}
