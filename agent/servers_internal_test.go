package agent

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
)

// mapResolver resolves names from a map; others fail.
type mapResolver struct {
	hosts map[string][]string
	calls int
}

var errNoSuchHost = errors.New("no such host")

func (r *mapResolver) LookupHost(_ context.Context, host string) ([]string, error) {
	r.calls++
	if ips, ok := r.hosts[host]; ok {
		return slices.Clone(ips), nil
	}
	return nil, errNoSuchHost
}

func picks(p *serverPicker, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = p.pick(context.Background())
	}
	return out
}

func TestServerPicker(t *testing.T) {
	res := &mapResolver{hosts: map[string][]string{
		"ca.example.org":    {"10.0.0.3", "10.0.0.2", "2001:db8::1"},
		"other.example.org": {"10.0.0.2"},
	}}
	for _, tc := range []struct {
		name  string
		addrs []string
		start int
		want  []string
	}{
		{"one address", []string{"10.0.0.1:8081"}, 0, []string{"10.0.0.1:8081", "10.0.0.1:8081", "10.0.0.1:8081"}},
		{"round-robin", []string{"10.0.0.1:8081", "10.0.0.9:8081"}, 0, []string{"10.0.0.1:8081", "10.0.0.9:8081", "10.0.0.1:8081", "10.0.0.9:8081"}},
		{"random start", []string{"10.0.0.1:8081", "10.0.0.9:8081", "[::1]:8081"}, 2, []string{"[::1]:8081", "10.0.0.1:8081", "10.0.0.9:8081", "[::1]:8081"}},
		{"a name counts as each of its addresses", []string{"ca.example.org:8081", "10.0.0.1:8081"}, 0,
			[]string{"10.0.0.2:8081", "10.0.0.3:8081", "[2001:db8::1]:8081", "10.0.0.1:8081", "10.0.0.2:8081"}},
		{"duplicates once", []string{"ca.example.org:8081", "other.example.org:8081", "10.0.0.2:8081"}, 0,
			[]string{"10.0.0.2:8081", "10.0.0.3:8081", "[2001:db8::1]:8081", "10.0.0.2:8081"}},
		{"an unresolvable name is tried as it is", []string{"gone.example.org:8081", "10.0.0.1:8081"}, 0,
			[]string{"gone.example.org:8081", "10.0.0.1:8081", "gone.example.org:8081"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newServerPicker(tc.addrs, res, slog.New(slog.DiscardHandler))
			var n int
			p.rand = func(k int) int { n = k; return tc.start }
			if got := picks(p, len(tc.want)); !slices.Equal(got, tc.want) {
				t.Errorf("picks %v, want %v", got, tc.want)
			}
			if n == 0 {
				t.Error("start not chosen at random")
			}
		})
	}

	t.Run("names resolved again each round", func(t *testing.T) {
		r := &mapResolver{hosts: map[string][]string{"ca.example.org": {"10.0.0.1"}}}
		p := newServerPicker([]string{"ca.example.org:8081"}, r, slog.New(slog.DiscardHandler))
		p.rand = func(int) int { return 0 }
		if got := p.pick(context.Background()); got != "10.0.0.1:8081" {
			t.Fatalf("pick %s", got)
		}
		r.hosts["ca.example.org"] = []string{"10.0.0.7", "10.0.0.8"}
		if got := picks(p, 3); !slices.Equal(got, []string{"10.0.0.7:8081", "10.0.0.8:8081", "10.0.0.7:8081"}) {
			t.Fatalf("after the DNS change: %v", got)
		}
		if p.size() != 2 {
			t.Errorf("size %d, want 2", p.size())
		}
	})

	t.Run("again", func(t *testing.T) {
		p := newServerPicker([]string{"10.0.0.1:8081", "10.0.0.9:8081"}, res, slog.New(slog.DiscardHandler))
		p.rand = func(int) int { return 0 }
		first := p.pick(context.Background())
		p.again()
		if got := p.pick(context.Background()); got != first {
			t.Errorf("after again: %s, want %s", got, first)
		}
		if got := p.pick(context.Background()); got == first {
			t.Errorf("the next pick repeats %s", got)
		}
	})
}
