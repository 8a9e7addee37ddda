package ui

import (
	"cmp"
	"slices"
	"time"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/keymanager"
)

// timeline is the CA keys drawn as bars on one time axis, in an SVG of
// width timelineWidth (x in user units).
type timeline struct {
	Bars   []bar
	Start  time.Time
	End    time.Time
	NowX   float64
	Width  float64
	Height float64
	Ticks  []tick
}

type bar struct {
	Kind      string
	ID        string
	State     string
	ServerID  string
	NotBefore time.Time
	NotAfter  time.Time
	X, W, Y   float64
	LabelY    float64
}

type tick struct {
	X      float64
	Label  string
	Anchor string // SVG text-anchor: the first label starts at its tick, the last ends there
}

const (
	timelineWidth = 1000.0
	barHeight     = 18.0
	barGap        = 10.0
	axisHeight    = 24.0
)

// buildTimeline lays out keys (X.509 first, then JWT, each by not-before)
// between the earliest not-before and the latest not-after.
func buildTimeline(keys []*datastore.CAKey, now time.Time) timeline {
	tl := timeline{Width: timelineWidth}
	if len(keys) == 0 {
		return tl
	}
	sorted := slices.Clone(keys)
	slices.SortFunc(sorted, func(a, b *datastore.CAKey) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind)*-1, a.NotBefore.Compare(b.NotBefore), cmp.Compare(a.ID, b.ID))
	})
	tl.Start, tl.End = sorted[0].NotBefore, sorted[0].NotAfter
	for _, k := range sorted {
		if k.NotBefore.Before(tl.Start) {
			tl.Start = k.NotBefore
		}
		if k.NotAfter.After(tl.End) {
			tl.End = k.NotAfter
		}
	}
	if now.Before(tl.Start) {
		tl.Start = now
	}
	if now.After(tl.End) {
		tl.End = now
	}
	span := tl.End.Sub(tl.Start)
	if span <= 0 {
		span = time.Second
	}
	x := func(t time.Time) float64 { return float64(t.Sub(tl.Start)) / float64(span) * timelineWidth }
	for i, k := range sorted {
		y := axisHeight + float64(i)*(barHeight+barGap)
		b := bar{Kind: string(k.Kind), ID: keyID(k), State: string(k.State), ServerID: k.ServerID, NotBefore: k.NotBefore, NotAfter: k.NotAfter,
			X: x(k.NotBefore), Y: y, LabelY: y + barHeight - 5}
		b.W = max(x(k.NotAfter)-b.X, 1)
		tl.Bars = append(tl.Bars, b)
	}
	tl.NowX = x(now)
	tl.Height = axisHeight + float64(len(sorted))*(barHeight+barGap)
	for i := range 5 {
		t := tl.Start.Add(span * time.Duration(i) / 4)
		anchor := "middle"
		switch i {
		case 0:
			anchor = "start"
		case 4:
			anchor = "end"
		}
		tl.Ticks = append(tl.Ticks, tick{X: x(t), Label: t.UTC().Format("01-02 15:04"), Anchor: anchor})
	}
	return tl
}

// keyID is the ID operators use for a key (writ ca x509|jwt show): for
// X.509 the subject key ID in lowercase hex, for JWT the kid.
func keyID(k *datastore.CAKey) string {
	if id, err := keymanager.DisplayID(k); err == nil {
		return id
	}
	return k.ID
}
