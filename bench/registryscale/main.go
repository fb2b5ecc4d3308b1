// Command registryscale measures how the registry's engine-load traffic
// scales with the fleet: one redis-server on loopback, N simulated nodes
// publishing their load once a second through registry.Client.PublishLoad
// (the call each node's agent makes), and R watcher replicas
// (registry.NewWatcher with a health.Tracker) receiving it in one child
// process. For each (N, R) it reports the messages and bytes a replica
// receives per second, a replica's CPU, Redis's CPU, and the cost of one
// selection (snapshot lookup, two load reads, health.Cost) at N nodes.
//
//	go run ./bench/registryscale                      # N=1000,10000 × R=1,10, ~2 min
//	go run ./bench/registryscale -nodes 1000 -replicas 1 -window 5s
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ai-lb/ai-lb/registry"
)

const prefix = "registryscale"

// model is what every simulated node serves.
const model = "llama-3.1-8b"

func main() {
	nodesFlag := flag.String("nodes", "1000,10000", "fleet sizes, comma-separated")
	replicasFlag := flag.String("replicas", "1,10", "watcher replica counts, comma-separated")
	window := flag.Duration("window", 12*time.Second, "measurement window per point")
	warmup := flag.Duration("warmup", 3*time.Second, "publishing before the window opens")
	watchRedis := flag.String("watch", "", "internal: run the watcher replicas against this Redis URL")
	watchN := flag.Int("n", 1, "internal: watcher replicas in this process")
	flag.Parse()
	log.SetFlags(0)
	if *watchRedis != "" {
		if err := watchers(*watchRedis, *watchN); err != nil {
			log.Fatal(err)
		}
		return
	}
	nodes, err := ints(*nodesFlag)
	if err != nil {
		log.Fatal(err)
	}
	replicas, err := ints(*replicasFlag)
	if err != nil {
		log.Fatal(err)
	}
	if err := run(nodes, replicas, *warmup, *window); err != nil {
		log.Fatal(err)
	}
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("%q: not a positive integer", f)
		}
		out = append(out, v)
	}
	return out, nil
}

// point is one measured (N, R) combination.
type point struct {
	Nodes, Replicas int
	Window          time.Duration
	Published       int64   // PUBLISH calls on the load channel in the window (Redis commandstats)
	PublishErrs     int64   // failed PublishLoad calls in the window
	ReplicaBytes    float64 // bytes read by all replicas' connections, per second
	PubSubBytes     float64 // of which on the subscriptions' connections
	Messages        float64 // pub/sub messages received by all replicas, per second
	RedisOutBytes   float64 // Redis total_net_output_bytes per second
	ReplicaCPU      float64 // CPU seconds of the replicas' process per second
	RedisCPU        float64 // Redis used_cpu_user+sys per second
	PublisherCPU    float64 // CPU seconds of the publishing process per second
	LoadBefore      string
	LoadAfter       string
}

func run(nodeCounts, replicaCounts []int, warmup, window time.Duration) error {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	dir, err := os.MkdirTemp("", "registryscale")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	srv, addr, err := startRedis(dir)
	if err != nil {
		return err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	url := "redis://" + addr
	admin := redis.NewClient(&redis.Options{Addr: addr})
	defer admin.Close()
	ver, _ := infoField(ctx, admin, "server", "redis_version")
	fmt.Printf("redis %s at %s, %d CPUs, load average %s\n", ver, addr, runtime.NumCPU(), loadAvg())

	var points []point
	for _, n := range nodeCounts {
		for _, r := range replicaCounts {
			p, err := measure(ctx, admin, url, n, r, warmup, window)
			if err != nil {
				return fmt.Errorf("N=%d R=%d: %v", n, r, err)
			}
			points = append(points, p)
			fmt.Println(row(p))
		}
	}
	fmt.Println()
	fmt.Println(header())
	for _, p := range points {
		fmt.Println(row(p))
	}
	fmt.Println()
	fmt.Println("| nodes | selection ns/op (ServingModel + 2 random members + 2 × Load + Cost) |")
	fmt.Println("|---:|---:|")
	for _, n := range nodeCounts {
		fmt.Printf("| %d | %.0f |\n", n, selectionCost(n))
	}
	return nil
}

// startRedis runs a non-persistent redis-server on a loopback port that
// was free a moment earlier, and waits until it answers.
func startRedis(dir string) (*exec.Cmd, string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	addr := l.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	_ = l.Close()
	cmd := exec.Command("redis-server", "--bind", "127.0.0.1", "--port", port, "--save", "",
		"--appendonly", "no", "--dir", dir, "--logfile", dir+"/redis.log")
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("redis-server: %v", err)
	}
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	for i := 0; ; i++ {
		if c.Ping(context.Background()).Err() == nil {
			return cmd, addr, nil
		}
		if i == 200 {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return nil, "", fmt.Errorf("redis-server on %s: no PONG", addr)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// simNode is the registry entry of simulated node i: a unique dial
// address (never dialled) and a TTL longer than any run, so that the
// benchmark needs no heartbeats.
func simNode(i int) registry.Node {
	return registry.Node{ID: fmt.Sprintf("node-%05d", i),
		URL:    fmt.Sprintf("http://10.%d.%d.%d:8000", i>>16&255, i>>8&255, i&255),
		Models: []string{model}, MaxConcurrency: 0, TTLMillis: int64(time.Hour / time.Millisecond)}
}

func measure(ctx context.Context, admin *redis.Client, url string, n, r int, warmup, window time.Duration) (point, error) {
	p := point{Nodes: n, Replicas: r, Window: window}
	if err := admin.FlushAll(ctx).Err(); err != nil {
		return p, err
	}
	workers := max(8, min(96, n/100))
	pubRDB := redis.NewClient(&redis.Options{Addr: strings.TrimPrefix(url, "redis://"), PoolSize: workers})
	defer pubRDB.Close()
	pub := registry.NewClient(pubRDB, prefix)
	if err := registerAll(ctx, pub, n, workers); err != nil {
		return p, err
	}

	child, err := startWatchers(url, r)
	if err != nil {
		return p, err
	}
	defer child.close()

	pctx, stopPub := context.WithCancel(ctx)
	var errs atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			publish(pctx, pub, n, w, workers, &errs)
		}()
	}
	defer func() { stopPub(); wg.Wait() }()

	time.Sleep(warmup)
	p.LoadBefore = loadAvg()
	s0, err := sample(ctx, admin, child)
	if err != nil {
		return p, err
	}
	e0 := errs.Load()
	time.Sleep(window)
	s1, err := sample(ctx, admin, child)
	if err != nil {
		return p, err
	}
	p.LoadAfter = loadAvg()
	secs := s1.at.Sub(s0.at).Seconds()
	p.Window = s1.at.Sub(s0.at).Round(time.Millisecond)
	p.Published = s1.publish - s0.publish
	p.PublishErrs = errs.Load() - e0
	p.ReplicaBytes = float64(s1.child.Bytes-s0.child.Bytes) / secs
	p.PubSubBytes = float64(s1.child.PubSubBytes-s0.child.PubSubBytes) / secs
	p.Messages = float64(s1.child.Messages-s0.child.Messages) / secs
	p.ReplicaCPU = (s1.child.CPU - s0.child.CPU) / secs
	p.RedisCPU = (s1.redisCPU - s0.redisCPU) / secs
	p.RedisOutBytes = float64(s1.redisOut-s0.redisOut) / secs
	p.PublisherCPU = (s1.selfCPU - s0.selfCPU) / secs
	return p, nil
}

// registerAll registers nodes 0..n-1 with Client.Register, the agent's
// registration and heartbeat call.
func registerAll(ctx context.Context, c *registry.Client, n, workers int) error {
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				if err := c.Register(ctx, simNode(i)); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// publish sends, once a second, fresh figures for the nodes i ≡ w (mod
// workers) with PublishLoad, spread over the second: worker w starts at
// w/workers of it, and each node's figures differ from its last.
func publish(ctx context.Context, c *registry.Client, n, w, workers int, errs *atomic.Int64) {
	rng := rand.New(rand.NewPCG(uint64(w), 42))
	start := time.Now().Truncate(time.Second).Add(time.Second + time.Duration(w)*time.Second/time.Duration(workers))
	for tick := 0; ; tick++ {
		t := time.NewTimer(time.Until(start.Add(time.Duration(tick) * time.Second)))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		for i := w; i < n; i += workers {
			f := registry.LoadFigures{ID: simNode(i).ID, Running: float64(rng.IntN(8)), Waiting: float64(tick % 5),
				KVCacheUsage: float64(rng.IntN(1000)) / 1000, MaxRunning: 8}
			if ok, err := c.PublishLoad(ctx, f); (err != nil || !ok) && ctx.Err() == nil {
				errs.Add(1)
			}
		}
	}
}

// snap is one reading of every counter.
type snap struct {
	at                time.Time
	child             childStats
	redisCPU, selfCPU float64
	redisOut, publish int64
}

func sample(ctx context.Context, admin *redis.Client, child *watcherProc) (snap, error) {
	s := snap{at: time.Now(), selfCPU: processCPU()}
	var err error
	if s.child, err = child.stats(); err != nil {
		return s, err
	}
	user, _ := infoField(ctx, admin, "cpu", "used_cpu_user")
	sys, _ := infoField(ctx, admin, "cpu", "used_cpu_sys")
	u, _ := strconv.ParseFloat(user, 64)
	y, _ := strconv.ParseFloat(sys, 64)
	s.redisCPU = u + y
	out, _ := infoField(ctx, admin, "stats", "total_net_output_bytes")
	s.redisOut, _ = strconv.ParseInt(out, 10, 64)
	// cmdstat_publish:calls=123,usec=...
	pubs, _ := infoField(ctx, admin, "commandstats", "cmdstat_publish")
	if f, ok := strings.CutPrefix(pubs, "calls="); ok {
		f, _, _ = strings.Cut(f, ",")
		s.publish, _ = strconv.ParseInt(f, 10, 64)
	}
	return s, nil
}

// infoField reads one field of a section of INFO.
func infoField(ctx context.Context, c *redis.Client, section, field string) (string, error) {
	raw, err := c.Info(ctx, section).Result()
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(raw, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("INFO %s: no %s", section, field)
}

func loadAvg() string {
	raw, _ := os.ReadFile("/proc/loadavg")
	return strings.Join(strings.Fields(string(raw))[:min(3, len(strings.Fields(string(raw))))], " ")
}

// watcherProc is the child process that runs the replicas: a line on its
// stdin asks for its counters, one JSON line on its stdout answers.
type watcherProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// childStats are the child's cumulative counters.
type childStats struct {
	CPU   float64 // user+system seconds of the whole process
	Bytes int64   // bytes read from Redis by all replicas' connections
	// PubSubBytes and Messages: what the subscriptions' connections read.
	PubSubBytes, Messages int64
}

func startWatchers(url string, r int) (*watcherProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-watch", url, "-n", strconv.Itoa(r))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	w := &watcherProc{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	// The first line says every replica has done its first full read.
	if !w.out.Scan() {
		w.close()
		return nil, fmt.Errorf("watcher process: no ready line")
	}
	return w, nil
}

func (w *watcherProc) stats() (childStats, error) {
	var s childStats
	if _, err := io.WriteString(w.in, "stats\n"); err != nil {
		return s, err
	}
	if !w.out.Scan() {
		return s, fmt.Errorf("watcher process: no answer")
	}
	return s, json.Unmarshal(w.out.Bytes(), &s)
}

// close ends the child: EOF on its stdin closes its watchers.
func (w *watcherProc) close() {
	_ = w.in.Close()
	done := make(chan struct{})
	go func() { _ = w.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = w.cmd.Process.Kill()
		<-done
	}
}

func header() string {
	return "| nodes N | replicas R | load msgs/s published | per replica: msgs/s received | per replica: pub/sub KB/s | per replica: all KB/s (with 5 s resyncs) | per replica: CPU % of a core | Redis CPU % of a core | Redis out KB/s | publisher process CPU % | failed publishes | load avg before → after |\n" +
		"|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
}

func row(p point) string {
	secs := p.Window.Seconds()
	r := float64(p.Replicas)
	return fmt.Sprintf("| %d | %d | %.0f | %.0f | %.1f | %.1f | %.2f | %.1f | %.0f | %.1f | %d | %s → %s |",
		p.Nodes, p.Replicas, float64(p.Published)/secs, p.Messages/r, p.PubSubBytes/r/1024, p.ReplicaBytes/r/1024, 100*p.ReplicaCPU/r,
		100*p.RedisCPU, p.RedisOutBytes/1024, 100*p.PublisherCPU, p.PublishErrs, p.LoadBefore, p.LoadAfter)
}
