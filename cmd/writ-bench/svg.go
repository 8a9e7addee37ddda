package main

import (
	"fmt"
	"math"
	"strings"
)

// Hand-written SVG charts: CDFs (latency, propagation), lines (memory
// against entries) and horizontal bars (throughput). The output depends
// only on the input, so that it can be compared with golden files.

const (
	svgW, svgH                         = 760, 420
	marginL, marginR, marginT, marginB = 70, 210, 44, 56
	plotW, plotH                       = svgW - marginL - marginR, svgH - marginT - marginB
)

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"}

var xmlEscaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&#39;")

func esc(s string) string { return xmlEscaper.Replace(s) }

// f2 formats a coordinate.
func f2(v float64) string {
	s := fmt.Sprintf("%.1f", v)
	if s == "-0.0" {
		s = "0.0"
	}
	return s
}

// svgDoc accumulates an SVG document.
type svgDoc struct{ b strings.Builder }

func newSVG(title string) *svgDoc {
	d := &svgDoc{}
	fmt.Fprintf(&d.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", svgW, svgH, svgW, svgH)
	fmt.Fprintf(&d.b, `<rect width="%d" height="%d" fill="white"/>`+"\n", svgW, svgH)
	fmt.Fprintf(&d.b, `<text x="%d" y="24" font-size="15" font-weight="bold">%s</text>`+"\n", marginL, esc(title))
	return d
}

func (d *svgDoc) line(x1, y1, x2, y2 float64, stroke string, width float64, dash string) {
	extra := ""
	if dash != "" {
		extra = fmt.Sprintf(` stroke-dasharray="%s"`, dash)
	}
	fmt.Fprintf(&d.b, `<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="%s"%s/>`+"\n", f2(x1), f2(y1), f2(x2), f2(y2), stroke, f2(width), extra)
}

func (d *svgDoc) text(x, y float64, anchor, s string, attrs string) {
	if attrs != "" {
		attrs = " " + attrs
	}
	fmt.Fprintf(&d.b, `<text x="%s" y="%s" text-anchor="%s"%s>%s</text>`+"\n", f2(x), f2(y), anchor, attrs, esc(s))
}

func (d *svgDoc) path(points [][2]float64, stroke string, dash string) {
	if len(points) == 0 {
		return
	}
	var p strings.Builder
	for i, pt := range points {
		if i == 0 {
			p.WriteString("M")
		} else {
			p.WriteString(" L")
		}
		p.WriteString(f2(pt[0]) + " " + f2(pt[1]))
	}
	extra := ""
	if dash != "" {
		extra = fmt.Sprintf(` stroke-dasharray="%s"`, dash)
	}
	fmt.Fprintf(&d.b, `<path d="%s" fill="none" stroke="%s" stroke-width="2"%s/>`+"\n", p.String(), stroke, extra)
}

func (d *svgDoc) circle(x, y float64, fill string) {
	fmt.Fprintf(&d.b, `<circle cx="%s" cy="%s" r="3.5" fill="%s"/>`+"\n", f2(x), f2(y), fill)
}

func (d *svgDoc) rect(x, y, w, h float64, fill string) {
	fmt.Fprintf(&d.b, `<rect x="%s" y="%s" width="%s" height="%s" fill="%s"/>`+"\n", f2(x), f2(y), f2(w), f2(h), fill)
}

// legend draws entries to the right of the plot.
func (d *svgDoc) legend(names []string, colors []string, dashes []string) {
	x := float64(marginL + plotW + 16)
	for i, n := range names {
		y := float64(marginT + 10 + 20*i)
		d.line(x, y-4, x+24, y-4, colors[i], 2.5, dashes[i])
		d.text(x+30, y, "start", n, "")
	}
}

func (d *svgDoc) String() string { return d.b.String() + "</svg>\n" }

// axis maps values to pixels.
type axis struct {
	min, max float64
	log      bool
	from, to float64 // pixels of min and max
}

func (a axis) pos(v float64) float64 {
	if a.log {
		if v < a.min {
			v = a.min
		}
		return a.from + (math.Log10(v)-math.Log10(a.min))/(math.Log10(a.max)-math.Log10(a.min))*(a.to-a.from)
	}
	return a.from + (v-a.min)/(a.max-a.min)*(a.to-a.from)
}

// ticks returns the tick values of a.
func (a axis) ticks() []float64 {
	var out []float64
	if a.log {
		// 1, 2 and 5 times each power of ten over up to three decades;
		// over more, the powers of ten alone.
		mults := []float64{1, 2, 5}
		if math.Log10(a.max)-math.Log10(a.min) > 3.5 {
			mults = []float64{1}
		}
		for e := math.Floor(math.Log10(a.min)); e <= math.Ceil(math.Log10(a.max)); e++ {
			for _, m := range mults {
				v := m * math.Pow(10, e)
				if v >= a.min*(1-1e-9) && v <= a.max*(1+1e-9) {
					out = append(out, v)
				}
			}
		}
		return out
	}
	step := niceStep((a.max - a.min) / 5)
	for v := math.Ceil(a.min/step) * step; v <= a.max+step*1e-9; v += step {
		out = append(out, v)
	}
	return out
}

// niceStep rounds raw up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw*(1-1e-9) {
			return m * p
		}
	}
	return 10 * p
}

// linearAxis returns an axis from 0 (or lo, if negative) to a nice value
// above hi.
func linearAxis(lo, hi, from, to float64) axis {
	lo = math.Min(lo, 0)
	if hi <= lo {
		hi = lo + 1
	}
	step := niceStep((hi - lo) / 5)
	return axis{min: math.Floor(lo/step) * step, max: math.Ceil(hi/step) * step, from: from, to: to}
}

// logAxis returns an axis from the decade below lo to the decade above hi
// (lo > 0).
func logAxis(lo, hi, from, to float64) axis {
	if lo <= 0 {
		lo = hi / 1000
	}
	if hi <= lo {
		hi = lo * 10
	}
	return axis{min: math.Pow(10, math.Floor(math.Log10(lo))), max: math.Pow(10, math.Ceil(math.Log10(hi))), log: true, from: from, to: to}
}

// tickLabel formats a tick value compactly.
func tickLabel(v float64) string {
	switch {
	case v == 0:
		return "0"
	case math.Abs(v) >= 1000:
		return count(int(math.Round(v)))
	case math.Abs(v) >= 1:
		return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".")
	}
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.4f", v), "0"), ".")
}

// frame draws the axes, grid and labels.
func (d *svgDoc) frame(x, y axis, xLabel, yLabel string, yFormat func(float64) string) {
	for _, t := range x.ticks() {
		px := x.pos(t)
		d.line(px, marginT, px, marginT+plotH, "#e5e5e5", 1, "")
		d.text(px, marginT+plotH+16, "middle", tickLabel(t), "")
	}
	for _, t := range y.ticks() {
		py := y.pos(t)
		d.line(marginL, py, marginL+plotW, py, "#e5e5e5", 1, "")
		d.text(marginL-6, py+4, "end", yFormat(t), "")
	}
	d.line(marginL, marginT+plotH, marginL+plotW, marginT+plotH, "#333", 1, "")
	d.line(marginL, marginT, marginL, marginT+plotH, "#333", 1, "")
	d.text(marginL+plotW/2, svgH-14, "middle", xLabel, "")
	fmt.Fprintf(&d.b, `<text x="16" y="%s" text-anchor="middle" transform="rotate(-90 16 %s)">%s</text>`+"\n", f2(marginT+plotH/2), f2(marginT+plotH/2), esc(yLabel))
}

// cdfSeries is one distribution of a CDF chart.
type cdfSeries struct {
	Name   string
	Points []CDFPoint
}

// marker is a labelled vertical line.
type marker struct {
	X     float64
	Label string
}

// cdfChart draws cumulative distributions as step lines.
type cdfChart struct {
	Title, XLabel string
	LogX          bool
	Series        []cdfSeries
	Markers       []marker
}

func (c cdfChart) SVG() string {
	d := newSVG(c.Title)
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range c.Series {
		for _, p := range s.Points {
			if !c.LogX || p.X > 0 {
				lo = math.Min(lo, p.X)
			}
			hi = math.Max(hi, p.X)
		}
	}
	for _, m := range c.Markers {
		lo, hi = math.Min(lo, m.X), math.Max(hi, m.X)
	}
	if math.IsInf(lo, 1) {
		lo, hi = 0.1, 1
	}
	var x axis
	if c.LogX {
		x = logAxis(lo, hi, marginL, marginL+plotW)
	} else {
		x = linearAxis(lo, hi, marginL, marginL+plotW)
	}
	y := axis{min: 0, max: 1, from: marginT + plotH, to: marginT}
	d.frame(x, y, c.XLabel, "fraction of samples ≤ x", func(v float64) string { return fmt.Sprintf("%.0f%%", v*100) })
	for i, m := range c.Markers {
		px := x.pos(m.X)
		d.line(px, marginT, px, marginT+plotH, "#555", 1.5, "6 4")
		// Labels at the bottom right of their line, where a CDF's curves
		// (high at large x) are not, and below the legend; a row each.
		d.text(px+4, float64(marginT+plotH-8-16*i), "start", m.Label, `font-size="11" fill="#333"`)
	}
	var names, colors, dashes []string
	for i, s := range c.Series {
		color := palette[i%len(palette)]
		var pts [][2]float64
		prevF := 0.0
		for j, p := range s.Points {
			px := x.pos(p.X)
			if j == 0 {
				pts = append(pts, [2]float64{px, y.pos(0)})
			}
			pts = append(pts, [2]float64{px, y.pos(prevF)}, [2]float64{px, y.pos(p.F)})
			prevF = p.F
		}
		d.path(pts, color, "")
		names = append(names, s.Name)
		colors = append(colors, color)
		dashes = append(dashes, "")
	}
	d.legend(names, colors, dashes)
	return d.String()
}

// lineSeries is one line of a line chart.
type lineSeries struct {
	Name   string
	Points [][2]float64
	Dashed bool // reference values
}

// lineChart draws series of points joined by lines.
type lineChart struct {
	Title, XLabel, YLabel string
	Series                []lineSeries
}

func (c lineChart) SVG() string {
	d := newSVG(c.Title)
	xhi, yhi := 0.0, 0.0
	for _, s := range c.Series {
		for _, p := range s.Points {
			xhi, yhi = math.Max(xhi, p[0]), math.Max(yhi, p[1])
		}
	}
	x := linearAxis(0, xhi, marginL, marginL+plotW)
	y := linearAxis(0, yhi, marginT+plotH, marginT)
	d.frame(x, y, c.XLabel, c.YLabel, tickLabel)
	var names, colors, dashes []string
	for i, s := range c.Series {
		color := palette[i%len(palette)]
		dash := ""
		if s.Dashed {
			dash = "6 4"
		}
		var pts [][2]float64
		for _, p := range s.Points {
			pts = append(pts, [2]float64{x.pos(p[0]), y.pos(p[1])})
		}
		d.path(pts, color, dash)
		for _, p := range pts {
			d.circle(p[0], p[1], color)
		}
		names = append(names, s.Name)
		colors = append(colors, color)
		dashes = append(dashes, dash)
	}
	d.legend(names, colors, dashes)
	return d.String()
}

// bar is one bar of a bar chart.
type bar struct {
	Label     string
	Value     float64
	Reference bool // measured elsewhere: drawn hatched grey
}

// barChart draws horizontal bars; the title names the unit.
type barChart struct {
	Title string
	Bars  []bar
}

func (c barChart) SVG() string {
	d := newSVG(c.Title)
	const labelW = 250
	hi := 0.0
	for _, b := range c.Bars {
		hi = math.Max(hi, b.Value)
	}
	x := linearAxis(0, hi, labelW, svgW-90)
	top := float64(marginT)
	rowH := math.Min(34, float64(svgH-marginT-marginB)/math.Max(1, float64(len(c.Bars))))
	for _, t := range x.ticks() {
		px := x.pos(t)
		d.line(px, top, px, top+rowH*float64(len(c.Bars)), "#e5e5e5", 1, "")
		d.text(px, top+rowH*float64(len(c.Bars))+16, "middle", tickLabel(t), "")
	}
	for i, b := range c.Bars {
		y := top + rowH*float64(i)
		fill := palette[0]
		if b.Reference {
			fill = "#b0b0b0"
		}
		d.rect(labelW, y+4, x.pos(b.Value)-labelW, rowH-8, fill)
		d.text(labelW-8, y+rowH/2+4, "end", b.Label, "")
		d.text(x.pos(b.Value)+6, y+rowH/2+4, "start", num(b.Value), "")
	}
	d.rect(labelW, svgH-26, 12, 12, palette[0])
	d.text(labelW+18, svgH-16, "start", "measured by this run", "")
	d.rect(labelW+180, svgH-26, 12, 12, "#b0b0b0")
	d.text(labelW+198, svgH-16, "start", "reference (from the issue)", "")
	return d.String()
}
