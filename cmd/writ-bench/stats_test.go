package main

import (
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// seq returns 1, 2, ..., n.
func seq(n int) Sample {
	s := make(Sample, n)
	for i := range s {
		s[i] = float64(i + 1)
	}
	return s
}

func TestPercentile(t *testing.T) {
	tests := []struct {
		name   string
		sample Sample
		p      float64
		want   float64
	}{
		{name: "median of 1..100", sample: seq(100), p: 50, want: 50},
		{name: "p99 of 1..100", sample: seq(100), p: 99, want: 99},
		{name: "p100 is the maximum", sample: seq(100), p: 100, want: 100},
		{name: "p99 of 1..1000", sample: seq(1000), p: 99, want: 990},
		{name: "p99 of 10 values is the maximum", sample: seq(10), p: 99, want: 10},
		{name: "tiny p is the minimum", sample: seq(10), p: 0.1, want: 1},
		{name: "median of an odd count", sample: Sample{3, 1, 2}, p: 50, want: 2},
		{name: "median of an even count is measured, not interpolated", sample: Sample{4, 1, 3, 2}, p: 50, want: 2},
		{name: "one value", sample: Sample{7}, p: 99, want: 7},
		{name: "duplicates", sample: Sample{5, 5, 5, 1}, p: 50, want: 5},
		{name: "unsorted input", sample: Sample{9, 2, 7, 4, 1, 8, 3, 6, 5, 10}, p: 90, want: 9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := slices.Clone(tt.sample)
			got, err := tt.sample.Percentile(tt.p)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("Percentile(%v) = %v, want %v", tt.p, got, tt.want)
			}
			if !slices.Equal(tt.sample, orig) {
				t.Errorf("Percentile reordered its sample")
			}
		})
	}
}

func TestPercentileErrors(t *testing.T) {
	if _, err := (Sample{}).Percentile(50); !errors.Is(err, errNoSamples) {
		t.Errorf("empty sample: err = %v, want errNoSamples", err)
	}
	for _, p := range []float64{0, -1, 100.5} {
		if _, err := seq(3).Percentile(p); err == nil {
			t.Errorf("Percentile(%v): no error", p)
		}
	}
	if _, err := (Sample{}).Summarize(); !errors.Is(err, errNoSamples) {
		t.Errorf("Summarize of empty sample: err = %v, want errNoSamples", err)
	}
}

func TestSummarize(t *testing.T) {
	got, err := seq(200).Summarize()
	if err != nil {
		t.Fatal(err)
	}
	want := Summary{N: 200, Min: 1, P50: 100, P99: 198, Max: 200, Mean: 100.5}
	if got != want {
		t.Errorf("Summarize = %+v, want %+v", got, want)
	}
}

func TestDurationsMS(t *testing.T) {
	got := durationsMS([]time.Duration{1500 * time.Microsecond, 2 * time.Second, 0})
	if want := (Sample{1.5, 2000, 0}); !slices.Equal(got, want) {
		t.Errorf("durationsMS = %v, want %v", got, want)
	}
}

func TestCDF(t *testing.T) {
	tests := []struct {
		name      string
		sample    Sample
		maxPoints int
		want      []CDFPoint
	}{
		{name: "empty", sample: nil, maxPoints: 10, want: nil},
		{name: "no points", sample: seq(3), maxPoints: 0, want: nil},
		{name: "distinct values", sample: Sample{3, 1, 2, 4}, maxPoints: 10,
			want: []CDFPoint{{1, 0.25}, {2, 0.5}, {3, 0.75}, {4, 1}}},
		{name: "a repeated value counts every occurrence", sample: Sample{1, 2, 2, 2}, maxPoints: 10,
			want: []CDFPoint{{1, 0.25}, {2, 1}}},
		{name: "one point is the maximum", sample: seq(5), maxPoints: 1,
			want: []CDFPoint{{5, 1}}},
		{name: "evenly spaced ranks", sample: seq(9), maxPoints: 3,
			want: []CDFPoint{{1, 1.0 / 9}, {5, 5.0 / 9}, {9, 1}}},
		{name: "ranks that fall on one value give one point", sample: Sample{1, 1, 1, 1, 1, 1, 1, 1, 2, 3}, maxPoints: 2,
			want: []CDFPoint{{1, 0.8}, {3, 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.sample.CDF(tt.maxPoints)
			if !slices.Equal(got, tt.want) {
				t.Errorf("CDF = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestCDFProperties checks the invariants of CDF on random samples.
func TestCDFProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		n := 1 + rng.IntN(3000)
		s := make(Sample, n)
		for j := range s {
			s[j] = float64(rng.IntN(1 + rng.IntN(500))) // many duplicates or none
		}
		maxPoints := 1 + rng.IntN(300)
		pts := s.CDF(maxPoints)
		sorted := s.sorted()
		if len(pts) == 0 || len(pts) > maxPoints {
			t.Fatalf("case %d: %d points for maxPoints %d", i, len(pts), maxPoints)
		}
		if last := pts[len(pts)-1]; last.X != sorted[n-1] || last.F != 1 {
			t.Fatalf("case %d: last point %v, want (%v, 1)", i, last, sorted[n-1])
		}
		if maxPoints > 1 && pts[0].X != sorted[0] {
			t.Fatalf("case %d: first point %v, want X = min %v", i, pts[0], sorted[0])
		}
		for j, p := range pts {
			// F is exactly the fraction of the sample <= X.
			le := 0
			for _, v := range sorted {
				if v <= p.X {
					le++
				}
			}
			if p.F != float64(le)/float64(n) {
				t.Fatalf("case %d: point %v: F should be %v", i, p, float64(le)/float64(n))
			}
			if j > 0 && !(p.X > pts[j-1].X && p.F > pts[j-1].F) {
				t.Fatalf("case %d: points not increasing: %v then %v", i, pts[j-1], p)
			}
		}
	}
}
