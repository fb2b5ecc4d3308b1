package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/simnode"
)

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// redisServer is a redis-server subprocess on a free loopback port.
type redisServer struct {
	cmd    *exec.Cmd
	port   int
	exited chan struct{}
}

func startRedis(ctx context.Context, path, dir string) (*redisServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(dir, "redis.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", dir)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("starting %s: %v", path, err)
	}
	s := &redisServer{cmd: cmd, port: port, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); log.Close(); close(s.exited) }()
	rdb, err := registry.NewRedis(s.url())
	if err != nil {
		s.stop()
		return nil, err
	}
	defer rdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for rdb.Ping(ctx).Err() != nil {
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.stop()
			return nil, fmt.Errorf("redis-server on port %d did not answer PING", port)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s, nil
}

func (s *redisServer) url() string { return fmt.Sprintf("redis://127.0.0.1:%d", s.port) }

func (s *redisServer) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// cluster is the simulated LLM nodes, each an HTTP server on its own
// loopback port in this process, registered in Redis.
type cluster struct {
	probe   bodyProbe
	nodes   []*simnode.Node
	ids     []string
	urls    []string
	servers []*http.Server
	reg     *registry.Client
}

func startCluster(ctx context.Context, n int, redisURL, prefix, model string, seed int64) (*cluster, error) {
	reg, err := registry.Open(redisURL, prefix)
	if err != nil {
		return nil, err
	}
	c := &cluster{reg: reg}
	for i := range n {
		id := fmt.Sprintf("node-%d", i)
		node := simnode.New(simnode.Config{ID: id, Models: []string{model}, Seed: seed + int64(i)})
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			c.stop()
			return nil, err
		}
		srv := &http.Server{Handler: c.probe.wrap(id, node), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(l) }()
		url := "http://" + l.Addr().String()
		c.nodes = append(c.nodes, node)
		c.ids = append(c.ids, id)
		c.urls = append(c.urls, url)
		c.servers = append(c.servers, srv)
		// A long TTL: no heartbeats are needed for the whole run.
		if err := reg.Register(ctx, registry.Node{ID: id, URL: url, Models: []string{model},
			TTLMillis: (6 * time.Hour).Milliseconds()}); err != nil {
			c.stop()
			return nil, fmt.Errorf("registering %s: %v", id, err)
		}
	}
	return c, nil
}

// configure sets every node's behaviour.
func (c *cluster) configure(f func(i int, cfg *simnode.Config)) {
	for i, n := range c.nodes {
		n.Update(func(cfg *simnode.Config) { f(i, cfg) })
	}
}

// waitIdle waits until no node has a request in flight or queued.
func (c *cluster) waitIdle(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		busy := int64(0)
		for _, n := range c.nodes {
			s := n.Stats()
			busy += s.InFlight + s.Waiting
		}
		if busy == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nodes still have %d requests in flight after %v", busy, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *cluster) reset() {
	for _, n := range c.nodes {
		n.Reset()
	}
	c.probe.reset()
}

// bodyProbe records, by node and X-Request-Id, request bodies that could
// not be read to the end: simnode answers those 400 and does not say why.
type bodyProbe struct {
	mu   sync.Mutex
	errs map[string]string
}

func (b *bodyProbe) wrap(node string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Method == http.MethodPost {
			r.Body = &probedBody{ReadCloser: r.Body, probe: b, key: node + "|" + r.Header.Get("X-Request-Id"),
				want: r.ContentLength}
		}
		next.ServeHTTP(w, r)
	})
}

func (b *bodyProbe) reset() {
	b.mu.Lock()
	b.errs = nil
	b.mu.Unlock()
}

func (b *bodyProbe) snapshot() map[string]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]string, len(b.errs))
	maps.Copy(out, b.errs)
	return out
}

type probedBody struct {
	io.ReadCloser
	probe *bodyProbe
	key   string
	n     int64
	want  int64
}

func (p *probedBody) Read(buf []byte) (int, error) {
	n, err := p.ReadCloser.Read(buf)
	p.n += int64(n)
	if err != nil && !errors.Is(err, io.EOF) {
		p.probe.mu.Lock()
		if p.probe.errs == nil {
			p.probe.errs = make(map[string]string)
		}
		p.probe.errs[p.key] = fmt.Sprintf("body cut after %d of %d bytes: %v", p.n, p.want, err)
		p.probe.mu.Unlock()
	}
	return n, err
}

func (c *cluster) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i, srv := range c.servers {
		_, _ = c.reg.Deregister(ctx, c.ids[i])
		_ = srv.Close()
	}
	_ = c.reg.Close()
}

// lbInstance is one ai-lb subprocess with its own site and admin ports.
type lbInstance struct {
	name      string
	cmd       *exec.Cmd
	port      int
	adminPort int
	dir       string
	logPath   string
	exited    chan error
}

// caddyfile is the Caddyfile.example shape for a subprocess: its own admin
// and HTTP(S) ports, the site bound to loopback, and an optional hedge
// block between ai_lb and reverse_proxy.
func caddyfile(redisURL, prefix string, port, adminPort, httpPort, httpsPort int, hedge string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin 127.0.0.1:%d\n\thttp_port %d\n\thttps_port %d\n\tgrace_period 1ns\n\tskip_install_trust\n\tpersist_config off\n",
		adminPort, httpPort, httpsPort)
	fmt.Fprintf(&b, "\tai_lb {\n\t\tredis %s\n\t\tprefix %s\n\t}\n}\n\n", redisURL, prefix)
	fmt.Fprintf(&b, "http://127.0.0.1:%d {\n\tbind 127.0.0.1\n\tai_lb\n", port)
	if hedge != "" {
		b.WriteString(hedge)
	}
	b.WriteString("\treverse_proxy {\n\t\tdynamic ai_lb\n\t\tlb_policy p2c\n\t}\n}\n")
	return b.String()
}

func startLB(ctx context.Context, binary, workDir, name, redisURL, prefix, hedge string, wantNodes int) (*lbInstance, error) {
	var ports [4]int
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	dir := filepath.Join(workDir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cf := caddyfile(redisURL, prefix, ports[0], ports[1], ports[2], ports[3], hedge)
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cf), 0o644); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "ai-lb.log")
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(binary, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"), "XDG_DATA_HOME="+filepath.Join(dir, "data"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	in := &lbInstance{name: name, cmd: cmd, port: ports[0], adminPort: ports[1], dir: dir, logPath: logPath,
		exited: make(chan error, 1)}
	go func() { in.exited <- cmd.Wait(); log.Close() }()

	// Ready when /health shows every node and a synced registry.
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-in.exited:
			in.exited <- err
			return nil, fmt.Errorf("ai-lb %s exited early: %v\n%s", name, err, tail(logPath, 30))
		default:
		}
		if ok, _ := in.healthy(wantNodes); ok {
			return in, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			in.stop()
			return nil, fmt.Errorf("ai-lb %s not ready within 60s\n%s", name, tail(logPath, 30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (in *lbInstance) baseURL() string { return fmt.Sprintf("http://127.0.0.1:%d", in.port) }

func (in *lbInstance) healthy(wantNodes int) (bool, error) {
	resp, err := http.Get(in.baseURL() + "/health")
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var h struct {
		NodesFound     int  `json:"nodes_found"`
		RegistrySynced bool `json:"registry_synced"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return false, err
	}
	return h.NodesFound == wantNodes && h.RegistrySynced, nil
}

// metrics scrapes the ai_lb_hedge_* counters from the admin /metrics.
func (in *lbInstance) metrics() (map[string]float64, error) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", in.adminPort))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin /metrics: %s", resp.Status)
	}
	out := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "ai_lb_hedge_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// cpuTime is the CPU time (user+system) the process has used so far.
func (in *lbInstance) cpuTime() time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", in.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ = 100
}

func (in *lbInstance) stop() {
	_ = in.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-in.exited:
		in.exited <- err
	case <-time.After(10 * time.Second):
		_ = in.cmd.Process.Kill()
		in.exited <- <-in.exited
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	raw, _ := io.ReadAll(io.LimitReader(f, 8<<20))
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// buildBinary builds cmd/ai-lb into dir.
func buildBinary(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "ai-lb")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/ai-lb")
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/ai-lb: %v\n%s", err, out.String())
	}
	return bin, nil
}

// moduleRoot finds the directory of the go.mod above the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory; run from the repository")
		}
		dir = parent
	}
}
