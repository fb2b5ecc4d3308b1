package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/ai-lb/ai-lb/simnode"
)

// policyRun is one scenario run through one policy, raw and analysed.
type policyRun struct {
	sc                    *scenario
	pol                   policy
	nodes                 int
	outs                  []outcome
	recs                  [][]simnode.Record // by node
	t0, changed           time.Time          // load start; when the node was slowed
	changeErr             error
	wall                  time.Duration
	loadBefore, loadAfter string

	ok, errs   int
	errSamples []string
	ttft       []float64 // ms, OK requests, sorted
	total      []float64 // completion time, ms, OK requests, sorted
	lag        []float64 // send time behind schedule, ms, sorted
	answered   []int     // OK answers by node
	attempts   []int     // requests each node received (retries included)
	rejected   []int     // ... of which it answered 429 (queue full)
	retried    int       // requests with more than one attempt
	nodeTTFT   [][]float64
	tail       []int // answers by node among the requests at or above the p99 TTFT

	// The slowdown scenario.
	ttftAfter  []float64 // ms, OK requests sent after the change, sorted
	totalAfter []float64
	preShare   float64  // share of attempts to the slowed node before the change
	seconds    []second // after the change, by second
	dropWithin float64  // seconds until the share stays below half of preShare; -1: never
}

// second is the attempts in one second after the change.
type second struct{ all, slowed int }

func (s second) share() float64 {
	if s.all == 0 {
		return math.NaN()
	}
	return float64(s.slowed) / float64(s.all)
}

func msOf(d time.Duration) float64 { return float64(d) / 1e6 }

// quantile is the q-quantile (0-1) of sorted values, by nearest rank; NaN
// for none.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(q * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func (r *policyRun) nodeIndex(id string) int {
	var i int
	if _, err := fmt.Sscanf(id, "node-%d", &i); err != nil || i < 0 || i >= r.nodes {
		return -1
	}
	return i
}

func (r *policyRun) analyze() {
	r.answered = make([]int, r.nodes)
	r.attempts = make([]int, r.nodes)
	r.rejected = make([]int, r.nodes)
	r.nodeTTFT = make([][]float64, r.nodes)
	after := r.sc.changeAt
	for _, o := range r.outs {
		r.lag = append(r.lag, msOf(o.Sent-o.Planned))
		if o.Err != "" {
			r.noteError(o)
			continue
		}
		r.ok++
		r.ttft = append(r.ttft, msOf(o.TTFT))
		r.total = append(r.total, msOf(o.Total))
		if i := r.nodeIndex(o.Node); i >= 0 {
			r.answered[i]++
		}
		if r.sc.changeTo != nil && o.Planned >= after {
			r.ttftAfter = append(r.ttftAfter, msOf(o.TTFT))
			r.totalAfter = append(r.totalAfter, msOf(o.Total))
		}
	}
	for _, s := range [][]float64{r.ttft, r.total, r.lag, r.ttftAfter, r.totalAfter} {
		slices.Sort(s)
	}
	// At or above the p99: just below it.
	r.tail = r.slowerThan(math.Nextafter(quantile(r.ttft, .99), 0))

	perRequest := make(map[string]int)
	var pre second
	for i, recs := range r.recs {
		for _, rec := range recs {
			if !strings.HasPrefix(rec.RequestID, r.sc.name+"-"+r.pol.name+"-") {
				continue
			}
			r.attempts[i]++
			perRequest[rec.RequestID]++
			if rec.Status == 429 {
				r.rejected[i]++
			}
			if rec.Status == 200 && !rec.FirstToken.IsZero() {
				r.nodeTTFT[i] = append(r.nodeTTFT[i], msOf(rec.FirstToken.Sub(rec.Start)))
			}
			if r.sc.changeTo == nil {
				continue
			}
			slowed := 0
			if i == r.sc.changeNode {
				slowed = 1
			}
			if rec.Start.Before(r.changed) {
				pre.all++
				pre.slowed += slowed
				continue
			}
			sec := int(rec.Start.Sub(r.changed) / time.Second)
			for len(r.seconds) <= sec {
				r.seconds = append(r.seconds, second{})
			}
			r.seconds[sec].all++
			r.seconds[sec].slowed += slowed
		}
	}
	for _, s := range r.nodeTTFT {
		slices.Sort(s)
	}
	for _, n := range perRequest {
		if n > 1 {
			r.retried++
		}
	}
	if r.sc.changeTo != nil {
		r.preShare = pre.share()
		r.dropWithin = dropTime(r.seconds, r.preShare/2)
	}
}

// slowerThan counts, by node, the answers with a TTFT above limit (ms).
func (r *policyRun) slowerThan(limit float64) []int {
	out := make([]int, r.nodes)
	for _, o := range r.outs {
		if i := r.nodeIndex(o.Node); o.Err == "" && i >= 0 && msOf(o.TTFT) > limit {
			out[i]++
		}
	}
	return out
}

// noteError counts a failed request and keeps the first few as samples.
func (r *policyRun) noteError(o outcome) {
	r.errs++
	if len(r.errSamples) < 5 {
		r.errSamples = append(r.errSamples, fmt.Sprintf("%s (sent at %.1f s): %s", o.ID, o.Sent.Seconds(), o.Err))
	}
}

// dropTime is the end, in seconds after the change, of the first second
// from which the share of attempts to the slowed node stays at or below
// limit for three seconds running (or to the end of the run); -1 if it
// never does.
func dropTime(secs []second, limit float64) float64 {
	// The last second is cut short by the end of the load: leave it out.
	full := secs[:max(len(secs)-1, 0)]
	for t := range full {
		ok := true
		for _, s := range full[t:min(t+3, len(full))] {
			if s.all > 0 && s.share() > limit {
				ok = false
			}
		}
		if ok {
			return float64(t + 1)
		}
	}
	return -1
}
