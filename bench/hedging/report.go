package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// report renders the Markdown results.
func report(o *options, scs []scenario, passes []*passResult, started time.Time, loadStart, loadEnd string) string {
	var b strings.Builder
	b.WriteString("# ai-lb hedging benchmark\n\n")
	fmt.Fprintf(&b, "Command: `%s`\n\n", commandLine())
	fmt.Fprintf(&b, "Date: %s (took %s)\n\n", started.Format("2006-01-02 15:04:05 MST"), time.Since(started).Round(time.Second))
	fmt.Fprintf(&b, "Machine: %s. Load average (1 min) %s at the start, %s at the end; the client, the simulated nodes and each ai-lb share these cores with whatever else runs on the machine.\n\n",
		machine(), loadStart, loadEnd)
	fmt.Fprintf(&b, "ai-lb: %s, from the working tree at the time of the run.\n\n", o.binaryInfo)
	fmt.Fprintf(&b, "Load: %d closed-loop clients, %d measured requests per pass after %d unmeasured warm-up requests; "+
		"streamed chat completions with `stream_options.include_usage`, %d tokens each. "+
		"Each pass runs through a fresh ai-lb subprocess (`ai_lb` → [`hedge`] → `reverse_proxy { dynamic ai_lb; lb_policy p2c }`) "+
		"against the same simulated nodes, registered in one Redis. "+
		"TTFT is measured by the client, from sending the request to the first `data:` line with content; "+
		"upstream requests are what the nodes received; a loser's lifetime is its end (node clock) minus the winner's first token (node clock), "+
		"joined by `X-Request-Id`.\n\n", o.concurrency, o.requests, o.warmup, o.tokens)
	b.WriteString("Rows: *hedged requests* counts requests with more than one attempt — by the nodes' records (attempts that reached a node), " +
		"by the `X-AI-LB-Hedged` response header, and by `ai_lb_hedge_attempts_total{role=\"hedge\"}` on the admin `/metrics`; " +
		"*hedges won* are answers from a later attempt; *first token through ai-lb* is the client's first token minus the winning node's, " +
		"i.e. ai-lb's (and the machine's) delay in passing the token on; *hedge started after* is the second attempt's arrival at its node " +
		"minus the first's (≈ the hedge delay in force); *losers answered with an error* are attempts cancelled while their request was being sent " +
		"(the node read a cut body and answered 400, which no client sees); *more attempts at the nodes than `X-AI-LB-Attempts`* are " +
		"attempts started after the race was won; *response end after `[DONE]`* is how long the response stayed open after its last event.\n\n")

	for _, sc := range scs {
		var ps []*passResult
		for _, p := range passes {
			if p.Scenario == sc.name {
				ps = append(ps, p)
			}
		}
		if len(ps) == 0 {
			continue
		}
		fmt.Fprintf(&b, "## %s\n\n%s\n\n", sc.title, sc.description)
		b.WriteString("| |")
		for _, p := range ps {
			fmt.Fprintf(&b, " %s |", p.Label)
		}
		b.WriteString("\n|---|")
		for range ps {
			b.WriteString("---:|")
		}
		b.WriteString("\n")
		row := func(name string, f func(p *passResult) string) {
			fmt.Fprintf(&b, "| %s |", name)
			for _, p := range ps {
				fmt.Fprintf(&b, " %s |", f(p))
			}
			b.WriteString("\n")
		}
		row("hedge options", func(p *passResult) string { return hedgeSummary(p.HedgeBlock) })
		row("requests ok / failed", func(p *passResult) string { return fmt.Sprintf("%d / %d", p.OK, p.Errors) })
		for _, q := range []float64{50, 90, 99, 99.9, 100} {
			name := fmt.Sprintf("TTFT p%g (ms)", q)
			if q == 100 {
				name = "TTFT max (ms)"
			}
			row(name, func(p *passResult) string { return ms(pct(p.TTFT, q)) })
		}
		row("first token through ai-lb (client − node) p50 / p99 / max (ms)", func(p *passResult) string {
			return fmt.Sprintf("%s / %s / %s", ms(pct(p.Forwarding, 50)), ms(pct(p.Forwarding, 99)), ms(pct(p.Forwarding, 100)))
		})
		row("total time p50 / p99 / max (ms)", func(p *passResult) string {
			return fmt.Sprintf("%s / %s / %s", ms(pct(p.Total, 50)), ms(pct(p.Total, 99)), ms(pct(p.Total, 100)))
		})
		row("upstream requests (extra)", func(p *passResult) string {
			return fmt.Sprintf("%d (+%.1f%%)", p.Upstream, extraPct(p))
		})
		row("hedged requests: node records / header / metric", func(p *passResult) string {
			return fmt.Sprintf("%d / %d / %.0f", p.HedgedByRecords, p.HedgedByHeader, p.metricLabel(`ai_lb_hedge_attempts_total{role="hedge"}`))
		})
		row("hedges won: node records / metric", func(p *passResult) string {
			return fmt.Sprintf("%d / %.0f", p.HedgeWonRecords, p.metric("ai_lb_hedge_won_total"))
		})
		row("budget refusals (metric)", func(p *passResult) string {
			return fmt.Sprintf("%.0f", p.metric("ai_lb_hedge_budget_refusals_total"))
		})
		row("losers cancelled (metric) / aborted at nodes", func(p *passResult) string {
			return fmt.Sprintf("%.0f / %d", p.metric("ai_lb_hedge_cancelled_total"), p.NodeAborted)
		})
		row("loser lifetime after win p50 / p99 / max (ms)", func(p *passResult) string {
			if len(p.LoserLife) == 0 {
				return "—"
			}
			return fmt.Sprintf("%s / %s / %s (n=%d)", ms(pct(p.LoserLife, 50)), ms(pct(p.LoserLife, 99)), ms(pct(p.LoserLife, 100)), len(p.LoserLife))
		})
		row("loser end after the client's first token p50 / p99 / max (ms)", func(p *passResult) string {
			if len(p.LoserLifeClient) == 0 {
				return "—"
			}
			return fmt.Sprintf("%s / %s / %s", ms(pct(p.LoserLifeClient, 50)), ms(pct(p.LoserLifeClient, 99)), ms(pct(p.LoserLifeClient, 100)))
		})
		row("hedge started after, from node records: min / p50 / max (ms)", func(p *passResult) string {
			if len(p.HedgeAfter) == 0 {
				return "—"
			}
			return fmt.Sprintf("%s / %s / %s", ms(pct(p.HedgeAfter, 0)), ms(pct(p.HedgeAfter, 50)), ms(pct(p.HedgeAfter, 100)))
		})
		row("losers that ran to completion", func(p *passResult) string { return fmt.Sprint(p.LosersNotAborted) })
		row("losers answered with an error by the node", func(p *passResult) string {
			if len(p.LosersRefused) == 0 {
				return "0"
			}
			var parts []string
			for status, n := range p.LosersRefused {
				parts = append(parts, fmt.Sprintf("%d× %d", n, status))
			}
			slices.Sort(parts)
			return strings.Join(parts, ", ")
		})
		row("losers that reached a node after the winner's first token", func(p *passResult) string { return fmt.Sprint(p.LateHedges) })
		row("requests with more attempts at the nodes than `X-AI-LB-Attempts`", func(p *passResult) string { return fmt.Sprint(p.Unannounced) })
		row("response end after `[DONE]`: p99 / max (ms); count > 20 ms", func(p *passResult) string {
			n := 0
			for _, d := range p.AfterDone {
				if d > 20*time.Millisecond {
					n++
				}
			}
			return fmt.Sprintf("%s / %s; %d", ms(pct(p.AfterDone, 99)), ms(pct(p.AfterDone, 100)), n)
		})
		if sc.name == "slow-node" {
			row("attempts to / answers from node-0", func(p *passResult) string {
				return fmt.Sprintf("%d (%.1f%%) / %d (%.1f%%)", p.PerNode[0], 100*float64(p.PerNode[0])/float64(max(p.Upstream, 1)),
					p.AnsweredBy["node-0"], 100*float64(p.AnsweredBy["node-0"])/float64(max(p.OK, 1)))
			})
		}
		row("wall time (s) / throughput (req/s)", func(p *passResult) string {
			return fmt.Sprintf("%.1f / %.0f", p.Wall.Seconds(), float64(len(p.Results))/p.Wall.Seconds())
		})
		row("load avg before → after", func(p *passResult) string { return p.LoadBefore + " → " + p.LoadAfter })
		row("CPU s: ai-lb / bench (client + nodes)", func(p *passResult) string {
			return fmt.Sprintf("%.1f / %.1f", p.LBCPU.Seconds(), p.BenchCPU.Seconds())
		})
		b.WriteString("\n")
		if sc.gate {
			base := ps[0]
			fmt.Fprintf(&b, "Gate goal (p99 TTFT with hedging ≤ ½ of without, for ≤ 10%% extra upstream requests); without hedging p99 = %s ms:\n\n", ms(pct(base.TTFT, 99)))
			for _, p := range ps[1:] {
				ratio := float64(pct(p.TTFT, 99)) / float64(max(pct(base.TTFT, 99), 1))
				met := ratio <= 0.5 && extraPct(p) <= 10 && p.Errors == 0
				verdict := "met"
				if !met {
					verdict = "**not met**"
				}
				fmt.Fprintf(&b, "- %s: p99 %s ms (%.2f× the no-hedge p99), +%.1f%% upstream requests — %s\n",
					p.Label, ms(pct(p.TTFT, 99)), ratio, extraPct(p), verdict)
			}
			b.WriteString("\n")
		}
		notes := false
		for _, p := range ps {
			for _, e := range p.ErrorSamples {
				fmt.Fprintf(&b, "- %s: %s\n", p.Label, e)
				notes = true
			}
			for why, n := range p.RefusedWhy {
				fmt.Fprintf(&b, "- %s: %d losing attempts refused by the node because the request was cut: %s\n", p.Label, n, why)
				notes = true
			}
			for _, e := range p.OddUnannounced {
				fmt.Fprintf(&b, "- %s, an attempt started after the win: %s\n", p.Label, e)
				notes = true
			}
			for _, e := range p.LateEnd {
				fmt.Fprintf(&b, "- %s, response ended > 20 ms after `[DONE]`: %s\n", p.Label, e)
				notes = true
			}
			for _, e := range p.Odd {
				fmt.Fprintf(&b, "- %s, a loser not cut short: %s\n", p.Label, e)
				notes = true
			}
			if p.Config != "no-hedge" {
				for _, e := range p.Slowest {
					fmt.Fprintf(&b, "- %s, one of the 3 slowest: %s\n", p.Label, e)
					notes = true
				}
			}
		}
		if notes {
			b.WriteString("\n")
		}
	}
	b.WriteString("![TTFT distributions](hedging-ttft.svg)\n\nRaw per-request times: `hedging-ttft.csv`.\n")
	return b.String()
}

// hedgeSummary turns a hedge block into `opt; opt`.
func hedgeSummary(block string) string {
	if block == "" {
		return "—"
	}
	var opts []string
	for _, line := range strings.Split(block, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line == "}" || strings.HasPrefix(line, "hedge") || line == "response_headers" {
			continue
		}
		opts = append(opts, line)
	}
	return "`" + strings.Join(opts, "; ") + "`"
}
