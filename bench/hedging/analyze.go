package main

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/ai-lb/ai-lb/simnode"
)

// passResult is everything measured in one pass (one scenario through one
// ai-lb configuration).
type passResult struct {
	Scenario   string
	Config     string // no-hedge, adaptive, fixed
	Label      string
	HedgeBlock string
	Results    []reqResult
	Wall       time.Duration

	OK, Errors   int
	ErrorSamples []string
	TTFT, Total  []time.Duration // of the OK requests, sorted
	AfterDone    []time.Duration // end of the response after its [DONE] line, sorted

	Upstream      int64   // attempts the nodes received
	PerNode       []int64 // received, by node
	AnsweredBy    map[string]int
	NodeAborted   int64
	NodeCompleted int64

	HedgedByRecords  int // requests with more than one upstream attempt
	HedgeWonRecords  int // ... whose answer came from a later attempt
	HedgedByHeader   int // X-AI-LB-Hedged: true
	LoserLife        []time.Duration
	LosersNotAborted int             // non-winning attempts that ran to completion
	AbortedNoWinner  int             // aborted attempts of requests without a winning record
	LosersRefused    map[int]int     // non-winning attempts a node answered with an error, by status
	RefusedWhy       map[string]int  // ... and why the node could not read their body
	LateHedges       int             // non-winning attempts that reached a node after the winner's first token
	Unannounced      int             // requests with more attempts at the nodes than X-AI-LB-Attempts says
	LoserLifeClient  []time.Duration // loser end minus the client's first token
	Forwarding       []time.Duration // client's first token minus the winner's at its node
	Slowest          []string        // the slowest requests' attempts
	HedgeAfter       []time.Duration // second attempt start minus first (node clocks)
	Odd              []string        // requests whose losers were not cut short
	OddUnannounced   []string        // requests with attempts started after the win
	LateEnd          []string        // requests whose response ended > 20 ms after [DONE]

	Metrics map[string]float64 // ai_lb_hedge_* counters, delta over the pass

	LoadBefore, LoadAfter string
	LBCPU, BenchCPU       time.Duration
}

// nodeRecord is a simnode record and the node it came from.
type nodeRecord struct {
	node string
	simnode.Record
}

// analyze fills the derived fields of p from the client results and the
// nodes' records.
func (p *passResult) analyze(records []nodeRecord, bodyErrs map[string]string) {
	p.AnsweredBy = make(map[string]int)
	p.LosersRefused = make(map[int]int)
	p.RefusedWhy = make(map[string]int)
	for _, r := range p.Results {
		if r.Err != "" {
			p.Errors++
			if len(p.ErrorSamples) < 5 {
				p.ErrorSamples = append(p.ErrorSamples, r.ID+": "+r.Err)
			}
			continue
		}
		p.OK++
		p.TTFT = append(p.TTFT, r.TTFT)
		p.Total = append(p.Total, r.Total)
		p.AfterDone = append(p.AfterDone, r.AfterDone)
		p.AnsweredBy[r.Node]++
		if r.Hedged == "true" {
			p.HedgedByHeader++
		}
	}
	slices.Sort(p.TTFT)
	slices.Sort(p.Total)
	slices.Sort(p.AfterDone)

	answered := make(map[string]string, len(p.Results)) // request id -> node
	byID := make(map[string]*reqResult, len(p.Results))
	for i, r := range p.Results {
		byID[r.ID] = &p.Results[i]
		if r.Err == "" {
			answered[r.ID] = r.Node
		}
	}
	type described struct {
		key  time.Duration
		text string
	}
	var unannouncedList []described
	groups := make(map[string][]nodeRecord)
	for _, rec := range records {
		groups[rec.RequestID] = append(groups[rec.RequestID], rec)
	}
	for id, g := range groups {
		if len(g) > 1 {
			p.HedgedByRecords++
		}
		// The winner is the attempt on the node that answered the client,
		// not aborted.
		slices.SortFunc(g, func(a, b nodeRecord) int { return a.Start.Compare(b.Start) })
		w := -1
		for i := range g {
			if g[i].node == answered[id] && !g[i].Aborted && !g[i].FirstToken.IsZero() {
				w = i
				break
			}
		}
		if w < 0 {
			for _, r := range g {
				if r.Aborted {
					p.AbortedNoWinner++
				}
			}
			continue
		}
		winner := g[w]
		client := byID[id]
		p.Forwarding = append(p.Forwarding, client.firstTime.Sub(winner.FirstToken))
		odd, unannounced := false, false
		if len(g) > 1 && client.Attempts > 0 && len(g) > client.Attempts {
			// An attempt the race did not know of when it was won: it was
			// started after the win, so the win did not cancel it.
			p.Unannounced++
			unannounced = true
		}
		if len(g) > 1 {
			p.HedgeAfter = append(p.HedgeAfter, g[1].Start.Sub(g[0].Start))
			if w > 0 {
				p.HedgeWonRecords++
			}
		}
		for i, r := range g {
			if i == w {
				continue
			}
			life := r.End.Sub(winner.FirstToken)
			switch {
			case r.Aborted:
				p.LoserLife = append(p.LoserLife, life)
				p.LoserLifeClient = append(p.LoserLifeClient, r.End.Sub(client.firstTime))
			case r.Status == 200:
				p.LosersNotAborted++
				odd = true
			default:
				p.LosersRefused[r.Status]++
				if why := bodyErrs[r.node+"|"+id]; why != "" {
					p.RefusedWhy[why]++
				}
			}
			if r.Start.After(winner.FirstToken) {
				p.LateHedges++
			}
			if r.Aborted && r.End.Sub(client.firstTime) > 20*time.Millisecond {
				odd = true // still running 20 ms after the client had its token
			}
		}
		if client.AfterDone > 20*time.Millisecond && len(p.LateEnd) < 3 && !unannounced {
			p.LateEnd = append(p.LateEnd, describeGroup(id, g, w, client))
		}
		switch {
		case unannounced:
			unannouncedList = append(unannouncedList, described{client.AfterDone, describeGroup(id, g, w, client)})
		case odd && len(p.Odd) < 3:
			p.Odd = append(p.Odd, describeGroup(id, g, w, client))
		}
	}
	// The attempts started after the win that kept responses open longest.
	slices.SortFunc(unannouncedList, func(a, b described) int { return cmp.Compare(b.key, a.key) })
	for _, d := range unannouncedList[:min(5, len(unannouncedList))] {
		p.OddUnannounced = append(p.OddUnannounced, d.text)
	}
	slices.Sort(p.LoserLife)
	slices.Sort(p.LoserLifeClient)
	slices.Sort(p.Forwarding)
	slices.Sort(p.HedgeAfter)

	// The slowest answers, and how their attempts went.
	slowest := slices.Clone(p.Results)
	slices.SortFunc(slowest, func(a, b reqResult) int { return cmp.Compare(b.TTFT, a.TTFT) })
	for _, r := range slowest[:min(3, len(slowest))] {
		g := groups[r.ID]
		slices.SortFunc(g, func(a, b nodeRecord) int { return a.Start.Compare(b.Start) })
		w := -1
		for i := range g {
			if g[i].node == r.Node && !g[i].Aborted {
				w = i
			}
		}
		p.Slowest = append(p.Slowest, describeGroup(r.ID, g, w, &r))
	}
}

// pct returns the p-th percentile (0-100) of sorted values, by nearest rank.
func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func (p *passResult) metric(name string) float64 {
	var sum float64
	for k, v := range p.Metrics {
		if k == name || strings.HasPrefix(k, name+"{") {
			sum += v
		}
	}
	return sum
}

func (p *passResult) metricLabel(series string) float64 { return p.Metrics[series] }

// describeGroup lists a request's upstream attempts with times relative to
// the first attempt's start.
func describeGroup(id string, g []nodeRecord, w int, client *reqResult) string {
	if len(g) == 0 {
		return id + ": no node records"
	}
	t0 := g[0].Start
	rel := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return ms(t.Sub(t0))
	}
	var parts []string
	for i, r := range g {
		role := "loser"
		if i == w {
			role = "winner"
		}
		parts = append(parts, fmt.Sprintf("%s on %s: start %s, first token %s, end %s ms, status %d, aborted %v",
			role, r.node, rel(r.Start), rel(r.FirstToken), rel(r.End), r.Status, r.Aborted))
	}
	head := id
	if client != nil {
		head += fmt.Sprintf(" (client: TTFT %s ms, first token at %s, end %s after [DONE], X-AI-LB-Attempts %d)",
			ms(client.TTFT), rel(client.firstTime), ms(client.AfterDone), client.Attempts)
	}
	return head + ": " + strings.Join(parts, "; ")
}
