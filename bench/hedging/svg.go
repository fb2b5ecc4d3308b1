package main

import (
	"fmt"
	"html"
	"math"
	"strconv"
	"strings"
	"time"
)

// seriesStyle is the colour and dash pattern of a configuration's line; i
// is its place in the scenario's passes (0: no hedge).
func seriesStyle(config string, i int) (color, dash string) {
	switch config {
	case "no-hedge":
		return "#d62728", ""
	case "fixed":
		return "#2ca02c", "6 3"
	}
	adaptive := []string{"#1f77b4", "#ff7f0e", "#9467bd", "#8c564b"}
	return adaptive[max(i-1, 0)%len(adaptive)], ""
}

// niceSteps are the 1-2-5 values (in ms) used for the log axis.
func niceSteps(lo, hi float64) []float64 {
	var out []float64
	for e := math.Floor(math.Log10(lo)) - 1; e <= math.Ceil(math.Log10(hi))+1; e++ {
		for _, m := range []float64{1, 2, 5} {
			out = append(out, m*math.Pow(10, e))
		}
	}
	return out
}

// plotSVG draws, for each scenario (a column), the CDF of client TTFT with
// a log x axis, and below it the tail (the fraction of requests slower
// than x) on a log y axis, with and without hedging.
func plotSVG(scs []scenario, passes []*passResult) string {
	cols := max(len(scs), 1)
	const cellW, cellH, top, legendH = 580.0, 330.0, 44.0, 0.0
	W, H := cellW*float64(cols), top+2*cellH+legendH
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">`+"\n", W, H, W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="24" text-anchor="middle" font-size="16" font-weight="bold">ai-lb: client time to first token, with and without hedging</text>`+"\n", W/2)

	// One x range for all panels, so the scenarios compare at a glance.
	lo, hi := math.Inf(1), 0.0
	maxN := 1
	for _, p := range passes {
		if len(p.TTFT) == 0 {
			continue
		}
		lo = math.Min(lo, msf(p.TTFT[0]))
		hi = math.Max(hi, msf(p.TTFT[len(p.TTFT)-1]))
		maxN = max(maxN, len(p.TTFT))
	}
	if math.IsInf(lo, 1) {
		lo, hi = 10, 1000
	}
	steps := niceSteps(lo, hi)
	xlo, xhi := steps[0], steps[len(steps)-1]
	for _, s := range steps {
		if s <= lo {
			xlo = s
		}
	}
	for i := len(steps) - 1; i >= 0; i-- {
		if steps[i] >= hi {
			xhi = steps[i]
		}
	}
	ymin := math.Pow(10, math.Floor(math.Log10(1/float64(maxN))))

	for c, sc := range scs {
		var ps []*passResult
		for _, p := range passes {
			if p.Scenario == sc.name {
				ps = append(ps, p)
			}
		}
		for row := range 2 {
			x0 := float64(c)*cellW + 62
			x1 := float64(c+1)*cellW - 18
			y0 := top + float64(row)*cellH + 26 // plot top
			y1 := top + float64(row+1)*cellH - 44
			px := func(v float64) float64 {
				v = math.Min(math.Max(v, xlo), xhi)
				return x0 + (math.Log10(v)-math.Log10(xlo))/(math.Log10(xhi)-math.Log10(xlo))*(x1-x0)
			}
			var py func(float64) float64
			title := sc.short + ": CDF"
			if row == 0 {
				py = func(f float64) float64 { return y1 - f*(y1-y0) }
			} else {
				title = sc.short + ": tail, share slower than x"
				py = func(f float64) float64 {
					f = math.Max(f, ymin)
					return y0 + (0-math.Log10(f))/(0-math.Log10(ymin))*(y1-y0)
				}
			}
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="13" font-weight="bold">%s</text>`+"\n",
				(x0+x1)/2, y0-9, html.EscapeString(title))
			// Grid and axes.
			for _, s := range steps {
				if s < xlo || s > xhi {
					continue
				}
				x := px(s)
				fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e4e4e4"/>`+"\n", x, y0, x, y1)
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, y1+15, strconv.FormatFloat(s, 'g', -1, 64))
			}
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">client TTFT (ms, log scale)</text>`+"\n", (x0+x1)/2, y1+32)
			if row == 0 {
				for _, f := range []float64{0, 0.25, 0.5, 0.75, 1} {
					y := py(f)
					fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e4e4e4"/>`+"\n", x0, y, x1, y)
					fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%g</text>`+"\n", x0-5, y+4, f)
				}
				y := py(0.99)
				fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#888" stroke-dasharray="2 3"/>`+"\n", x0, y, x1, y)
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end" fill="#666">p99</text>`+"\n", x1-2, y+12)
			} else {
				for f := 1.0; f >= ymin*0.999; f /= 10 {
					y := py(f)
					fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e4e4e4"/>`+"\n", x0, y, x1, y)
					fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", x0-5, y+4, pctLabel(f))
				}
				for _, ref := range []struct {
					f    float64
					name string
				}{{0.01, "p99"}, {0.001, "p99.9"}} {
					if ref.f < ymin {
						continue
					}
					y := py(ref.f)
					fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end" fill="#666">%s</text>`+"\n", x1-2, y-3, ref.name)
				}
			}
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#333"/>`+"\n", x0, y0, x1-x0, y1-y0)

			for pi, p := range ps {
				n := len(p.TTFT)
				if n == 0 {
					continue
				}
				var pl polyline
				if row == 0 {
					pl.add(px(msf(p.TTFT[0])), py(0))
					for i, t := range p.TTFT {
						x := px(msf(t))
						pl.add(x, py(float64(i)/float64(n)))
						pl.add(x, py(float64(i+1)/float64(n)))
					}
				} else {
					pl.add(px(xlo), py(1))
					for i, t := range p.TTFT {
						x := px(msf(t))
						pl.add(x, py(float64(n-i)/float64(n)))
						if i == n-1 {
							pl.add(x, y1)
						} else {
							pl.add(x, py(float64(n-1-i)/float64(n)))
						}
					}
				}
				color, dash := seriesStyle(p.Config, pi)
				if dash != "" {
					dash = ` stroke-dasharray="` + dash + `"`
				}
				fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.8"%s points="%s"/>`+"\n",
					color, dash, pl.String())
			}
			if row == 0 {
				// Legend, bottom right, where a CDF is empty.
				lx, lw := x1-270, 262.0
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="white" stroke="#bbb"/>`+"\n",
					lx, y1-8-float64(len(ps))*17-6, lw, float64(len(ps))*17+6)
				for i, p := range ps {
					ly := y1 - 8 - float64(len(ps)-1-i)*17 - 4
					x0 := lx - 2
					color, dash := seriesStyle(p.Config, i)
					if dash != "" {
						dash = ` stroke-dasharray="` + dash + `"`
					}
					fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2.5"%s/>`+"\n",
						x0+10, ly-4, x0+34, ly-4, color, dash)
					fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s (p99 %s ms)</text>`+"\n", x0+40, ly,
						html.EscapeString(p.Label), ms(pct(p.TTFT, 99)))
				}
			}
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func pctLabel(f float64) string {
	if f >= 1 {
		return "100%"
	}
	return strconv.FormatFloat(f*100, 'g', -1, 64) + "%"
}

// polyline collects points rounded to half a pixel, dropping the middle of
// any three consecutive points on one vertical or horizontal line, so a
// CDF of thousands of steps stays small.
type polyline struct{ pts [][2]float64 }

func (p *polyline) add(x, y float64) {
	x, y = math.Round(x*2)/2, math.Round(y*2)/2
	n := len(p.pts)
	if n > 0 && p.pts[n-1] == [2]float64{x, y} {
		return
	}
	if n >= 2 {
		a, b := p.pts[n-2], p.pts[n-1]
		if (a[0] == b[0] && b[0] == x) || (a[1] == b[1] && b[1] == y) {
			p.pts[n-1] = [2]float64{x, y}
			return
		}
	}
	p.pts = append(p.pts, [2]float64{x, y})
}

func (p *polyline) String() string {
	var b strings.Builder
	for i, pt := range p.pts {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.FormatFloat(pt[0], 'f', -1, 64))
		b.WriteByte(',')
		b.WriteString(strconv.FormatFloat(pt[1], 'f', -1, 64))
	}
	return b.String()
}
