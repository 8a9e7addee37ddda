package keymanager

import (
	"slices"
	"time"

	"writ.dev/writ/ca/datastore"
)

// MaxWait bounds how long the policy lets the manager sleep, so that
// changes made by other servers (their expired keys) are noticed.
const MaxWait = 24 * time.Hour

// Action is one kind of step the rotation policy asks for.
type Action uint8

const (
	// Prepare: create a new key of Kind and publish it in the bundle. It
	// does not sign yet.
	Prepare Action = iota + 1
	// Activate: KeyID starts signing.
	Activate
	// Retire: KeyID stops signing and stays published until it expires.
	Retire
	// Drop: KeyID has expired, and so has everything it signed. Remove it
	// from the bundle, then forget it (whichever server owns it).
	Drop
)

func (a Action) String() string {
	switch a {
	case Prepare:
		return "prepare"
	case Activate:
		return "activate"
	case Retire:
		return "retire"
	case Drop:
		return "drop"
	}
	return "unknown"
}

// Decision is one step of a Plan.
type Decision struct {
	Action Action
	Kind   datastore.CAKeyKind
	// KeyID is the key acted on; empty for Prepare.
	KeyID string
}

// Plan is what the rotation policy decides for one moment.
type Plan struct {
	// Decisions, in the order to apply them. A Prepare may make room for
	// an Activate that only the next evaluation can name (the new key's
	// ID): apply the Plan, then evaluate again until it has no Decisions.
	Decisions []Decision
	// Next is when to evaluate again if nothing else changes. It is only
	// meaningful when Decisions is empty.
	Next time.Time
}

// Kinds are the kinds of CA key the manager keeps, one active of each.
var Kinds = []datastore.CAKeyKind{datastore.CAKeyX509, datastore.CAKeyJWT}

// Decide is the rotation policy. Given the time and every CA key record in
// the shared datastore, it says what the server named self must do. It
// reads no clock and does no I/O.
//
// For each kind, among the server's own keys that have not expired:
//   - a key is expired at NotAfter; by then everything it signed has
//     expired too (leaves never outlive their issuer), so it is dropped,
//     whoever owns it;
//   - the active key is the Active one with the latest NotAfter; other
//     Active keys (an interrupted activation) retire;
//   - with no active key (a first start, a server that was down until its
//     key expired, or a tainted active key) the newest Prepared key is
//     activated, or a new key is prepared (and then activated);
//   - at half the active key's lifetime a successor is prepared;
//   - when a sixth of the active key's lifetime remains, the prepared key
//     is activated and the active key retires;
//   - Retired and Tainted keys stay published until they expire (or until
//     something else removes their record); Tainted keys never sign.
//
// Keys of other servers get no decision but Drop.
func Decide(now time.Time, self string, keys []*datastore.CAKey) Plan {
	var p Plan
	next := now.Add(MaxWait)
	for _, k := range keys {
		if expired(now, k) {
			p.Decisions = append(p.Decisions, Decision{Action: Drop, Kind: k.Kind, KeyID: k.ID})
		} else if k.NotAfter.Before(next) {
			next = k.NotAfter
		}
	}
	for _, kind := range Kinds {
		active := Signing(now, self, keys, kind)
		prepared := newest(now, self, keys, kind, datastore.CAKeyPrepared)
		for _, k := range keys {
			if k != active && k.ServerID == self && k.Kind == kind && k.State == datastore.CAKeyActive && !expired(now, k) {
				p.Decisions = append(p.Decisions, Decision{Action: Retire, Kind: kind, KeyID: k.ID})
			}
		}
		if active == nil {
			if prepared == nil {
				p.Decisions = append(p.Decisions, Decision{Action: Prepare, Kind: kind})
			} else {
				p.Decisions = append(p.Decisions, Decision{Action: Activate, Kind: kind, KeyID: prepared.ID})
			}
			continue
		}
		prepareAt, activateAt := Thresholds(active)
		switch {
		case prepared == nil && !now.Before(prepareAt):
			p.Decisions = append(p.Decisions, Decision{Action: Prepare, Kind: kind})
		case prepared != nil && !now.Before(activateAt):
			p.Decisions = append(p.Decisions,
				Decision{Action: Activate, Kind: kind, KeyID: prepared.ID},
				Decision{Action: Retire, Kind: kind, KeyID: active.ID})
		case prepared == nil:
			next = earlier(next, prepareAt)
		default:
			next = earlier(next, activateAt)
		}
	}
	if len(p.Decisions) == 0 {
		p.Next = next
	}
	return p
}

// Thresholds returns when a successor of k is prepared (half its
// lifetime) and activated (when a sixth of its lifetime remains).
func Thresholds(k *datastore.CAKey) (prepareAt, activateAt time.Time) {
	life := k.NotAfter.Sub(k.NotBefore)
	return k.NotBefore.Add(life / 2), k.NotAfter.Add(-life / 6)
}

// Signing returns the key of kind that server self signs with at now: its
// own Active key with the latest NotAfter that has not expired, or nil.
// Tainted keys are never chosen.
func Signing(now time.Time, self string, keys []*datastore.CAKey, kind datastore.CAKeyKind) *datastore.CAKey {
	return newest(now, self, keys, kind, datastore.CAKeyActive)
}

func newest(now time.Time, self string, keys []*datastore.CAKey, kind datastore.CAKeyKind, state datastore.CAKeyState) *datastore.CAKey {
	var best *datastore.CAKey
	for _, k := range keys {
		if k.ServerID != self || k.Kind != kind || k.State != state || expired(now, k) {
			continue
		}
		// Ties go to the larger ID, so the choice does not depend on order.
		if best == nil || k.NotAfter.After(best.NotAfter) || k.NotAfter.Equal(best.NotAfter) && k.ID > best.ID {
			best = k
		}
	}
	return best
}

// Published reports whether k belongs in the trust bundle at now: every
// key that has not expired, whatever its owner or state.
func Published(now time.Time, k *datastore.CAKey) bool { return !expired(now, k) }

func expired(now time.Time, k *datastore.CAKey) bool { return !now.Before(k.NotAfter) }

func earlier(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// dropped returns the IDs a plan drops.
func (p Plan) dropped() []string {
	var ids []string
	for _, d := range p.Decisions {
		if d.Action == Drop {
			ids = append(ids, d.KeyID)
		}
	}
	slices.Sort(ids)
	return ids
}
