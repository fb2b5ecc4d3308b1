package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

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
	require.Equal(t, "localhost:2019", env["CADDY_ADMIN"], "the admin API stays on the container's loopback")

	cmds := final.all("CMD")
	require.Len(t, cmds, 1)
	var cmd []string
	require.NoError(t, json.Unmarshal([]byte(cmds[0].args), &cmd), "CMD in exec form, so caddy is PID 1 and gets SIGTERM")
	require.Equal(t, []string{"caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"}, cmd)
	ParseCaddyCommand(t, cmd)
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
