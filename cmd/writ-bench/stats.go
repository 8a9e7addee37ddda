package main

import (
	"errors"
	"math"
	"slices"
	"time"
)

// errNoSamples is returned by the statistics of an empty sample.
var errNoSamples = errors.New("no samples")

// Sample is a set of measurements, in the unit of the figure they feed.
type Sample []float64

// durationsMS converts durations to milliseconds.
func durationsMS(ds []time.Duration) Sample {
	s := make(Sample, len(ds))
	for i, d := range ds {
		s[i] = float64(d) / float64(time.Millisecond)
	}
	return s
}

// sorted returns a sorted copy of s.
func (s Sample) sorted() Sample {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// Percentile returns the p-th percentile (0 < p <= 100) of s by the
// nearest-rank method: the smallest value such that at least p % of the
// sample is less than or equal to it. Unlike interpolating methods, it
// always returns a value that was measured.
func (s Sample) Percentile(p float64) (float64, error) {
	if len(s) == 0 {
		return 0, errNoSamples
	}
	if !(p > 0 && p <= 100) {
		return 0, errors.New("percentile must be in (0, 100]")
	}
	return percentileSorted(s.sorted(), p), nil
}

// percentileSorted is Percentile on a sorted, non-empty sample.
func percentileSorted(sorted Sample, p float64) float64 {
	// The rank is ceil(p/100 * n), computed so that float rounding of
	// an exact product (99/100 * 100) does not push it up by one.
	rank := int(math.Ceil(p*float64(len(sorted))/100 - 1e-9))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Summary holds the usual statistics of a sample.
type Summary struct {
	N                  int
	Min, P50, P99, Max float64
	Mean               float64
}

// Summarize returns the summary of s.
func (s Sample) Summarize() (Summary, error) {
	if len(s) == 0 {
		return Summary{}, errNoSamples
	}
	c := s.sorted()
	sum := 0.0
	for _, v := range c {
		sum += v
	}
	return Summary{
		N:    len(c),
		Min:  c[0],
		P50:  percentileSorted(c, 50),
		P99:  percentileSorted(c, 99),
		Max:  c[len(c)-1],
		Mean: sum / float64(len(c)),
	}, nil
}

// CDFPoint is a point of an empirical cumulative distribution: the
// fraction F (0 to 1) of the sample that is <= X.
type CDFPoint struct {
	X, F float64
}

// CDF returns the empirical cumulative distribution of s as at most
// maxPoints points (all distinct values if there are fewer), so that a
// chart of a large sample stays small. The points are sorted by X; F is
// non-decreasing and the last point is (max, 1). With maxPoints below the
// number of values, the points are the values at evenly spaced ranks,
// always including the minimum and the maximum; a value drawn twice
// appears once.
func (s Sample) CDF(maxPoints int) []CDFPoint {
	if len(s) == 0 || maxPoints < 1 {
		return nil
	}
	c := s.sorted()
	n := len(c)
	// lastOf[i] is the index of the last occurrence of c[i]'s value: F
	// at a value counts every occurrence of it.
	lastOf := make([]int, n)
	distinct := 0
	for i := n - 1; i >= 0; i-- {
		if i == n-1 || c[i+1] != c[i] {
			lastOf[i] = i
			distinct++
		} else {
			lastOf[i] = lastOf[i+1]
		}
	}
	var pts []CDFPoint
	prev := -1
	add := func(i int) {
		if j := lastOf[i]; j != prev {
			pts = append(pts, CDFPoint{X: c[j], F: float64(j+1) / float64(n)})
			prev = j
		}
	}
	switch {
	case distinct <= maxPoints:
		for i := range c {
			add(i)
		}
	case maxPoints == 1:
		add(n - 1)
	default:
		// Evenly spaced ranks, from the minimum to the maximum.
		for k := range maxPoints {
			add(int(math.Round(float64(k) * float64(n-1) / float64(maxPoints-1))))
		}
	}
	return pts
}
