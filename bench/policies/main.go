// Command policies compares ai-lb's `p2c` selection policy with Caddy's
// own (`round_robin`, `least_conn`, `random_choose 2`) on simulated LLM
// traffic: open-loop Poisson arrivals of streamed chat completions through
// one ai-lb binary, started once per policy with a Caddyfile that differs
// only in `lb_policy` (the `ai_lb` handler in front, no `hedge`).
//
//	go run ./bench/policies [flags]     # about 10 minutes
//	go run ./bench/policies -quick      # a smoke run, about a minute
//
// Everything runs on 127.0.0.1: one redis-server, the simulated nodes as
// `ai-lb simnode --register` processes (a fresh set for every policy, same
// seeds), and the ai-lb process. Results go to bench/results/
// (policies.md, policies.csv, policies-ttft.svg) or -out.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

const model = "sim-model"

// policy is one lb_policy under test; name is its label and file-safe.
type policy struct{ name, directive string }

var knownPolicies = []policy{
	{"round_robin", "round_robin"},
	{"least_conn", "least_conn"},
	{"random_choose_2", "random_choose 2"},
	{"p2c", "p2c"},
}

type options struct {
	binary, binarySource     string
	out, redisServer         string
	quick, keep              bool
	seed                     int64
	durHetero, durSlowdown   time.Duration
	utilisation              float64
	ttft, itl                time.Duration
	jitter                   float64
	tokens, slots, queue     int
	heteroFactor, slowFactor float64
	timeout                  time.Duration
	replicas                 int
	loadInterval             time.Duration
	policies                 []policy
	scenarios                []string
	args                     []string
}

func parseOptions(args []string) (*options, error) {
	o := &options{args: args}
	fs := flag.NewFlagSet("policies", flag.ContinueOnError)
	fs.StringVar(&o.binary, "binary", "", "ai-lb binary (default: $AI_LB_BINARY, else build ./cmd/ai-lb into a temporary directory)")
	fs.StringVar(&o.binarySource, "binary-source", "", "what -binary was built from, for the report (e.g. a commit)")
	fs.StringVar(&o.out, "out", "", "output directory (default: bench/results of the module)")
	fs.StringVar(&o.redisServer, "redis-server", "redis-server", "redis-server executable")
	fs.BoolVar(&o.quick, "quick", false, "smoke run: a few seconds of load per policy")
	fs.BoolVar(&o.keep, "keep", false, "keep the work directory (Caddyfiles, process logs)")
	fs.Int64Var(&o.seed, "seed", 1, "seed of the arrivals and of the nodes (node i: seed+i)")
	fs.DurationVar(&o.durHetero, "duration-hetero", 60*time.Second, "load per policy in the heterogeneous scenario")
	fs.DurationVar(&o.durSlowdown, "duration-slowdown", 60*time.Second, "load per policy in the slowdown scenario (the node slows after a third)")
	fs.Float64Var(&o.utilisation, "utilisation", 0.8, "offered load as a fraction of the cluster's capacity")
	fs.DurationVar(&o.ttft, "ttft", 150*time.Millisecond, "a normal node's time to first token")
	fs.Float64Var(&o.jitter, "jitter", 0.2, "TTFT jitter (± fraction)")
	fs.DurationVar(&o.itl, "itl", 10*time.Millisecond, "a normal node's inter-token latency")
	fs.IntVar(&o.tokens, "tokens", 16, "tokens per answer")
	fs.IntVar(&o.slots, "slots", 8, "a normal node's concurrent generations")
	fs.IntVar(&o.queue, "queue", 64, "requests a node queues beyond its slots (more get 429)")
	fs.Float64Var(&o.heteroFactor, "hetero-slow-factor", 2, "heterogeneous scenario: how much slower the slow node is (TTFT and ITL)")
	fs.Float64Var(&o.slowFactor, "slowdown-factor", 3, "slowdown scenario: how much slower the node becomes (TTFT and ITL)")
	fs.DurationVar(&o.timeout, "request-timeout", 60*time.Second, "client timeout per request")
	fs.IntVar(&o.replicas, "replicas", 1, "ai-lb replicas on the same Redis, each taking an equal share of the requests")
	fs.DurationVar(&o.loadInterval, "load-interval", time.Second, "how often each node's agent publishes its engine load (the agents' --load-interval)")
	pols := fs.String("policies", "round_robin,least_conn,random_choose_2,p2c", "policies to compare (comma-separated)")
	scs := fs.String("scenarios", "hetero,slowdown", "scenarios to run (comma-separated)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for name := range strings.SplitSeq(*pols, ",") {
		found := false
		for _, p := range knownPolicies {
			if p.name == strings.TrimSpace(name) {
				o.policies, found = append(o.policies, p), true
			}
		}
		if !found {
			return nil, fmt.Errorf("-policies: unknown policy %q", name)
		}
	}
	for name := range strings.SplitSeq(*scs, ",") {
		name = strings.TrimSpace(name)
		if name != "hetero" && name != "slowdown" {
			return nil, fmt.Errorf("-scenarios: unknown scenario %q (hetero, slowdown)", name)
		}
		o.scenarios = append(o.scenarios, name)
	}
	if o.quick {
		o.durHetero, o.durSlowdown = time.Second, 2*time.Second
	}
	if o.tokens < 2 || o.slots < 2 || o.utilisation <= 0 || o.replicas < 1 {
		return nil, errors.New("-tokens and -slots must be at least 2, -utilisation above 0, -replicas at least 1")
	}
	return o, nil
}

// scenario is a cluster, its load and, for the slowdown, the change.
type scenario struct {
	name, title string
	specs       []nodeSpec
	capacity    float64 // requests/s the cluster completes, the basis of rate
	rate        float64 // offered requests/s
	duration    time.Duration
	// slowdown: node changeNode becomes changeTo at changeAt.
	changeNode int
	changeAt   time.Duration
	changeTo   *nodeSpec
}

func (o *options) normal() nodeSpec {
	return nodeSpec{ttft: o.ttft, itl: o.itl, slots: o.slots, queue: o.queue}
}

func (s nodeSpec) slower(f float64) nodeSpec {
	s.ttft = time.Duration(float64(s.ttft) * f)
	s.itl = time.Duration(float64(s.itl) * f)
	return s
}

func capacityOf(specs []nodeSpec, tokens int) float64 {
	sum := 0.0
	for _, s := range specs {
		sum += s.capacity(tokens)
	}
	return sum
}

func buildScenario(o *options, name string) *scenario {
	n := o.normal()
	switch name {
	case "hetero":
		half := n
		half.slots = max(1, n.slots/2)
		sc := &scenario{name: name, title: "(a) Heterogeneous nodes",
			specs: []nodeSpec{n, n, n.slower(o.heteroFactor), half}, duration: o.durHetero, changeNode: -1}
		sc.capacity = capacityOf(sc.specs, o.tokens)
		sc.rate = o.utilisation * sc.capacity
		return sc
	default: // slowdown
		slow := n.slower(o.slowFactor)
		sc := &scenario{name: name, title: "(b) One node slows down mid-run",
			specs: []nodeSpec{n, n, n, n}, duration: o.durSlowdown,
			changeNode: 2, changeAt: o.durSlowdown / 3, changeTo: &slow}
		after := []nodeSpec{n, n, slow, n}
		// The rate the cluster can still carry once the node is slow.
		sc.capacity = capacityOf(after, o.tokens)
		sc.rate = o.utilisation * sc.capacity
		return sc
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "policies:", err)
		os.Exit(1)
	}
}

// run is the whole benchmark; logf lines go to w.
func run(ctx context.Context, args []string, w interface{ Write([]byte) (int, error) }) error {
	o, err := parseOptions(args)
	if err != nil {
		return err
	}
	logf := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	began := time.Now()
	root, err := findModuleRoot()
	if err != nil {
		return err
	}
	o.out = cmp.Or(o.out, filepath.Join(root, "bench", "results"))
	work, err := os.MkdirTemp("", "ai-lb-policies-")
	if err != nil {
		return err
	}
	if o.keep {
		logf("work directory (kept): %s", work)
	} else {
		defer os.RemoveAll(work)
	}
	g := newProcs(work)
	defer g.stopAll()

	binaryNote, err := resolveBinary(ctx, o, root, work, logf)
	if err != nil {
		return err
	}
	redisURL, err := startRedis(ctx, g, o.redisServer)
	if err != nil {
		return err
	}

	rep := &report{o: o, began: began, loadStart: loadAverage(), machine: machineNote(), binaryNote: binaryNote}
	for _, name := range o.scenarios {
		sc := buildScenario(o, name)
		rep.scenarios = append(rep.scenarios, sc)
		times := arrivals(sc.rate, sc.duration, o.seed)
		logf("%s: %d nodes, capacity %.1f req/s, offered %.1f req/s (%d requests in %v)",
			sc.name, len(sc.specs), sc.capacity, sc.rate, len(times), sc.duration)
		for _, pol := range o.policies {
			r, err := runPolicy(ctx, g, o, sc, pol, redisURL, times)
			if err != nil {
				return fmt.Errorf("%s / %s: %v", sc.name, pol.name, err)
			}
			r.analyze()
			rep.runs = append(rep.runs, r)
			logf("  %-16s ok %4d err %3d  TTFT p50 %4.0f p99 %5.0f ms  completion p99 %5.0f ms  per node %v  send lag p99 %.1f ms",
				pol.name, r.ok, r.errs, quantile(r.ttft, .50), quantile(r.ttft, .99), quantile(r.total, .99),
				r.answered, quantile(r.lag, .99))
			if sc.changeTo != nil {
				logf("  %-16s share to node-%d before %.1f%%, dropped below half within %s", "", sc.changeNode,
					100*r.preShare, dropText(r.dropWithin))
			}
		}
	}
	g.stopAll()
	rep.loadEnd, rep.cpu = loadAverage(), cpuSeconds()
	files := map[string][]byte{
		"policies.md":       []byte(rep.markdown()),
		"policies.csv":      rep.csv(),
		"policies-ttft.svg": []byte(rep.svg()),
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(o.out, name), data, 0o644); err != nil {
			return err
		}
	}
	logf("wrote %s/{policies.md,policies.csv,policies-ttft.svg} in %v", o.out, time.Since(began).Round(time.Second))
	return nil
}

// resolveBinary settles o.binary (-binary, else $AI_LB_BINARY, else a
// build of the working tree) and says where it came from.
func resolveBinary(ctx context.Context, o *options, root, work string, logf func(string, ...any)) (string, error) {
	switch {
	case o.binary != "" && o.binarySource != "":
		return fmt.Sprintf("`%s`, given with -binary, built from %s", o.binary, o.binarySource), nil
	case o.binary != "":
		return fmt.Sprintf("`%s`, given with -binary", o.binary), nil
	case os.Getenv("AI_LB_BINARY") != "":
		o.binary = os.Getenv("AI_LB_BINARY")
		return fmt.Sprintf("`%s`, from $AI_LB_BINARY", o.binary), nil
	}
	logf("building ./cmd/ai-lb ...")
	exe, err := buildAILB(ctx, root, work)
	o.binary = exe
	return "built from the working tree at HEAD " + gitHead(root) + " (with any uncommitted changes)", err
}

// runPolicy runs one scenario through one policy: fresh nodes, a fresh
// ai-lb, the load, and the nodes' records.
func runPolicy(ctx context.Context, g *procs, o *options, sc *scenario, pol policy, redisURL string,
	times []time.Duration) (*policyRun, error) {
	tag := sc.name + "-" + pol.name
	prefix := fmt.Sprintf("bench-policies-%d-%s", os.Getpid(), tag)
	nodes, err := startNodes(ctx, g, o, tag, redisURL, prefix, sc.specs)
	defer func() {
		var ps []*proc
		for _, n := range nodes {
			ps = append(ps, n.p)
		}
		g.stopEach(ps...)
	}()
	if err != nil {
		return nil, err
	}
	var urls []string
	for i := range o.replicas {
		replicaTag := tag
		if i > 0 {
			replicaTag = fmt.Sprintf("%s-replica-%d", tag, i+1)
		}
		lb, err := startBalancer(ctx, g, o, replicaTag, redisURL, prefix, pol.directive, len(sc.specs))
		if lb != nil {
			defer g.stop(lb.p)
		}
		if err != nil {
			return nil, err
		}
		urls = append(urls, lb.url)
	}
	r := &policyRun{sc: sc, pol: pol, nodes: len(nodes), loadBefore: loadAverage()}
	var event func()
	if sc.changeTo != nil {
		event = func() {
			before := time.Now()
			r.changeErr = nodes[sc.changeNode].reconfigure(ctx, map[string]any{
				"ttft": sc.changeTo.ttft.String(), "inter_token_latency": sc.changeTo.itl.String()})
			r.changed = before.Add(time.Since(before) / 2)
		}
	}
	r.outs = openLoop(ctx, urls, tag, times, o.tokens, o.timeout, func(t0 time.Time) { r.t0 = t0 }, sc.changeAt, event)
	r.wall = time.Since(r.t0)
	r.loadAfter = loadAverage()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if r.changeErr != nil {
		return nil, fmt.Errorf("slowing node-%d: %v", sc.changeNode, r.changeErr)
	}
	for _, n := range nodes {
		recs, err := n.records(ctx)
		if err != nil {
			return nil, err
		}
		r.recs = append(r.recs, recs)
	}
	return r, nil
}

func dropText(sec float64) string {
	if sec < 0 {
		return "never"
	}
	return fmt.Sprintf("%g s", sec)
}
