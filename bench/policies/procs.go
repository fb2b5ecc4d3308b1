package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

	"github.com/ai-lb/ai-lb/simnode"
)

// proc is one child process of the benchmark: redis-server, a simulated
// node or ai-lb. Its output goes to a log file in the work directory.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, once done is closed
}

// procs tracks every child process so that one deferred stopAll ends them
// all, on success, on error and on interrupt alike.
type procs struct {
	mu   sync.Mutex
	live map[*proc]bool
	dir  string
}

func newProcs(dir string) *procs { return &procs{live: make(map[*proc]bool), dir: dir} }

// start runs argv with its output in <dir>/<name>.log.
func (g *procs) start(name string, argv []string, env ...string) (*proc, error) {
	logPath := filepath.Join(g.dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	g.mu.Lock()
	g.live[p] = true
	g.mu.Unlock()
	return p, nil
}

// exited reports whether the process has ended, with its status.
func (p *proc) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// stop asks the process to end (SIGINT: nodes deregister, ai-lb shuts
// down) and kills it if it has not within five seconds.
func (g *procs) stop(p *proc) {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	g.mu.Lock()
	delete(g.live, p)
	g.mu.Unlock()
}

// stopAll stops every process still running.
func (g *procs) stopAll() {
	g.mu.Lock()
	var all []*proc
	for p := range g.live {
		all = append(all, p)
	}
	g.mu.Unlock()
	g.stopEach(all...)
}

// stopEach stops the given processes in parallel.
func (g *procs) stopEach(ps ...*proc) {
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(func() { g.stop(p) })
	}
	wg.Wait()
}

// lastLines is the end of a process's log, for error messages.
func (p *proc) lastLines(n int) string {
	raw, err := os.ReadFile(p.log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// loopbackPort reserves nothing: it names a loopback port that was free.
func loopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}

// waitFor polls ready every 20 ms until it reports true, the process
// exits, the timeout passes or ctx ends.
func waitFor(ctx context.Context, p *proc, what string, timeout time.Duration, ready func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ready() {
		if gone, err := p.exited(); gone {
			return fmt.Errorf("%s exited (%v) before %s:\n%s", p.name, err, what, p.lastLines(20))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no %s within %v:\n%s", p.name, what, timeout, p.lastLines(20))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// startRedis runs an empty, non-persistent redis-server on loopback.
func startRedis(ctx context.Context, g *procs, name string) (string, error) {
	exe, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found (apt-get install redis-server): %v", name, err)
	}
	port, err := loopbackPort()
	if err != nil {
		return "", err
	}
	p, err := g.start("redis", []string{exe, "--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", g.dir})
	if err != nil {
		return "", err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	err = waitFor(ctx, p, "PONG", 10*time.Second, func() bool { return redisPing(addr) })
	return "redis://" + addr, err
}

// redisPing sends an inline PING and expects +PONG.
func redisPing(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	buf := make([]byte, 7)
	n, _ := c.Read(buf)
	return string(buf[:n]) == "+PONG\r\n"
}

// nodeSpec is how one simulated node behaves.
type nodeSpec struct {
	ttft, itl    time.Duration
	slots, queue int
}

// service is a request's mean time on a slot: prefill plus the tokens
// after the first.
func (s nodeSpec) service(tokens int) time.Duration {
	return s.ttft + time.Duration(tokens-1)*s.itl
}

// capacity is the requests per second the node completes when its slots
// are always busy.
func (s nodeSpec) capacity(tokens int) float64 {
	return float64(s.slots) / s.service(tokens).Seconds()
}

// simNode is a running `ai-lb simnode --register` process.
type simNode struct {
	id, url string
	p       *proc
}

// startNodes runs one `ai-lb ai-lb simnode --register` process per spec, each
// on its own loopback port, registered (without max_concurrency) under
// prefix. Node i is node-<i> with seed seed+i.
func startNodes(ctx context.Context, g *procs, o *options, tag, redisURL, prefix string, specs []nodeSpec) ([]*simNode, error) {
	var nodes []*simNode
	for i, s := range specs {
		port, err := loopbackPort()
		if err != nil {
			return nodes, err
		}
		n := &simNode{id: fmt.Sprintf("node-%d", i), url: fmt.Sprintf("http://127.0.0.1:%d", port)}
		argv := []string{o.binary, "ai-lb", "simnode", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
			"--register", "--redis", redisURL, "--prefix", prefix, "--id", n.id, "--models", model,
			"--ttft", s.ttft.String(), "--ttft-jitter", strconv.FormatFloat(o.jitter, 'f', -1, 64),
			"--itl", s.itl.String(), "--tokens", strconv.Itoa(o.tokens),
			"--slots", strconv.Itoa(s.slots), "--queue", strconv.Itoa(s.queue),
			"--seed", strconv.FormatInt(o.seed+int64(i), 10), "--load-interval", o.loadInterval.String()}
		if n.p, err = g.start(tag+"-"+n.id, argv); err != nil {
			return nodes, err
		}
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		err := waitFor(ctx, n.p, "answer on /health", 30*time.Second, func() bool {
			return callJSON(ctx, http.MethodGet, n.url+"/health", nil, nil) == nil
		})
		if err != nil {
			return nodes, err
		}
	}
	return nodes, nil
}

// records fetches the node's request records (its last 10,000).
func (n *simNode) records(ctx context.Context) ([]simnode.Record, error) {
	var out []simnode.Record
	err := callJSON(ctx, http.MethodGet, n.url+"/sim/requests", nil, &out)
	return out, err
}

// reconfigure changes the node's behaviour at run time (POST /sim/config).
func (n *simNode) reconfigure(ctx context.Context, patch map[string]any) error {
	return callJSON(ctx, http.MethodPost, n.url+"/sim/config", patch, nil)
}

// callJSON sends in (if any) as JSON and decodes a 200 answer into out
// (if any).
func callJSON(ctx context.Context, method, url string, in, out any) error {
	var body bytes.Buffer
	if in != nil {
		if err := json.NewEncoder(&body).Encode(in); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, &body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s", method, url, resp.Status)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// caddyfileTemplate is Caddyfile.example on loopback ports of its own,
// with the policy under test and no hedge handler.
const caddyfileTemplate = `{
	admin 127.0.0.1:{admin}
	http_port {http}
	https_port {https}
	grace_period 1ns
	skip_install_trust
	persist_config off
	ai_lb {
		redis {redis}
		prefix {prefix}
	}
}

http://127.0.0.1:{port} {
	bind 127.0.0.1
	ai_lb
	reverse_proxy {
		dynamic ai_lb
		lb_policy {policy}
	}
}
`

// balancer is a running ai-lb process.
type balancer struct {
	url string
	p   *proc
}

// startBalancer writes the Caddyfile of one policy, runs ai-lb with it and
// waits until its /health sees every node in a synced registry.
func startBalancer(ctx context.Context, g *procs, o *options, tag, redisURL, prefix, policy string, nodes int) (*balancer, error) {
	ports := make([]string, 4)
	for i := range ports {
		p, err := loopbackPort()
		if err != nil {
			return nil, err
		}
		ports[i] = strconv.Itoa(p)
	}
	cf := strings.NewReplacer("{port}", ports[0], "{admin}", ports[1], "{http}", ports[2], "{https}", ports[3],
		"{redis}", redisURL, "{prefix}", prefix, "{policy}", policy).Replace(caddyfileTemplate)
	dir := filepath.Join(g.dir, tag)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cf), 0o644); err != nil {
		return nil, err
	}
	p, err := g.start(tag+"-ai-lb", []string{o.binary, "run", "--config", path, "--adapter", "caddyfile"},
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"), "XDG_DATA_HOME="+filepath.Join(dir, "data"))
	if err != nil {
		return nil, err
	}
	b := &balancer{url: "http://127.0.0.1:" + ports[0], p: p}
	err = waitFor(ctx, p, fmt.Sprintf("/health with %d nodes", nodes), 60*time.Second, func() bool {
		var h struct {
			Nodes  int  `json:"nodes_found"`
			Synced bool `json:"registry_synced"`
		}
		return callJSON(ctx, http.MethodGet, b.url+"/health", nil, &h) == nil && h.Nodes == nodes && h.Synced
	})
	return b, err
}

// buildAILB builds ./cmd/ai-lb of the module at root into dir.
func buildAILB(ctx context.Context, root, dir string) (string, error) {
	exe := filepath.Join(dir, "ai-lb")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", exe, "./cmd/ai-lb")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/ai-lb: %v\n%s", err, out)
	}
	return exe, nil
}

// findModuleRoot walks up from the working directory to go.mod.
func findModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for ; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", errors.New("go.mod not found above the working directory: run from the repository")
		}
	}
}

// loadAverage is the 1-minute load average.
func loadAverage() string {
	raw, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(raw)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

// cpuSeconds is the user+system CPU time of this process and its waited-for
// children.
func cpuSeconds() float64 {
	var self, kids syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(self.Utime) + tv(self.Stime) + tv(kids.Utime) + tv(kids.Stime)
}
