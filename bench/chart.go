package main

import (
	"fmt"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// ChartSeries returns, for every target other than nbdkit that has at least
// one ratio, its ratios to nbdkit in job order (0 where missing). Pure, so
// the chart's content is testable without rendering.
func ChartSeries(jobs []Job, targets []TargetStatus, results []Result) (names []string, series [][]float64) {
	for _, t := range targets {
		if t.Name == TargetNBDKit {
			continue
		}
		vals := make([]float64, len(jobs))
		any := false
		for i, j := range jobs {
			for _, r := range results {
				if r.Target == t.Name && r.Job == j.Name && r.Ratio > 0 {
					vals[i] = r.Ratio
					any = true
				}
			}
		}
		if any {
			names = append(names, t.Name)
			series = append(series, vals)
		}
	}
	return names, series
}

// WriteChart renders the ratios to nbdkit as a grouped bar chart (one group
// per job, one bar per target, a line at 1.0) into a PNG file.
func WriteChart(path, title string, jobs []Job, targets []TargetStatus, results []Result) error {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = "throughput ÷ nbdkit's (higher is better)"
	p.Y.Min = 0
	names, series := ChartSeries(jobs, targets, results)
	if len(series) == 0 {
		return fmt.Errorf("bench: chart: no ratios to plot")
	}
	w := vg.Points(60 / float64(len(series)+1))
	for i, vals := range series {
		bars, err := plotter.NewBarChart(plotter.Values(vals), w)
		if err != nil {
			return fmt.Errorf("bench: chart: %w", err)
		}
		bars.LineStyle.Width = vg.Length(0)
		bars.Color = plotutil.Color(i)
		bars.Offset = w * vg.Length(float64(i)-float64(len(series)-1)/2)
		p.Add(bars)
		p.Legend.Add(names[i], bars)
	}
	one := plotter.NewFunction(func(float64) float64 { return 1 })
	one.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
	p.Add(one)
	p.Legend.Top = true
	p.Legend.Left = false
	labels := make([]string, len(jobs))
	for i, j := range jobs {
		labels[i] = j.Name
	}
	p.NominalX(labels...)
	p.X.Tick.Label.Rotation = math.Pi / 10
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.YAlign = draw.YTop
	return p.Save(10*vg.Inch, 5*vg.Inch, path)
}
