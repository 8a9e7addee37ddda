package keymanager_test

import (
	"slices"
	"testing"
	"time"

	"writ.dev/writ/ca/datastore"
	"writ.dev/writ/ca/keymanager"
)

const self, other = "server-a", "server-b"

// The reference key of the policy tables: 24 h, from t0. Its successor is
// prepared at 12 h and activated at 20 h.
var (
	life       = 24 * time.Hour
	prepareAt  = t0.Add(life / 2)
	activateAt = t0.Add(life - life/6)
	expiresAt  = t0.Add(life)
	sec        = time.Second
)

func rec(id string, kind datastore.CAKeyKind, state datastore.CAKeyState, owner string, nb time.Time) *datastore.CAKey {
	return &datastore.CAKey{ID: id, Kind: kind, State: state, ServerID: owner, NotBefore: nb, NotAfter: nb.Add(life)}
}

// both returns the key for each kind, IDs suffixed with the kind.
func both(id string, state datastore.CAKeyState, owner string, nb time.Time) []*datastore.CAKey {
	return []*datastore.CAKey{
		rec(id+"-x509", datastore.CAKeyX509, state, owner, nb),
		rec(id+"-jwt", datastore.CAKeyJWT, state, owner, nb),
	}
}

func keys(groups ...[]*datastore.CAKey) []*datastore.CAKey { return slices.Concat(groups...) }

// dec returns the decision for each kind, IDs suffixed with the kind.
func dec(a keymanager.Action, id string) []keymanager.Decision {
	var out []keymanager.Decision
	for _, k := range keymanager.Kinds {
		d := keymanager.Decision{Action: a, Kind: k}
		if id != "" {
			d.KeyID = id + "-" + string(k)
		}
		out = append(out, d)
	}
	return out
}

func TestDecide(t *testing.T) {
	x, j := datastore.CAKeyX509, datastore.CAKeyJWT
	for _, tc := range []struct {
		name string
		now  time.Time
		keys []*datastore.CAKey
		want []keymanager.Decision // compared as a set
		next time.Time             // when want is empty
	}{
		{name: "no keys: prepare", now: t0, want: dec(keymanager.Prepare, "")},
		{name: "prepared, none active: activate", now: t0, keys: both("p", datastore.CAKeyPrepared, self, t0), want: dec(keymanager.Activate, "p")},
		{name: "just before half-life", now: prepareAt.Add(-sec), keys: both("a", datastore.CAKeyActive, self, t0), next: prepareAt},
		{name: "just after half-life: prepare", now: prepareAt.Add(sec), keys: both("a", datastore.CAKeyActive, self, t0), want: dec(keymanager.Prepare, "")},
		{name: "just before activation", now: activateAt.Add(-sec),
			keys: keys(both("a", datastore.CAKeyActive, self, t0), both("p", datastore.CAKeyPrepared, self, prepareAt)),
			next: activateAt},
		{name: "just after activation: activate, retire", now: activateAt.Add(sec),
			keys: keys(both("a", datastore.CAKeyActive, self, t0), both("p", datastore.CAKeyPrepared, self, prepareAt)),
			want: slices.Concat(dec(keymanager.Activate, "p"), dec(keymanager.Retire, "a"))},
		{name: "retired, just before expiry: stays", now: expiresAt.Add(-sec),
			keys: keys(both("r", datastore.CAKeyRetired, self, t0), both("a", datastore.CAKeyActive, self, prepareAt)),
			next: expiresAt},
		{name: "retired, just after expiry: drop", now: expiresAt.Add(sec),
			keys: keys(both("r", datastore.CAKeyRetired, self, t0), both("a", datastore.CAKeyActive, self, activateAt)),
			want: dec(keymanager.Drop, "r")},
		{name: "active expired while down: drop, prepare", now: expiresAt.Add(time.Hour), keys: both("a", datastore.CAKeyActive, self, t0),
			want: slices.Concat(dec(keymanager.Drop, "a"), dec(keymanager.Prepare, ""))},
		{name: "two active: the older retires", now: t0.Add(time.Hour),
			keys: keys(both("old", datastore.CAKeyActive, self, t0), both("new", datastore.CAKeyActive, self, t0.Add(time.Hour))),
			want: dec(keymanager.Retire, "old")},
		{name: "tainted active: a new key, the tainted one stays", now: t0.Add(time.Hour), keys: both("t", datastore.CAKeyTainted, self, t0),
			want: dec(keymanager.Prepare, "")},
		{name: "tainted key never activated", now: activateAt.Add(sec),
			keys: keys(both("a", datastore.CAKeyActive, self, t0), both("t", datastore.CAKeyTainted, self, prepareAt)),
			want: dec(keymanager.Prepare, "")},
		{name: "tainted, just before expiry: stays published", now: expiresAt.Add(-sec),
			keys: keys(both("t", datastore.CAKeyTainted, self, t0), both("a", datastore.CAKeyActive, self, prepareAt)),
			next: expiresAt},
		{name: "tainted, just after expiry: drop", now: expiresAt.Add(sec),
			keys: keys(both("t", datastore.CAKeyTainted, self, t0), both("a", datastore.CAKeyActive, self, activateAt)),
			want: dec(keymanager.Drop, "t")},
		{name: "other server's keys are not ours: prepare our own", now: t0, keys: both("b", datastore.CAKeyActive, other, t0),
			want: dec(keymanager.Prepare, "")},
		{name: "other server's keys get no rotation", now: activateAt.Add(sec),
			keys: keys(both("b", datastore.CAKeyActive, other, t0), both("bp", datastore.CAKeyPrepared, other, prepareAt), both("a", datastore.CAKeyActive, self, prepareAt)),
			next: prepareAt.Add(life / 2)},
		{name: "other server's expired keys are dropped", now: expiresAt.Add(sec),
			keys: keys(both("b", datastore.CAKeyRetired, other, t0), both("a", datastore.CAKeyActive, self, activateAt)),
			want: dec(keymanager.Drop, "b")},
		{name: "other server's keys bound the wake-up", now: t0.Add(time.Hour),
			keys: keys(both("b", datastore.CAKeyActive, other, t0.Add(-20*time.Hour)), both("a", datastore.CAKeyActive, self, t0)),
			next: t0.Add(4 * time.Hour)},
		{name: "kinds rotate independently", now: prepareAt.Add(sec),
			keys: []*datastore.CAKey{rec("ax", x, datastore.CAKeyActive, self, t0), rec("aj", j, datastore.CAKeyActive, self, t0.Add(time.Hour))},
			want: []keymanager.Decision{{Action: keymanager.Prepare, Kind: x}}},
		{name: "long wait is capped", now: t0, keys: keys(func() []*datastore.CAKey {
			k := both("a", datastore.CAKeyActive, self, t0)
			for _, r := range k {
				r.NotAfter = t0.Add(30 * 24 * time.Hour)
			}
			return k
		}()), next: t0.Add(keymanager.MaxWait)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.keys)
			p := keymanager.Decide(tc.now, self, tc.keys)
			if !sameDecisions(p.Decisions, tc.want) {
				t.Fatalf("decisions %v, want %v", p.Decisions, tc.want)
			}
			if len(tc.want) == 0 && !p.Next.Equal(tc.next) {
				t.Fatalf("next %s, want %s", p.Next, tc.next)
			}
			if !slices.Equal(in, tc.keys) {
				t.Fatal("Decide changed its input")
			}
		})
	}
}

func sameDecisions(a, b []keymanager.Decision) bool {
	if len(a) != len(b) {
		return false
	}
	for _, d := range a {
		if !slices.Contains(b, d) {
			return false
		}
	}
	return true
}

// TestDecideTimeline walks one key's whole life through the policy,
// applying each plan the way the manager does.
func TestDecideTimeline(t *testing.T) {
	var ks []*datastore.CAKey
	n := 0
	apply := func(now time.Time) {
		t.Helper()
		for range 4 {
			p := keymanager.Decide(now, self, ks)
			if len(p.Decisions) == 0 {
				return
			}
			for _, d := range p.Decisions {
				switch d.Action {
				case keymanager.Prepare:
					n++
					ks = append(ks, rec(string(rune('a'+n))+"-"+string(d.Kind), d.Kind, datastore.CAKeyPrepared, self, now))
				case keymanager.Activate, keymanager.Retire:
					i := slices.IndexFunc(ks, func(k *datastore.CAKey) bool { return k.ID == d.KeyID })
					ks[i].State = map[keymanager.Action]datastore.CAKeyState{keymanager.Activate: datastore.CAKeyActive, keymanager.Retire: datastore.CAKeyRetired}[d.Action]
				case keymanager.Drop:
					ks = slices.DeleteFunc(ks, func(k *datastore.CAKey) bool { return k.ID == d.KeyID })
				}
			}
		}
		t.Fatal("policy did not settle")
	}
	count := func(state datastore.CAKeyState) int {
		c := 0
		for _, k := range ks {
			if k.State == state {
				c++
			}
		}
		return c
	}
	apply(t0)
	first := keymanager.Signing(t0, self, ks, datastore.CAKeyX509)
	if first == nil || count(datastore.CAKeyActive) != 2 || len(ks) != 2 {
		t.Fatalf("first start: %d keys", len(ks))
	}
	for _, step := range []struct {
		at                      time.Time
		keys, prepared, retired int
	}{
		{prepareAt.Add(-sec), 2, 0, 0},
		{prepareAt.Add(sec), 4, 2, 0},
		{activateAt.Add(-sec), 4, 2, 0},
		{activateAt.Add(sec), 4, 0, 2},
		{expiresAt.Add(-sec), 4, 0, 2},
		// The first keys go; their successors, prepared at 12h, reach
		// their own half-life a second later.
		{expiresAt, 2, 0, 0},
		{expiresAt.Add(sec), 4, 2, 0},
	} {
		apply(step.at)
		if len(ks) != step.keys || count(datastore.CAKeyPrepared) != step.prepared || count(datastore.CAKeyRetired) != step.retired || count(datastore.CAKeyActive) != 2 {
			t.Fatalf("at %s: %d keys, %d prepared, %d retired, %d active; want %d, %d, %d, 2", step.at.Sub(t0), len(ks),
				count(datastore.CAKeyPrepared), count(datastore.CAKeyRetired), count(datastore.CAKeyActive), step.keys, step.prepared, step.retired)
		}
	}
	if s := keymanager.Signing(expiresAt.Add(sec), self, ks, datastore.CAKeyX509); s == nil || s.ID == first.ID {
		t.Fatal("the first key still signs after it expired")
	}
}
