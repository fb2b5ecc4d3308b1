package main

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// report gathers the runs and renders the output files.
type report struct {
	o                  *options
	began              time.Time
	loadStart, loadEnd string
	machine            string
	binaryNote         string  // where the ai-lb binary came from
	cpu                float64 // CPU seconds of the benchmark and all its processes
	scenarios          []*scenario
	runs               []*policyRun
}

func (rep *report) runsOf(sc *scenario) []*policyRun {
	var out []*policyRun
	for _, r := range rep.runs {
		if r.sc == sc {
			out = append(out, r)
		}
	}
	return out
}

func (rep *report) find(sc *scenario, name string) *policyRun {
	for _, r := range rep.runsOf(sc) {
		if r.pol.name == name {
			return r
		}
	}
	return nil
}

// num formats milliseconds or a count without noise.
func num(v float64) string {
	switch {
	case math.IsNaN(v):
		return "—"
	case math.Abs(v) >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	default:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
}

func percent(v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	return strconv.FormatFloat(100*v, 'f', 1, 64) + "%"
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, " / ")
}

// table writes a Markdown table: a header row and rows of cells.
func table(b *strings.Builder, head []string, rows [][]string) {
	b.WriteString("| " + strings.Join(head, " | ") + " |\n|")
	for i := range head {
		if i == 0 {
			b.WriteString("---|")
		} else {
			b.WriteString("---:|")
		}
	}
	b.WriteString("\n")
	for _, r := range rows {
		b.WriteString("| " + strings.Join(r, " | ") + " |\n")
	}
	b.WriteString("\n")
}

func (rep *report) command() string {
	parts := []string{"go", "run", "./bench/policies"}
	for _, a := range rep.o.args {
		if a == "" || strings.ContainsAny(a, " \t'\"$\\;&|<>*?()") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

func (rep *report) markdown() string {
	o := rep.o
	var b strings.Builder
	b.WriteString("# ai-lb `p2c` against Caddy's selection policies on LLM traffic\n\n")
	fmt.Fprintf(&b, "Command: `%s`\n\n", rep.command())
	fmt.Fprintf(&b, "Date: %s; the whole run took %v.\n\n", rep.began.Format("2006-01-02 15:04 MST"),
		time.Since(rep.began).Round(time.Second))
	wall := time.Since(rep.began).Seconds()
	fmt.Fprintf(&b, "Machine: %s. Load average (1 min) %s at the start, %s at the end; the benchmark and its processes used %.0f CPU-seconds in %.0f s (%.2f cores on average). "+
		"The client, redis-server, the simulated nodes and ai-lb all share these cores.\n\n",
		rep.machine, rep.loadStart, rep.loadEnd, rep.cpu, wall, rep.cpu/wall)
	fmt.Fprintf(&b, "ai-lb: %s.\n\n", rep.binaryNote)
	b.WriteString("Each policy gets the same Caddyfile but for `lb_policy`, with the `ai_lb` handler in front and no `hedge`:\n\n")
	b.WriteString("```caddyfile\n{\n\tai_lb {\n\t\tredis redis://127.0.0.1:PORT\n\t\tprefix PREFIX\n\t}\n}\n\n" +
		"http://127.0.0.1:PORT {\n\tai_lb\n\treverse_proxy {\n\t\tdynamic ai_lb\n\t\tlb_policy POLICY\n\t}\n}\n```\n\n")
	fmt.Fprintf(&b, "Per policy and scenario: a fresh set of `ai-lb simnode --register` processes (node i seeded %d+i, "+
		"registered without `max_concurrency`; their registration agents publish what the simulated engine's `/metrics` says — running, waiting, and its slots as `max_num_seqs` — in builds of ai-lb that have engine-load publishing), a fresh ai-lb process (no warm-up; p2c starts with no TTFT samples), "+
		"and the same open-loop Poisson arrival times (seed %d) of streamed chat completions (`\"stream\":true`, "+
		"`max_tokens` %d; every node answers %d tokens). TTFT is the client's: from sending the request to the first SSE "+
		"`data:` line with content; completion is to the end of the stream. An error is a non-200 answer, a transport "+
		"error or a stream that is not one whole answer ending in `[DONE]`. A node's capacity is its slots divided by a "+
		"request's mean time on a slot, TTFT + (tokens − 1) × ITL; requests beyond the slots wait in the node's FIFO queue, "+
		"and beyond the queue get 429 (which the `ai_lb` handler retries on another node, within its retry budget). "+
		"*Attempts* are what the nodes received, retries included; *retried requests* had more than one attempt (the `ai_lb` handler's failover); *TTFT at the node* runs from a request's arrival at "+
		"the node (queueing included) to its first token; *send lag* is how late the client sent requests against the "+
		"schedule (a check that the load generator kept up).\n\n", o.seed, o.seed, o.tokens, o.tokens)
	for _, sc := range rep.scenarios {
		rep.scenarioSection(&b, sc)
	}
	b.WriteString("![TTFT p50 and p99 by policy, and the slowed node's share over time](policies-ttft.svg)\n\n" +
		"Raw per-request rows: `policies.csv` (times in ms; `attempts` from the nodes' records).\n")
	return b.String()
}

func (rep *report) nodeTable(b *strings.Builder, sc *scenario) {
	o := rep.o
	var rows [][]string
	for i, s := range sc.specs {
		row := []string{fmt.Sprintf("node-%d", i), s.ttft.String(), s.itl.String(), strconv.Itoa(s.slots),
			strconv.Itoa(s.queue), s.service(o.tokens).String(), num(s.capacity(o.tokens))}
		if sc.changeTo != nil && i == sc.changeNode {
			c := *sc.changeTo
			row = []string{row[0], s.ttft.String() + " → " + c.ttft.String(), s.itl.String() + " → " + c.itl.String(), row[3], row[4],
				s.service(o.tokens).String() + " → " + c.service(o.tokens).String(),
				num(s.capacity(o.tokens)) + " → " + num(c.capacity(o.tokens))}
		}
		rows = append(rows, row)
	}
	table(b, []string{"node", "TTFT (±" + strconv.FormatFloat(o.jitter*100, 'f', -1, 64) + "%)", "ITL", "slots", "queue",
		"time on a slot", "capacity (req/s)"}, rows)
}

func (rep *report) scenarioSection(b *strings.Builder, sc *scenario) {
	o := rep.o
	runs := rep.runsOf(sc)
	fmt.Fprintf(b, "## %s\n\n", sc.title)
	rep.nodeTable(b, sc)
	n := 0
	if len(runs) > 0 {
		n = len(runs[0].outs)
	}
	if sc.changeTo == nil {
		fmt.Fprintf(b, "Cluster capacity %.1f req/s; offered load %.1f req/s (%.0f%%), %d requests in %v per policy.\n\n",
			sc.capacity, sc.rate, 100*o.utilisation, n, sc.duration)
	} else {
		before := capacityOf(sc.specs, o.tokens)
		fmt.Fprintf(b, "node-%d becomes %g× slower (TTFT and ITL, `POST /sim/config`) %v after the load starts. "+
			"Cluster capacity %.1f req/s before, %.1f req/s after; offered load %.1f req/s (%.0f%% of the capacity after, %.0f%% of before), "+
			"%d requests in %v per policy. With traffic in proportion to capacity, node-%d would get %.1f%% of it after the change.\n\n",
			sc.changeNode, o.slowFactor, sc.changeAt, before, sc.capacity, sc.rate, 100*o.utilisation, 100*sc.rate/before,
			n, sc.duration, sc.changeNode, 100*sc.changeTo.capacity(o.tokens)/sc.capacity)
	}

	head := []string{"policy", "ok / errors", "TTFT p50 (ms)", "TTFT p99 (ms)", "TTFT p99.9 (ms)", "completion p99 (ms)"}
	if sc.changeTo != nil {
		head = append(head, "TTFT p99 after the change (ms)", "completion p99 after (ms)")
	}
	head = append(head, "answers by node", "attempts by node (429s)", "retried requests", "send lag p99 (ms)")
	var rows [][]string
	for _, r := range runs {
		row := []string{"`" + r.pol.directive + "`", fmt.Sprintf("%d / %d", r.ok, r.errs), num(quantile(r.ttft, .5)),
			num(quantile(r.ttft, .99)), num(quantile(r.ttft, .999)), num(quantile(r.total, .99))}
		if sc.changeTo != nil {
			row = append(row, num(quantile(r.ttftAfter, .99)), num(quantile(r.totalAfter, .99)))
		}
		row = append(row, joinInts(r.answered), fmt.Sprintf("%s (%s)", joinInts(r.attempts), joinInts(r.rejected)),
			strconv.Itoa(r.retried), num(quantile(r.lag, .99)))
		rows = append(rows, row)
	}
	table(b, head, rows)

	// Where the time goes, node by node.
	head = []string{"policy"}
	for i := range sc.specs {
		head = append(head, fmt.Sprintf("node-%d: share · TTFT at node p50/p99 (ms)", i))
	}
	head = append(head, "answers at or above the p99 TTFT, by node")
	rows = nil
	for _, r := range runs {
		row := []string{"`" + r.pol.directive + "`"}
		for i := range sc.specs {
			row = append(row, fmt.Sprintf("%s · %s / %s", percent(float64(r.answered[i])/float64(max(r.ok, 1))),
				num(quantile(r.nodeTTFT[i], .5)), num(quantile(r.nodeTTFT[i], .99))))
		}
		rows = append(rows, append(row, joinInts(r.tail)))
	}
	table(b, head, rows)

	if sc.changeTo != nil {
		rep.shareTable(b, sc, runs)
	}
	rep.verdict(b, sc)
	for _, r := range runs {
		for _, e := range r.errSamples {
			fmt.Fprintf(b, "- `%s` error: %s\n", r.pol.directive, e)
		}
	}
	b.WriteString("\n")
}

// shareTable lists, second by second after the change, the share of
// attempts that went to the slowed node.
func (rep *report) shareTable(b *strings.Builder, sc *scenario, runs []*policyRun) {
	head := []string{"attempts to node-" + strconv.Itoa(sc.changeNode)}
	rows := [][]string{{"before the change"}}
	secs := 0
	for _, r := range runs {
		head = append(head, "`"+r.pol.directive+"`")
		rows[0] = append(rows[0], percent(r.preShare))
		secs = max(secs, len(r.seconds))
	}
	for t := range secs {
		row := []string{fmt.Sprintf("%d–%d s after", t, t+1)}
		for _, r := range runs {
			cell := "—"
			if t < len(r.seconds) {
				s := r.seconds[t]
				cell = fmt.Sprintf("%s (%d/%d)", percent(s.share()), s.slowed, s.all)
			}
			row = append(row, cell)
		}
		rows = append(rows, row)
	}
	last := []string{"below half the share before, within"}
	for _, r := range runs {
		last = append(last, dropText(r.dropWithin))
	}
	rows = append(rows, last)
	fmt.Fprintf(b, "Share of the attempts that reached node-%d, by the second of their arrival after the change "+
		"(the last second is cut short by the end of the load). *Within* is the end of the first second from which the "+
		"share stays at or below half of the share before the change for three seconds running.\n\n", sc.changeNode)
	table(b, head, rows)
}

// verdict states the product goal and whether p2c met it.
func (rep *report) verdict(b *strings.Builder, sc *scenario) {
	p := rep.find(sc, "p2c")
	if p == nil {
		return
	}
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**not met**"
	}
	if sc.changeTo != nil {
		fmt.Fprintf(b, "Goal: traffic to the slowed node drops within 5 s with `p2c` — %s (%s).\n\n",
			met(p.dropWithin >= 0 && p.dropWithin <= 5), dropText(p.dropWithin))
		return
	}
	b.WriteString("Goal: `p2c` p99 TTFT ≤ 0.6× `random_choose 2` and ≤ 0.8× `least_conn`, with no more errors:\n\n")
	for _, c := range []struct {
		name  string
		limit float64
	}{{"random_choose_2", 0.6}, {"least_conn", 0.8}} {
		other := rep.find(sc, c.name)
		if other == nil {
			continue
		}
		ratio := quantile(p.ttft, .99) / quantile(other.ttft, .99)
		fmt.Fprintf(b, "- against `%s`: p99 %s vs %s ms = %.2f× (limit %.1f×), errors %d vs %d — %s\n",
			other.pol.directive, num(quantile(p.ttft, .99)), num(quantile(other.ttft, .99)), ratio, c.limit,
			p.errs, other.errs, met(ratio <= c.limit && p.errs <= other.errs))
		if ratio > c.limit {
			limit := c.limit * quantile(other.ttft, .99)
			over := p.slowerThan(limit)
			fmt.Fprintf(b, "  - `p2c` answers slower than that limit (%s ms), by node: %s — %d in all, %.1f%% of %d (a p99 within the limit allows 1%%)\n",
				num(limit), joinInts(over), sum(over), 100*float64(sum(over))/float64(max(p.ok, 1)), p.ok)
		}
	}
	b.WriteString("\n")
}

// csv is one row per request.
func (rep *report) csv() []byte {
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	_ = w.Write([]string{"scenario", "policy", "seq", "planned_ms", "sent_ms", "ttft_ms", "total_ms", "status",
		"node", "attempts", "error"})
	ms := func(d time.Duration) string { return strconv.FormatFloat(msOf(d), 'f', 2, 64) }
	for _, r := range rep.runs {
		attempts := make(map[string]int)
		for _, recs := range r.recs {
			for _, rec := range recs {
				attempts[rec.RequestID]++
			}
		}
		for _, o := range r.outs {
			ttft := ""
			if o.Err == "" {
				ttft = ms(o.TTFT)
			}
			_ = w.Write([]string{r.sc.name, r.pol.name, strconv.Itoa(o.Seq), ms(o.Planned), ms(o.Sent), ttft,
				ms(o.Total), strconv.Itoa(o.Status), o.Node, strconv.Itoa(attempts[o.ID]), o.Err})
		}
	}
	w.Flush()
	return buf.Bytes()
}

// machineNote names the CPU, its cores, the memory and the Go version.
func machineNote() string {
	cpu := "unknown CPU"
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(raw), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if raw, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb float64
		if _, err := fmt.Sscanf(string(raw), "MemTotal: %f kB", &kb); err == nil {
			mem = fmt.Sprintf(", %.0f GiB", kb/(1<<20))
		}
	}
	return fmt.Sprintf("%s, %d cores%s, %s %s/%s", cpu, runtime.NumCPU(), mem, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// gitHead is the short commit of HEAD in dir, "unknown" outside git.
func gitHead(dir string) string {
	cmd := exec.Command("git", "rev-parse", "--short", "HEAD")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

func sum(v []int) int {
	n := 0
	for _, x := range v {
		n += x
	}
	return n
}
