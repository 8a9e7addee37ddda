package nodeapi

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"google.golang.org/grpc/peer"
)

func TestAttestLimiter(t *testing.T) {
	l := newAttestLimiter(3, 2)
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("2001:db8::1")
	take := func(src netip.Addr, wantOK, wantPerSource bool) func() {
		t.Helper()
		release, ok, perSource := l.acquire(src)
		if ok != wantOK || perSource != wantPerSource {
			t.Fatalf("acquire(%s) = ok %v, per source %v; want %v, %v", src, ok, perSource, wantOK, wantPerSource)
		}
		return release
	}
	ra := take(a, true, false)
	take(a, true, false)
	take(a, false, true)
	rb := take(b, true, false)
	take(c, false, false)
	// Releasing twice gives back one slot.
	rb()
	rb()
	take(c, true, false)
	take(b, false, false)
	ra()
	take(b, true, false)
	if l.total != 3 || len(l.bySource) != 3 {
		t.Errorf("total %d, %d sources; want 3, 3", l.total, len(l.bySource))
	}
}

func TestSourceAddr(t *testing.T) {
	for _, tc := range []struct {
		name string
		addr net.Addr
		want string
	}{
		{"ipv4", &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 1}, "192.0.2.1"},
		{"ipv4 in ipv6", &net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.1"), Port: 2}, "192.0.2.1"},
		{"ipv6 zone", &net.TCPAddr{IP: net.ParseIP("fe80::1"), Zone: "eth0", Port: 3}, "fe80::"},
		{"ipv6 counted by /64", &net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), Port: 4}, "2001:db8:1:2::"},
		{"ipv6 other /64", &net.TCPAddr{IP: net.ParseIP("2001:db8:1:3::1"), Port: 5}, "2001:db8:1:3::"},
		{"not a TCPAddr", fakeAddr("[2001:db8::7]:443"), "2001:db8::"},
		{"unix", &net.UnixAddr{Name: "/run/x.sock", Net: "unix"}, "invalid IP"},
		{"none", nil, "invalid IP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: tc.addr})
			if got := sourceAddr(ctx).String(); got != tc.want {
				t.Errorf("sourceAddr = %s, want %s", got, tc.want)
			}
		})
	}
}

// fakeAddr is a net.Addr of another type than *net.TCPAddr.
type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }
