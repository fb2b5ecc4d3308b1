// Command hedging benchmarks ai-lb's `hedge` handler: it runs the same
// closed-loop load of streamed chat completions through ai-lb without
// hedging and with hedging (adaptive-percentile delays and a fixed delay),
// against one simulated cluster, and reports client-side time to first
// token, the extra upstream requests hedging costs, the hedges won and how
// long a losing attempt keeps running after the race is won.
//
//	go run ./bench/hedging [flags]
//
// Everything runs on loopback: a redis-server subprocess, the simulated
// nodes (in this process) and one ai-lb subprocess per pass. Results go to
// bench/results/ (hedging.md, hedging-ttft.csv, hedging-ttft.svg).
package main

import (
	"context"
	"crypto/sha256"
	"encoding/csv"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ai-lb/ai-lb/simnode"
)

type options struct {
	binary         string
	out            string
	redisServer    string
	nodes          int
	concurrency    int
	requests       int
	warmup         int
	tokens         int
	itl            time.Duration
	ttft           time.Duration
	jitter         float64
	slowFraction   float64
	slowFactor     float64
	slowNodeFactor float64
	percentiles    []float64
	fallback       time.Duration
	fixedDelay     string
	budget         float64
	scenarios      string
	passTimeout    time.Duration
	reqTimeout     time.Duration
	seed           int64
	keep           bool
	binaryInfo     string
}

const model = "sim-model"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "hedging:", err)
		os.Exit(1)
	}
}

func parseFlags() *options {
	o := new(options)
	flag.StringVar(&o.binary, "binary", "", "ai-lb binary to run (default: build ./cmd/ai-lb into a temporary directory)")
	flag.StringVar(&o.out, "out", "", "output directory (default: bench/results in the module)")
	flag.StringVar(&o.redisServer, "redis-server", "redis-server", "redis-server executable")
	flag.IntVar(&o.nodes, "nodes", 8, "simulated nodes")
	flag.IntVar(&o.concurrency, "concurrency", 32, "closed-loop clients")
	flag.IntVar(&o.requests, "requests", 6000, "measured requests per pass")
	flag.IntVar(&o.warmup, "warmup", 300, "unmeasured requests before each pass (fills the adaptive window)")
	flag.IntVar(&o.tokens, "tokens", 8, "tokens per answer")
	flag.DurationVar(&o.itl, "itl", 5*time.Millisecond, "inter-token latency")
	flag.DurationVar(&o.ttft, "ttft", 100*time.Millisecond, "usual time to first token")
	flag.Float64Var(&o.jitter, "jitter", 0.25, "TTFT jitter (± fraction)")
	flag.Float64Var(&o.slowFraction, "slow-fraction", 0.02, "gate scenario: fraction of requests with a slow TTFT")
	flag.Float64Var(&o.slowFactor, "slow-factor", 10, "gate scenario: TTFT multiplier of slow requests")
	flag.Float64Var(&o.slowNodeFactor, "slow-node-factor", 5, "slow-node scenario: TTFT multiplier of node-0")
	percentiles := flag.String("percentiles", "95,90", "adaptive hedge: percentiles of recent TTFT to try, one pass each (comma-separated; empty: none)")
	flag.DurationVar(&o.fallback, "adaptive-fallback", 150*time.Millisecond, "adaptive hedge: delay until enough samples exist")
	flag.StringVar(&o.fixedDelay, "fixed-delay", "auto", `fixed hedge delay, or "auto": the scenario's no-hedge p95 TTFT`)
	flag.Float64Var(&o.budget, "budget", 0.1, "hedge budget (fraction of requests)")
	flag.StringVar(&o.scenarios, "scenarios", "gate,slow-node", "scenarios to run (comma-separated)")
	flag.DurationVar(&o.passTimeout, "pass-timeout", 90*time.Second, "stop sending new requests in a pass after this long")
	flag.DurationVar(&o.reqTimeout, "request-timeout", 30*time.Second, "per-request client timeout")
	flag.Int64Var(&o.seed, "seed", 1, "seed of the nodes' random draws (node i uses seed+i)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (Caddyfiles, ai-lb logs)")
	flag.Parse()
	for f := range strings.SplitSeq(*percentiles, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := strconv.ParseFloat(f, 64)
		if err != nil || v <= 0 || v > 100 {
			fmt.Fprintf(os.Stderr, "hedging: -percentiles: bad percentile %q\n", f)
			os.Exit(2)
		}
		o.percentiles = append(o.percentiles, v)
	}
	return o
}

// scenario is one cluster behaviour.
type scenario struct {
	name, short, title, description string
	gate                            bool
	setup                           func(i int, c *simnode.Config)
}

func scenarios(o *options) map[string]scenario {
	base := func(c *simnode.Config) {
		c.TTFT, c.TTFTJitter = o.ttft, o.jitter
		c.InterTokenLatency, c.Tokens = o.itl, o.tokens
		c.SlowFraction, c.SlowFactor = 0, o.slowFactor
		c.Slots, c.FailRate = 0, 0
	}
	return map[string]scenario{
		"gate": {
			name:  "gate",
			short: fmt.Sprintf("Gate (%g%% of requests %g× slow)", o.slowFraction*100, o.slowFactor),
			title: fmt.Sprintf("Gate: %d nodes, %g%% of requests %g× slow", o.nodes, o.slowFraction*100, o.slowFactor),
			description: fmt.Sprintf("%d nodes; TTFT %v ±%g%%; %g%% of requests (any node) have a TTFT %g× that; %d tokens, ITL %v.",
				o.nodes, o.ttft, o.jitter*100, o.slowFraction*100, o.slowFactor, o.tokens, o.itl),
			gate: true,
			setup: func(_ int, c *simnode.Config) {
				base(c)
				c.SlowFraction = o.slowFraction
			},
		},
		"slow-node": {
			name:  "slow-node",
			short: fmt.Sprintf("Slow node (1 of %d nodes %g× slower)", o.nodes, o.slowNodeFactor),
			title: fmt.Sprintf("Slow node: 1 of %d nodes %g× slower", o.nodes, o.slowNodeFactor),
			description: fmt.Sprintf("%d nodes; node-0 TTFT %v, the others %v, all ±%g%%; %d tokens, ITL %v.",
				o.nodes, time.Duration(float64(o.ttft)*o.slowNodeFactor), o.ttft, o.jitter*100, o.tokens, o.itl),
			setup: func(i int, c *simnode.Config) {
				base(c)
				if i == 0 {
					c.TTFT = time.Duration(float64(o.ttft) * o.slowNodeFactor)
				}
			},
		},
	}
}

func run() error {
	o := parseFlags()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	started := time.Now()

	root, err := moduleRoot()
	if err != nil {
		return err
	}
	if o.out == "" {
		o.out = filepath.Join(root, "bench", "results")
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	all := scenarios(o)
	var runList []scenario
	for name := range strings.SplitSeq(o.scenarios, ",") {
		sc, ok := all[strings.TrimSpace(name)]
		if !ok {
			return fmt.Errorf("unknown scenario %q (gate, slow-node)", name)
		}
		runList = append(runList, sc)
	}
	if o.fixedDelay != "auto" {
		if _, err := time.ParseDuration(o.fixedDelay); err != nil {
			return fmt.Errorf("-fixed-delay: %v", err)
		}
	}

	work, err := os.MkdirTemp("", "ai-lb-hedging-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Println("work directory:", work)
	} else {
		defer os.RemoveAll(work)
	}
	if o.binary == "" {
		fmt.Println("building ./cmd/ai-lb ...")
		if o.binary, err = buildBinary(ctx, root, work); err != nil {
			return err
		}
	}
	o.binaryInfo = describeBinary(o.binary)
	redisPath, err := exec.LookPath(o.redisServer)
	if err != nil {
		return fmt.Errorf("redis-server not found (apt-get install redis-server): %v", err)
	}
	rs, err := startRedis(ctx, redisPath, work)
	if err != nil {
		return err
	}
	defer rs.stop()
	prefix := fmt.Sprintf("bench-hedging-%d", os.Getpid())
	cl, err := startCluster(ctx, o.nodes, rs.url(), prefix, model, o.seed)
	if err != nil {
		return err
	}
	defer cl.stop()

	loadStart := loadavg()
	var passes []*passResult
	for _, sc := range runList {
		cl.configure(sc.setup)
		var noHedgeP95 time.Duration
		configs := []string{"no-hedge"}
		for _, q := range o.percentiles {
			configs = append(configs, fmt.Sprintf("p%g", q))
		}
		configs = append(configs, "fixed")
		for _, cfgName := range configs {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			label, block := "no hedge", ""
			budget := strconv.FormatFloat(o.budget*100, 'f', -1, 64) + "%"
			switch q, _ := strconv.ParseFloat(strings.TrimPrefix(cfgName, "p"), 64); {
			case q > 0:
				label = fmt.Sprintf("hedge p%g adaptive", q)
				block = fmt.Sprintf("\thedge {\n\t\tpercentile %g\n\t\tdelay %v\n\t\tbudget %s\n\t\tresponse_headers\n\t}\n",
					q, o.fallback, budget)
			case cfgName == "fixed":
				d := noHedgeP95.Round(time.Millisecond)
				if o.fixedDelay != "auto" {
					d, _ = time.ParseDuration(o.fixedDelay)
				}
				label = fmt.Sprintf("hedge fixed %v", d)
				block = fmt.Sprintf("\thedge {\n\t\tdelay %v\n\t\tbudget %s\n\t\tresponse_headers\n\t}\n", d, budget)
			}
			p, err := runPass(ctx, o, cl, rs.url(), prefix, work, sc, cfgName, label, block)
			if err != nil {
				return fmt.Errorf("%s / %s: %v", sc.name, cfgName, err)
			}
			if cfgName == "no-hedge" {
				noHedgeP95 = pct(p.TTFT, 95)
			}
			passes = append(passes, p)
			fmt.Printf("  %-9s %-22s ok %d err %d  TTFT p50 %s p99 %s p99.9 %s max %s  upstream +%.1f%%  hedges %d won %d  wall %.1fs  load %s -> %s\n",
				sc.name, label, p.OK, p.Errors, ms(pct(p.TTFT, 50)), ms(pct(p.TTFT, 99)), ms(pct(p.TTFT, 99.9)), ms(pct(p.TTFT, 100)),
				extraPct(p), p.HedgedByRecords, p.HedgeWonRecords, p.Wall.Seconds(), p.LoadBefore, p.LoadAfter)
		}
	}

	md := report(o, runList, passes, started, loadStart, loadavg())
	fmt.Println()
	fmt.Print(md)
	if err := os.WriteFile(filepath.Join(o.out, "hedging.md"), []byte(md), 0o644); err != nil {
		return err
	}
	if err := writeCSV(filepath.Join(o.out, "hedging-ttft.csv"), passes); err != nil {
		return err
	}
	svg := plotSVG(runList, passes)
	if err := os.WriteFile(filepath.Join(o.out, "hedging-ttft.svg"), []byte(svg), 0o644); err != nil {
		return err
	}
	fmt.Printf("\nwrote %s/{hedging.md,hedging-ttft.csv,hedging-ttft.svg}\n", o.out)
	return nil
}

// runPass starts a fresh ai-lb with the given hedge block, warms it up,
// then runs the measured load and collects what the nodes saw.
func runPass(ctx context.Context, o *options, cl *cluster, redisURL, prefix, work string, sc scenario,
	cfgName, label, block string) (*passResult, error) {
	name := sc.name + "-" + cfgName
	fmt.Printf("%s: starting ai-lb (%s)\n", name, label)
	lb, err := startLB(ctx, o.binary, work, name, redisURL, prefix, block, o.nodes)
	if err != nil {
		return nil, err
	}
	defer lb.stop()

	spec := loadSpec{url: lb.baseURL(), model: model, tokens: o.tokens, concurrency: o.concurrency,
		timeout: o.reqTimeout}
	if o.warmup > 0 {
		spec.count, spec.idPrefix, spec.deadline = o.warmup, name+"-warmup", time.Now().Add(o.passTimeout)
		warm, _ := runLoad(ctx, spec)
		for _, r := range warm {
			if r.Err != "" {
				return nil, fmt.Errorf("warm-up request failed: %s", r.Err)
			}
		}
	}
	if err := cl.waitIdle(10 * time.Second); err != nil {
		return nil, err
	}
	cl.reset()
	before, err := lb.metrics()
	if err != nil {
		return nil, err
	}
	p := &passResult{Scenario: sc.name, Config: cfgName, Label: label, HedgeBlock: block}
	p.LoadBefore = loadavg()
	cpu0, bcpu0 := lb.cpuTime(), selfCPU()

	spec.count, spec.idPrefix, spec.deadline = o.requests, name, time.Now().Add(o.passTimeout)
	p.Results, p.Wall = runLoad(ctx, spec)

	idleErr := cl.waitIdle(10 * time.Second)
	p.LBCPU, p.BenchCPU = lb.cpuTime()-cpu0, selfCPU()-bcpu0
	p.LoadAfter = loadavg()
	after, err := lb.metrics()
	if err != nil {
		return nil, err
	}
	p.Metrics = make(map[string]float64)
	for k, v := range after {
		p.Metrics[k] = v - before[k]
	}
	var records []nodeRecord
	for i, n := range cl.nodes {
		s := n.Stats()
		p.PerNode = append(p.PerNode, s.Received)
		p.Upstream += s.Received
		p.NodeAborted += s.Aborted
		p.NodeCompleted += s.Completed
		for _, r := range n.Requests() {
			records = append(records, nodeRecord{node: cl.ids[i], Record: r})
		}
	}
	p.analyze(records, cl.probe.snapshot())
	if idleErr != nil {
		p.ErrorSamples = append(p.ErrorSamples, idleErr.Error())
	}
	if len(p.Results) < o.requests {
		p.ErrorSamples = append(p.ErrorSamples,
			fmt.Sprintf("only %d of %d requests sent within -pass-timeout %v", len(p.Results), o.requests, o.passTimeout))
	}
	return p, nil
}

func loadavg() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(raw))
	if len(f) < 3 {
		return "?"
	}
	return f[0]
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func extraPct(p *passResult) float64 {
	n := len(p.Results)
	if n == 0 {
		return 0
	}
	return 100 * float64(p.Upstream-int64(n)) / float64(n)
}

// ms formats a duration in milliseconds.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	if v >= 100 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func commandLine() string {
	args := []string{"go", "run", "./bench/hedging"}
	for _, a := range os.Args[1:] {
		if a == "" || strings.ContainsAny(a, " \t\"'$\\*?;&|<>()") {
			a = strconv.Quote(a)
		}
		args = append(args, a)
	}
	return strings.Join(args, " ")
}

func writeCSV(path string, passes []*passResult) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	// The request id is scenario-config-seq (zero-padded); times in ms.
	_ = w.Write([]string{"scenario", "config", "seq", "start_ms", "ttft_ms", "total_ms", "after_done_ms",
		"node", "attempts", "error"})
	f1 := func(d time.Duration) string {
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64)
	}
	for _, p := range passes {
		for _, r := range p.Results {
			ttft := ""
			if r.Err == "" {
				ttft = f1(r.TTFT)
			}
			_ = w.Write([]string{p.Scenario, p.Config, strconv.Itoa(r.Seq), f1(r.Start), ttft, f1(r.Total),
				f1(r.AfterDone), r.Node, strconv.Itoa(r.Attempts), r.Err})
		}
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func machine() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d CPUs (GOMAXPROCS %d), %s %s/%s", runtime.NumCPU(), runtime.GOMAXPROCS(0),
		runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return b.String()
}

// describeBinary names the ai-lb binary and the start of its SHA-256.
func describeBinary(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return path
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return path
	}
	fi, _ := f.Stat()
	return fmt.Sprintf("%s (sha256 %x…, built %s)", filepath.Base(path), h.Sum(nil)[:6], fi.ModTime().UTC().Format("2006-01-02 15:04 MST"))
}
