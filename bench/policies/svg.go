package main

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// policyColor is the colour of a policy in every panel.
func policyColor(name string) string {
	switch name {
	case "round_robin":
		return "#7f7f7f"
	case "least_conn":
		return "#1f77b4"
	case "random_choose_2":
		return "#ff7f0e"
	default:
		return "#2ca02c"
	}
}

// niceMax rounds v up to 1, 2 or 5 times a power of ten, and returns the
// tick step that divides it into four or five.
func niceMax(v float64) (top, step float64) {
	if !(v > 0) {
		return 1, 0.25
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			top = m * p
			break
		}
	}
	return top, top / 5
}

// halo is a text style that keeps labels readable over lines.
const halo = ` stroke="white" stroke-width="3" paint-order="stroke"`

// canvas is an SVG document being written.
type canvas struct{ strings.Builder }

func (c *canvas) el(format string, a ...any) { fmt.Fprintf(c, format+"\n", a...) }

func (c *canvas) text(x, y float64, anchor, style, s string) {
	c.el(`<text x="%.1f" y="%.1f" text-anchor="%s"%s>%s</text>`, x, y, anchor, style, html.EscapeString(s))
}

// frame draws a plot area with y ticks from 0 to top and returns the
// y mapping.
func (c *canvas) frame(x0, y0, x1, y1, top, step float64, title, ylabel string, tick func(float64) string) func(float64) float64 {
	py := func(v float64) float64 { return y1 - v/top*(y1-y0) }
	for v := 0.0; v <= top*1.0001; v += step {
		c.el(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e6e6e6"/>`, x0, py(v), x1, py(v))
		c.text(x0-6, py(v)+4, "end", "", tick(v))
	}
	c.el(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#333"/>`, x0, y0, x1-x0, y1-y0)
	c.text((x0+x1)/2, y0-10, "middle", ` font-weight="bold" font-size="13"`, title)
	c.el(`<text transform="translate(%.1f %.1f) rotate(-90)" text-anchor="middle">%s</text>`, x0-48, (y0+y1)/2, html.EscapeString(ylabel))
	return py
}

// axisTop is the largest p99 TTFT that is at most four times the smallest,
// so that one policy far off the others does not flatten their bars.
func axisTop(runs []*policyRun) float64 {
	lo, top := math.Inf(1), 0.0
	for _, r := range runs {
		lo = math.Min(lo, quantile(r.ttft, .99))
	}
	for _, r := range runs {
		if v := quantile(r.ttft, .99); v <= 4*lo {
			top = math.Max(top, v)
		}
	}
	return top
}

// svg draws, left, each scenario's TTFT p99 by policy (bars, the p50 as a
// darker inner bar) and, right, the slowed node's share of attempts second
// by second after the change.
func (rep *report) svg() string {
	const h, top, bottom = 420.0, 60.0, 360.0
	var slow *scenario
	for _, sc := range rep.scenarios {
		if sc.changeTo != nil {
			slow = sc
		}
	}
	w := 620.0
	if slow != nil {
		w = 1180
	}
	var c canvas
	c.el(`<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">`, w, h, w, h)
	c.el(`<rect width="100%%" height="100%%" fill="white"/>`)
	c.text(w/2, 24, "middle", ` font-size="16" font-weight="bold"`, "ai-lb p2c vs Caddy's policies: client time to first token")

	// Bars.
	x0, x1 := 80.0, 580.0
	ymax, step := niceMax(1.15 * axisTop(rep.runs))
	py0 := c.frame(x0, top, x1, bottom, ymax, step, "TTFT p99 (bar) and p50 (inner bar); ↑ off the scale", "ms",
		func(v float64) string { return fmt.Sprintf("%g", v) })
	py := func(v float64) float64 { return py0(math.Min(v, ymax)) }
	groupW := (x1 - x0) / float64(max(len(rep.scenarios), 1))
	for gi, sc := range rep.scenarios {
		runs := rep.runsOf(sc)
		gx := x0 + float64(gi)*groupW
		barW := (groupW - 40) / float64(max(len(runs), 1))
		for i, r := range runs {
			bx := gx + 20 + float64(i)*barW
			p50, p99 := quantile(r.ttft, .5), quantile(r.ttft, .99)
			if math.IsNaN(p99) {
				continue
			}
			col := policyColor(r.pol.name)
			c.el(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="0.45"/>`, bx+2, py(p99), barW-4, bottom-py(p99), col)
			c.el(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`, bx+barW/4, py(p50), barW/2, bottom-py(p50), col)
			if p99 > ymax { // clipped: far above the others
				c.text(bx+barW/2, py(p99)+16, "middle", ` font-size="11"`+halo, "↑ "+num(p99))
			} else {
				c.text(bx+barW/2, py(p99)-4, "middle", ` font-size="11"`, num(p99))
			}
		}
		c.text(gx+groupW/2, bottom+18, "middle", ` font-weight="bold"`, sc.title)
	}
	for i, p := range rep.o.policies {
		lx := x0 + float64(i)*140
		c.el(`<rect x="%.1f" y="%.1f" width="14" height="10" fill="%s"/>`, lx, bottom+34, policyColor(p.name))
		c.text(lx+18, bottom+43, "start", "", p.directive)
	}

	if slow != nil {
		rep.sharePanel(&c, slow, 680, 1140, top, bottom)
	}
	c.el(`</svg>`)
	return c.String()
}

// sharePanel plots each policy's share of attempts to the slowed node by
// second after the change.
func (rep *report) sharePanel(c *canvas, sc *scenario, x0, x1, y0, y1 float64) {
	runs := rep.runsOf(sc)
	secs, pre := 1, 0.0
	for _, r := range runs {
		secs = max(secs, len(r.seconds))
		pre += r.preShare / float64(len(runs))
	}
	py := c.frame(x0, y0, x1, y1, 0.5, 0.1, fmt.Sprintf("share of attempts to node-%d after it slows %g×", sc.changeNode, rep.o.slowFactor),
		"share", func(v float64) string { return fmt.Sprintf("%.0f%%", 100*v) })
	px := func(t float64) float64 { return x0 + t/float64(secs)*(x1-x0) }
	for t := 0; t <= secs; t += max(1, secs/10) {
		c.text(px(float64(t)), y1+16, "middle", "", fmt.Sprint(t))
	}
	c.text((x0+x1)/2, y1+32, "middle", "", "seconds after the change")
	for _, ref := range []struct {
		v    float64
		name string
	}{{pre, "before the change (mean)"}, {pre / 2, "half of that"}} {
		c.el(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999" stroke-dasharray="4 3"/>`, x0, py(ref.v), x1, py(ref.v))
		c.text(x1-4, py(ref.v)+14, "end", ` fill="#555"`+halo, ref.name)
	}
	if secs > 5 {
		c.el(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#d62728" stroke-dasharray="2 3"/>`, px(5), y0, px(5), y1)
		c.text(px(5)+4, y0+14, "start", ` fill="#d62728"`, "5 s")
	}
	for _, r := range runs {
		var pts []string
		for t, s := range r.seconds {
			if v := s.share(); !math.IsNaN(v) {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(float64(t)+0.5), py(math.Min(v, 0.5))))
			}
		}
		c.el(`<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, policyColor(r.pol.name), strings.Join(pts, " "))
	}
}
