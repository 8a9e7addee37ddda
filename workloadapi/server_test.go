package workloadapi_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"writ.dev/writ/agent/svidcache"
	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/passconn"
	"writ.dev/writ/workloadapi"
	"writ.dev/writ/workloadapi/unixattest"
)

// TestGoSpiffeClient drives the server with go-spiffe's own client: the
// one-shot calls, the sources and the watchers.
func TestGoSpiffeClient(t *testing.T) {
	e := newEnv(t)
	b := e.add("/b")
	a := e.add("/a")
	e.add("/not-mine", "unix:uid:4242424")
	svidA, _ := e.cache.X509SVID(a.ID)
	ctx := ctxTimeout(t, 30*time.Second)
	c := e.client()

	t.Run("FetchX509SVID", func(t *testing.T) {
		s, err := spiffewl.FetchX509SVID(ctx, spiffewl.WithAddr(e.addr))
		if err != nil {
			t.Fatal(err)
		}
		// The default SVID is the first: the cache orders by SPIFFE ID.
		if s.ID != a.SPIFFEID {
			t.Errorf("default SVID %s, want %s", s.ID, a.SPIFFEID)
		}
		if !bytes.Equal(s.Certificates[0].Raw, svidA.Leaf().Raw) {
			t.Error("leaf differs from the cache's")
		}
		der, err := x509.MarshalPKCS8PrivateKey(s.PrivateKey)
		if err != nil || !bytes.Equal(der, svidA.PrivateKeyDER) {
			t.Errorf("key differs from the cache's: %v", err)
		}
	})
	t.Run("FetchX509SVIDs", func(t *testing.T) {
		svids, err := c.FetchX509SVIDs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got []spiffeid.ID
		for _, s := range svids {
			got = append(got, s.ID)
		}
		if want := []spiffeid.ID{a.SPIFFEID, b.SPIFFEID}; !slices.Equal(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
	})
	t.Run("FetchX509Context", func(t *testing.T) {
		xc, err := c.FetchX509Context(ctx)
		if err != nil {
			t.Fatal(err)
		}
		xb, err := xc.Bundles.GetX509BundleForTrustDomain(td)
		if err != nil {
			t.Fatal(err)
		}
		if !xb.Equal(x509bundle.FromX509Authorities(td, e.ca.bundle.X509Authorities())) {
			t.Error("bundle differs")
		}
		// The SVIDs verify against it.
		if _, _, err := x509svid.Verify(xc.SVIDs[0].Certificates, xc.Bundles); err != nil {
			t.Error(err)
		}
	})
	t.Run("FetchX509Bundles", func(t *testing.T) {
		set, err := c.FetchX509Bundles(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if set.Len() != 1 || !set.Has(td) {
			t.Errorf("bundles %v", set.Bundles())
		}
	})
	t.Run("FetchJWTBundles", func(t *testing.T) {
		set, err := c.FetchJWTBundles(ctx)
		if err != nil {
			t.Fatal(err)
		}
		jb, err := set.GetJWTBundleForTrustDomain(td)
		if err != nil {
			t.Fatal(err)
		}
		if !jb.Equal(jwtbundle.FromJWTAuthorities(td, e.ca.bundle.JWTAuthorities())) {
			t.Errorf("JWT bundle %v", jb.JWTAuthorities())
		}
	})
	t.Run("JWT", func(t *testing.T) {
		svid, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db", ExtraAudiences: []string{"cache"}})
		if err != nil {
			t.Fatal(err)
		}
		if svid.ID != a.SPIFFEID || !slices.Equal(svid.Audience, []string{"cache", "db"}) {
			t.Errorf("JWT-SVID %s for %v", svid.ID, svid.Audience)
		}
		all, err := c.FetchJWTSVIDs(ctx, jwtsvid.Params{Audience: "db"})
		if err != nil || len(all) != 2 || all[1].ID != b.SPIFFEID {
			t.Fatalf("FetchJWTSVIDs = %v, %v", all, err)
		}
		one, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db", Subject: b.SPIFFEID})
		if err != nil || one.ID != b.SPIFFEID {
			t.Fatalf("FetchJWTSVID(%s) = %v, %v", b.SPIFFEID, one, err)
		}
		v, err := c.ValidateJWTSVID(ctx, one.Marshal(), "db")
		if err != nil || v.ID != b.SPIFFEID {
			t.Fatalf("ValidateJWTSVID = %v, %v", v, err)
		}
		// go-spiffe's own validation with the served bundle agrees.
		set, err := c.FetchJWTBundles(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := jwtsvid.ParseAndValidate(one.Marshal(), set, []string{"db"}); err != nil {
			t.Error(err)
		}
	})
	t.Run("X509Source", func(t *testing.T) {
		src, err := spiffewl.NewX509Source(ctx, spiffewl.WithClientOptions(spiffewl.WithAddr(e.addr)))
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		s, err := src.GetX509SVID()
		if err != nil || s.ID != a.SPIFFEID {
			t.Fatalf("GetX509SVID = %v, %v", s, err)
		}
		// A rotation reaches the source.
		e.sign(a, 2*time.Hour)
		if err := src.WaitUntilUpdated(ctx); err != nil {
			t.Fatal(err)
		}
		s2, _ := src.GetX509SVID()
		if s2.Certificates[0].SerialNumber.Cmp(s.Certificates[0].SerialNumber) == 0 {
			t.Error("source still has the old SVID")
		}
	})
	t.Run("JWTSource", func(t *testing.T) {
		src, err := spiffewl.NewJWTSource(ctx, spiffewl.WithClientOptions(spiffewl.WithAddr(e.addr)))
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		svid, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := jwtsvid.ParseAndValidate(svid.Marshal(), src, []string{"db"}); err != nil {
			t.Error(err)
		}
	})
	t.Run("BundleSource", func(t *testing.T) {
		src, err := spiffewl.NewBundleSource(ctx, spiffewl.WithClientOptions(spiffewl.WithAddr(e.addr)))
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		sb, err := src.GetBundleForTrustDomain(td)
		if err != nil {
			t.Fatal(err)
		}
		if len(sb.X509Authorities()) != 1 || len(sb.JWTAuthorities()) != 1 {
			t.Errorf("bundle %d X.509 and %d JWT authorities", len(sb.X509Authorities()), len(sb.JWTAuthorities()))
		}
	})
	t.Run("WatchX509Context", func(t *testing.T) {
		w := newX509Watcher()
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- c.WatchX509Context(wctx, w) }()
		first := w.next(t)
		if len(first.SVIDs) != 2 {
			t.Fatalf("%d SVIDs", len(first.SVIDs))
		}
		z := e.add("/z")
		second := w.next(t)
		if len(second.SVIDs) != 3 || second.SVIDs[2].ID != z.SPIFFEID {
			t.Fatalf("after adding /z: %d SVIDs", len(second.SVIDs))
		}
		e.remove(z)
		if third := w.next(t); len(third.SVIDs) != 2 {
			t.Fatalf("after removing /z: %d SVIDs", len(third.SVIDs))
		}
		cancel()
		<-done
	})
	t.Run("WatchJWTBundles", func(t *testing.T) {
		w := &jwtWatcher{ch: make(chan *jwtbundle.Set, 8)}
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- c.WatchJWTBundles(wctx, w) }()
		first := <-w.ch
		if jb, _ := first.GetJWTBundleForTrustDomain(td); len(jb.JWTAuthorities()) != 1 {
			t.Fatal("first JWT bundle")
		}
		nb := e.ca.bundle.Clone()
		other := newTestCA(t, time.Now())
		if err := nb.AddJWTAuthority("k2", other.jwtKey.Signer.Public()); err != nil {
			t.Fatal(err)
		}
		e.cache.Apply(svidcache.Update{Bundle: nb})
		select {
		case second := <-w.ch:
			if jb, _ := second.GetJWTBundleForTrustDomain(td); len(jb.JWTAuthorities()) != 2 {
				t.Fatal("JWT bundle not updated")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no update")
		}
		cancel()
		<-done
	})
}

type x509Watcher struct{ ch chan *spiffewl.X509Context }

func newX509Watcher() *x509Watcher { return &x509Watcher{ch: make(chan *spiffewl.X509Context, 16)} }

func (w *x509Watcher) OnX509ContextUpdate(c *spiffewl.X509Context) { w.ch <- c }
func (w *x509Watcher) OnX509ContextWatchError(error)               {}
func (w *x509Watcher) next(t *testing.T) *spiffewl.X509Context {
	t.Helper()
	select {
	case c := <-w.ch:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no X.509 context update")
	}
	return nil
}

type jwtWatcher struct{ ch chan *jwtbundle.Set }

func (w *jwtWatcher) OnJWTBundlesUpdate(s *jwtbundle.Set) { w.ch <- s }
func (w *jwtWatcher) OnJWTBundlesWatchError(error)        {}

// TestSecurityHeader: without exactly one "workload.spiffe.io: true",
// every method, streams and reflection included, answers InvalidArgument
// before attestation: the caller here has no identity, so attestation
// would answer PermissionDenied.
func TestSecurityHeader(t *testing.T) {
	e := newEnv(t)
	c, conn := e.raw()
	refl := reflectionpb.NewServerReflectionClient(conn)
	for _, tc := range []struct {
		name string
		md   metadata.MD
	}{
		{"missing", nil},
		{"false", metadata.Pairs(workloadapi.SecurityHeader, "false")},
		{"TRUE", metadata.Pairs(workloadapi.SecurityHeader, "TRUE")},
		{"empty", metadata.Pairs(workloadapi.SecurityHeader, "")},
		{"two values", metadata.Pairs(workloadapi.SecurityHeader, "true", workloadapi.SecurityHeader, "true")},
		{"comma list", metadata.Pairs(workloadapi.SecurityHeader, "true,true")},
		{"other key", metadata.Pairs("workload-spiffe-io", "true")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := metadata.NewOutgoingContext(ctxTimeout(t, 10*time.Second), tc.md)
			_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
			wantCode(t, err, codes.InvalidArgument)
			_, err = c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: "x"})
			wantCode(t, err, codes.InvalidArgument)
			s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
			if err == nil {
				_, err = s.Recv()
			}
			wantCode(t, err, codes.InvalidArgument)
			xb, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
			if err == nil {
				_, err = xb.Recv()
			}
			wantCode(t, err, codes.InvalidArgument)
			jb, err := c.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
			if err == nil {
				_, err = jb.Recv()
			}
			wantCode(t, err, codes.InvalidArgument)
			ws, err := c.FetchWITSVID(ctx, &workload.WITSVIDRequest{})
			if err == nil {
				_, err = ws.Recv()
			}
			wantCode(t, err, codes.InvalidArgument)
			rs, err := refl.ServerReflectionInfo(ctx)
			if err == nil {
				rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
				_, err = rs.Recv()
			}
			wantCode(t, err, codes.InvalidArgument)
		})
	}
	t.Run("present", func(t *testing.T) {
		_, err := c.FetchJWTSVID(withHeader(ctxTimeout(t, 10*time.Second)), &workload.JWTSVIDRequest{Audience: []string{"a"}})
		wantCode(t, err, codes.PermissionDenied)
	})
}

// TestNoIdentity: a caller that matches no entry is refused promptly on
// every method, streams included.
func TestNoIdentity(t *testing.T) {
	e := newEnv(t)
	e.add("/someone-else", "unix:uid:4242424")
	c, _ := e.raw()
	ctx := withHeader(ctxTimeout(t, 10*time.Second))
	start := time.Now()
	s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	wantCode(t, err, codes.PermissionDenied)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("PermissionDenied took %v", d)
	}
	_, err = c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
	wantCode(t, err, codes.PermissionDenied)
	xb, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
	if err == nil {
		_, err = xb.Recv()
	}
	wantCode(t, err, codes.PermissionDenied)
	jb, err := c.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
	if err == nil {
		_, err = jb.Recv()
	}
	wantCode(t, err, codes.PermissionDenied)
	tok := e.ca.jwt(t, time.Now(), spiffeid.RequireFromPath(td, "/x"), []string{"a"}, time.Minute)
	_, err = c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: tok})
	wantCode(t, err, codes.PermissionDenied)

	// go-spiffe reports it as such.
	_, err = spiffewl.FetchX509SVID(ctx, spiffewl.WithAddr(e.addr))
	wantCode(t, err, codes.PermissionDenied)
}

// TestNoIdentityBeforeSync: before the agent has its entries, a caller
// that matches none is told to retry (Unavailable) on every method, and
// promptly; once it has them, it is refused.
func TestNoIdentityBeforeSync(t *testing.T) {
	synced := make(chan struct{})
	e := newEnv(t, withConfig(func(c *workloadapi.Config) { c.Synced = synced }))
	c, _ := e.raw()
	ctx := withHeader(ctxTimeout(t, 10*time.Second))
	tok := e.ca.jwt(t, time.Now(), spiffeid.RequireFromPath(td, "/x"), []string{"a"}, time.Minute)
	calls := map[string]func() error{
		"FetchX509SVID": func() error {
			s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
			if err == nil {
				_, err = s.Recv()
			}
			return err
		},
		"FetchJWTSVID": func() error {
			_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
			return err
		},
		"FetchJWTSVID for an ID": func() error {
			_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}, SpiffeId: "spiffe://example.org/a"})
			return err
		},
		"FetchX509Bundles": func() error {
			s, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
			if err == nil {
				_, err = s.Recv()
			}
			return err
		},
		"FetchJWTBundles": func() error {
			s, err := c.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
			if err == nil {
				_, err = s.Recv()
			}
			return err
		},
		"ValidateJWTSVID": func() error {
			_, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: tok})
			return err
		},
	}
	for _, want := range []codes.Code{codes.Unavailable, codes.PermissionDenied} {
		for name, call := range calls {
			start := time.Now()
			err := call()
			if got := status.Code(err); got != want {
				t.Errorf("%s: %v (%v), want %v", name, got, err, want)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("%s took %v", name, d)
			}
		}
		if want == codes.Unavailable {
			close(synced)
		}
	}
	// The caller's first entry, once synced, is served.
	e.add("/a")
	if _, err := spiffewl.FetchX509SVID(ctx, spiffewl.WithAddr(e.addr)); err != nil {
		t.Fatal(err)
	}
}

// TestVerifiersWithoutIdentity: with AllowVerifiersWithoutIdentity, a
// caller without identity gets bundles and validation, but no SVID.
func TestVerifiersWithoutIdentity(t *testing.T) {
	e := newEnv(t, withConfig(func(c *workloadapi.Config) { c.AllowVerifiersWithoutIdentity = true }))
	c, _ := e.raw()
	ctx := withHeader(ctxTimeout(t, 10*time.Second))
	xb, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := xb.Recv()
	if err != nil || len(resp.GetBundles()) != 1 {
		t.Fatalf("X.509 bundles %v, %v", resp, err)
	}
	tok := e.ca.jwt(t, time.Now(), spiffeid.RequireFromPath(td, "/x"), []string{"a"}, time.Minute)
	v, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: tok})
	if err != nil || v.GetSpiffeId() != "spiffe://example.org/x" {
		t.Fatalf("ValidateJWTSVID = %v, %v", v, err)
	}
	s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	wantCode(t, err, codes.PermissionDenied)
}

// TestOtherUser: a process of another user is identified by its own uid:
// refused while only this user has entries, served once its uid has one.
func TestOtherUser(t *testing.T) {
	uid, gid := testUser(t)
	e := newEnv(t, withPublicDir())
	e.add("/mine")
	bin := publicBin(t)
	run := func() string {
		t.Helper()
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), envChild+"=fetch", envAddr+"="+e.addr)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{gid}}, Pdeathsig: syscall.SIGKILL}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("child: %v: %s", err, stderr.String())
		}
		return string(out)
	}
	if got, want := run(), "x509 PermissionDenied 0\njwt PermissionDenied\nbundles PermissionDenied\n"; got != want {
		t.Errorf("without an entry:\n%s\nwant\n%s", got, want)
	}
	e.add("/theirs", fmt.Sprintf("unix:uid:%d", uid))
	if got, want := run(), "x509 OK 1\njwt OK\nbundles OK\n"; got != want {
		t.Errorf("with an entry:\n%s\nwant\n%s", got, want)
	}
}

// TestStreamUpdates: an open FetchX509SVID stream gets a message with the
// full current set on every change, within milliseconds.
func TestStreamUpdates(t *testing.T) {
	e := newEnv(t)
	a := e.add("/a")
	c, _ := e.raw()
	s, err := c.FetchX509SVID(withHeader(ctxTimeout(t, 30*time.Second)), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ch := recvLoop[workload.X509SVIDResponse](s)
	first := next(t, ch)
	if first.err != nil || !slices.Equal(svidIDs(first.msg), []string{"spiffe://example.org/a"}) {
		t.Fatalf("first: %v %v", svidIDs(first.msg), first.err)
	}

	// Create: both, in order.
	start := time.Now()
	b := e.add("/b")
	r := next(t, ch)
	lat := time.Since(start)
	if !slices.Equal(svidIDs(r.msg), []string{"spiffe://example.org/a", "spiffe://example.org/b"}) {
		t.Fatalf("after create: %v %v", svidIDs(r.msg), r.err)
	}
	t.Logf("create -> message: %v", lat)
	if lat > time.Second {
		t.Errorf("create took %v to reach the stream", lat)
	}

	// Rotation: a new certificate, the rest unchanged.
	oldSerial := leafSerial(t, r.msg.Svids[0])
	e.sign(a, 2*time.Hour)
	r = next(t, ch)
	if len(r.msg.GetSvids()) != 2 || leafSerial(t, r.msg.Svids[0]) == oldSerial {
		t.Fatalf("after rotation: %v", svidIDs(r.msg))
	}

	// Delete: the SVID is redacted from the next message.
	start = time.Now()
	e.remove(b)
	r = next(t, ch)
	if !slices.Equal(svidIDs(r.msg), []string{"spiffe://example.org/a"}) {
		t.Fatalf("after delete: %v %v", svidIDs(r.msg), r.err)
	}
	t.Logf("delete -> message: %v", time.Since(start))

	// A changed SPIFFE ID drops the old SVID at once; the new one
	// follows when signed.
	a2 := a.Clone()
	a2.SPIFFEID = spiffeid.RequireFromPath(td, "/a2")
	e.cache.Apply(svidcache.Update{Entries: []*entry.Entry{a2}})
	r = next(t, ch)
	wantCode(t, r.err, codes.PermissionDenied)
}

func leafSerial(t *testing.T, s *workload.X509SVID) string {
	t.Helper()
	certs, err := x509.ParseCertificates(s.GetX509Svid())
	if err != nil {
		t.Fatal(err)
	}
	return certs[0].SerialNumber.String()
}

// TestStreamLastSVIDRemoved: losing the last identity ends the stream
// with PermissionDenied (go-spiffe treats a message without SVIDs as an
// error).
func TestStreamLastSVIDRemoved(t *testing.T) {
	e := newEnv(t)
	a := e.add("/a")
	c, _ := e.raw()
	s, err := c.FetchX509SVID(withHeader(ctxTimeout(t, 30*time.Second)), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ch := recvLoop[workload.X509SVIDResponse](s)
	if r := next(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
	e.remove(a)
	wantCode(t, next(t, ch).err, codes.PermissionDenied)
}

// TestStreamWaitsForSigning: a caller whose entry is not signed yet waits
// for its SVID rather than being refused.
func TestStreamWaitsForSigning(t *testing.T) {
	e := newEnv(t)
	en := newEntry(t, "/pending", selfSelector())
	e.cache.Apply(svidcache.Update{Entries: []*entry.Entry{en}})
	c, _ := e.raw()
	s, err := c.FetchX509SVID(withHeader(ctxTimeout(t, 30*time.Second)), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ch := recvLoop[workload.X509SVIDResponse](s)
	// Once the stream follows the cache, whatever it sent before the
	// SVID was signed would come first.
	e.waitSubscriptions(1)
	e.sign(en, time.Hour)
	if r := next(t, ch); r.err != nil || len(r.msg.GetSvids()) != 1 {
		t.Fatalf("first message: %v %v; want the SVID signed while it waited", r.msg, r.err)
	}
}

// TestExpiredNeverSent: SVIDs leave the stream as they expire, by the
// injected clock; a new stream never gets an expired one.
func TestExpiredNeverSent(t *testing.T) {
	e := newEnv(t, withFakeClock())
	short := newEntry(t, "/short", selfSelector())
	long := newEntry(t, "/long", selfSelector())
	e.cache.Apply(svidcache.Update{Entries: []*entry.Entry{short, long}})
	e.sign(short, 10*time.Minute)
	e.sign(long, time.Hour)
	c, _ := e.raw()
	s, err := c.FetchX509SVID(withHeader(ctxTimeout(t, 30*time.Second)), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ch := recvLoop[workload.X509SVIDResponse](s)
	if r := next(t, ch); len(r.msg.GetSvids()) != 2 {
		t.Fatalf("first: %v %v", svidIDs(r.msg), r.err)
	}

	// The cache's expiry loop (Run) has a timer for the first expiry.
	if err := e.fake.WaitForTimers(ctxTimeout(t, 10*time.Second), 1); err != nil {
		t.Fatal(err)
	}
	e.fake.Advance(10*time.Minute + time.Second)
	r := next(t, ch)
	if !slices.Equal(svidIDs(r.msg), []string{"spiffe://example.org/long"}) {
		t.Fatalf("after the first expiry: %v %v", svidIDs(r.msg), r.err)
	}

	// Before Run notices the second expiry, a new stream still gets
	// nothing expired: reads filter by the clock.
	e.fake.Set(e.fake.Now().Add(time.Hour))
	s2, err := c.FetchX509SVID(withHeader(ctxTimeout(t, 30*time.Second)), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ch2 := recvLoop[workload.X509SVIDResponse](s2)
	// The open stream is told it lost its last SVID.
	wantCode(t, next(t, ch).err, codes.PermissionDenied)
	// Entitled but nothing valid: the new stream waits, sending nothing,
	// so its first message is the SVID signed once it follows the cache.
	e.waitSubscriptions(1)
	fresh := e.sign(long, time.Hour)
	r = next(t, ch2)
	if r.err != nil || len(r.msg.GetSvids()) != 1 || leafSerial(t, r.msg.Svids[0]) != fresh.Leaf().SerialNumber.String() {
		t.Fatalf("first message of the new stream: %v %v; want only the fresh SVID", svidIDs(r.msg), r.err)
	}
}

// TestBundleStreams: bundle streams send the bundle at once and again on
// every change; the JWT bundle holds only JWT authorities, each with its
// kid.
func TestBundleStreams(t *testing.T) {
	e := newEnv(t)
	e.add("/a")
	c, _ := e.raw()
	ctx := withHeader(ctxTimeout(t, 30*time.Second))
	xs, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	js, err := c.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	xch := recvLoop[workload.X509BundlesResponse](xs)
	jch := recvLoop[workload.JWTBundlesResponse](js)
	x := next(t, xch)
	if x.err != nil || !bytes.Equal(x.msg.GetBundles()["spiffe://example.org"], e.ca.iss.Cert.Raw) || len(x.msg.GetBundles()) != 1 {
		t.Fatalf("X.509 bundles %v %v", x.msg, x.err)
	}
	j := next(t, jch)
	if j.err != nil || len(j.msg.GetBundles()) != 1 {
		t.Fatalf("JWT bundles %v %v", j.msg, j.err)
	}
	var jwks struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(j.msg.GetBundles()["spiffe://example.org"], &jwks); err != nil {
		t.Fatal(err)
	}
	if len(jwks.Keys) != 1 || jwks.Keys[0]["kid"] != jwtKeyID || jwks.Keys[0]["x5c"] != nil {
		t.Fatalf("JWKS %v", jwks)
	}

	// A new CA certificate reaches both streams.
	other := newTestCA(t, time.Now())
	nb := e.ca.bundle.Clone()
	nb.AddX509Authority(other.iss.Cert)
	e.cache.Apply(svidcache.Update{Bundle: nb})
	x = next(t, xch)
	if got, err := x509.ParseCertificates(x.msg.GetBundles()["spiffe://example.org"]); err != nil || len(got) != 2 {
		t.Fatalf("updated X.509 bundle: %d, %v", len(got), err)
	}
	if j := next(t, jch); j.err != nil {
		t.Fatal(j.err)
	}
	// An equal bundle changes nothing: the next message is that of the
	// next real change.
	e.cache.Apply(svidcache.Update{Bundle: nb.Clone()})
	third := newTestCA(t, time.Now())
	nb3 := nb.Clone()
	nb3.AddX509Authority(third.iss.Cert)
	e.cache.Apply(svidcache.Update{Bundle: nb3})
	x = next(t, xch)
	if got, err := x509.ParseCertificates(x.msg.GetBundles()["spiffe://example.org"]); err != nil || len(got) != 3 {
		t.Fatalf("after an equal bundle and a new one: %d authorities, %v; want 3 (the equal bundle sent nothing)", len(got), err)
	}
}

// TestFetchJWTSVID covers the request checks and entitlement rules.
// TestFetchJWTSVIDAllIdentitiesAtOnce: a caller asking for all its
// identities has their tokens signed concurrently (so that the agent
// sends them to the server in one batch), each under its own ID.
func TestFetchJWTSVIDAllIdentitiesAtOnce(t *testing.T) {
	e := newEnv(t)
	for _, p := range []string{"/a", "/b", "/c", "/d"} {
		e.add(p)
	}
	c, _ := e.raw()
	e.signer.together.Store(4)
	resp, err := c.FetchJWTSVID(withHeader(ctxTimeout(t, 30*time.Second)), &workload.JWTSVIDRequest{Audience: []string{"together"}})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range resp.GetSvids() {
		ids = append(ids, s.GetSpiffeId())
		svid, err := jwtsvid.ParseAndValidate(s.GetSvid(), e.ca.bundle, []string{"together"})
		if err != nil {
			t.Fatal(err)
		}
		if svid.ID.String() != s.GetSpiffeId() {
			t.Errorf("token of %s answered for %s", svid.ID, s.GetSpiffeId())
		}
	}
	if want := []string{"spiffe://example.org/a", "spiffe://example.org/b", "spiffe://example.org/c", "spiffe://example.org/d"}; !slices.Equal(ids, want) {
		t.Errorf("SPIFFE IDs %v, want %v", ids, want)
	}
}

func TestFetchJWTSVID(t *testing.T) {
	e := newEnv(t)
	a := e.add("/a")
	// Two entries with one SPIFFE ID give one JWT-SVID.
	dup := newEntry(t, "/a", selfSelector(), "unix:gid:0")
	if os.Getegid() == 0 {
		e.cache.Apply(svidcache.Update{Entries: []*entry.Entry{dup}})
	}
	e.add("/b")
	c, _ := e.raw()
	ctx := withHeader(ctxTimeout(t, 30*time.Second))

	for _, tc := range []struct {
		name string
		req  *workload.JWTSVIDRequest
		code codes.Code
		ids  []string
	}{
		{"all identities", &workload.JWTSVIDRequest{Audience: []string{"x"}}, codes.OK, []string{"spiffe://example.org/a", "spiffe://example.org/b"}},
		{"one identity", &workload.JWTSVIDRequest{Audience: []string{"x", "y"}, SpiffeId: "spiffe://example.org/b"}, codes.OK, []string{"spiffe://example.org/b"}},
		{"no audience", &workload.JWTSVIDRequest{}, codes.InvalidArgument, nil},
		{"empty audience", &workload.JWTSVIDRequest{Audience: []string{"x", ""}}, codes.InvalidArgument, nil},
		{"too many audiences", &workload.JWTSVIDRequest{Audience: slices.Repeat([]string{"x"}, 65)}, codes.InvalidArgument, nil},
		{"long audience", &workload.JWTSVIDRequest{Audience: []string{strings.Repeat("x", 2049)}}, codes.InvalidArgument, nil},
		{"malformed ID", &workload.JWTSVIDRequest{Audience: []string{"x"}, SpiffeId: "spiffe://Example.org/a"}, codes.InvalidArgument, nil},
		{"not canonical", &workload.JWTSVIDRequest{Audience: []string{"x"}, SpiffeId: "spiffe://example.org//a"}, codes.InvalidArgument, nil},
		{"not entitled", &workload.JWTSVIDRequest{Audience: []string{"x"}, SpiffeId: "spiffe://example.org/c"}, codes.PermissionDenied, nil},
		{"other trust domain", &workload.JWTSVIDRequest{Audience: []string{"x"}, SpiffeId: "spiffe://other.org/a"}, codes.PermissionDenied, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.FetchJWTSVID(ctx, tc.req)
			wantCode(t, err, tc.code)
			var ids []string
			for _, s := range resp.GetSvids() {
				ids = append(ids, s.GetSpiffeId())
				if s.GetHint() != "" {
					t.Errorf("hint %q", s.GetHint())
				}
				if _, err := jwtsvid.ParseAndValidate(s.GetSvid(), e.ca.bundle, tc.req.GetAudience()); err != nil {
					t.Error(err)
				}
			}
			if !slices.Equal(ids, tc.ids) {
				t.Errorf("SPIFFE IDs %v, want %v", ids, tc.ids)
			}
		})
	}

	t.Run("cached", func(t *testing.T) {
		before := e.signer.calls.Load()
		r1, err1 := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"cached"}, SpiffeId: a.SPIFFEID.String()})
		r2, err2 := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"cached"}, SpiffeId: a.SPIFFEID.String()})
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		if r1.Svids[0].Svid != r2.Svids[0].Svid || e.signer.calls.Load()-before != 1 {
			t.Errorf("signed %d times", e.signer.calls.Load()-before)
		}
	})
	t.Run("server unavailable", func(t *testing.T) {
		e.signer.setErr(fmt.Errorf("dial: %w", svidcache.ErrUnavailable))
		defer e.signer.setErr(nil)
		_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"new audience"}})
		wantCode(t, err, codes.Unavailable)
	})
}

// TestReflection: reflection lists the Workload API service.
func TestReflection(t *testing.T) {
	e := newEnv(t)
	_, conn := e.raw()
	rs, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(withHeader(ctxTimeout(t, 10*time.Second)))
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := rs.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	if !slices.Contains(names, "SpiffeWorkloadAPI") {
		t.Errorf("services %v", names)
	}
	// And it can describe it.
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "SpiffeWorkloadAPI"}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := rs.Recv(); err != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Errorf("FileContainingSymbol: %v %v", resp, err)
	}
}

// TestWITUnimplemented: the WIT-SVID profile is not provided.
func TestWITUnimplemented(t *testing.T) {
	e := newEnv(t)
	e.add("/a")
	c, _ := e.raw()
	s, err := c.FetchWITSVID(withHeader(ctxTimeout(t, 10*time.Second)), &workload.WITSVIDRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	wantCode(t, err, codes.Unimplemented)
}

// TestMessageLimits: requests over MaxRecvMsgSize are refused.
func TestMessageLimits(t *testing.T) {
	e := newEnv(t)
	e.add("/a")
	c, _ := e.raw()
	_, err := c.ValidateJWTSVID(withHeader(ctxTimeout(t, 10*time.Second)), &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: strings.Repeat("a", 70<<10)})
	wantCode(t, err, codes.ResourceExhausted)
}

// TestSlowReader: streams that are never read do not delay another
// caller's updates.
func TestSlowReader(t *testing.T) {
	e := newEnv(t)
	en := e.add("/a")
	ctx := withHeader(ctxTimeout(t, 60*time.Second))

	// The slow client opens streams and never reads them.
	slow, _ := e.raw()
	for range 20 {
		if _, err := slow.FetchX509SVID(ctx, &workload.X509SVIDRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	fast, _ := e.raw()
	s, err := fast.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	// Enough rotations to fill every slow stream's flow-control window
	// many times over.
	var last *svidcache.X509SVID
	start := time.Now()
	for range 300 {
		last = e.sign(en, time.Hour)
	}
	want := last.Leaf().SerialNumber.String()
	for {
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if leafSerial(t, r.Svids[0]) == want {
			break
		}
	}
	t.Logf("300 rotations delivered to the fast reader in %v", time.Since(start))
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("fast reader took %v", d)
	}
}

// TestConnectionLimit: connections beyond MaxConnections are closed at
// once; a slot frees when a connection closes.
func TestConnectionLimit(t *testing.T) {
	e := newEnv(t, withConfig(func(c *workloadapi.Config) { c.MaxConnections, c.MaxConnectionsPerUID = 2, 2 }))
	e.add("/a")
	hold := func() (func(), error) {
		c, conn := e.raw()
		ctx, cancel := context.WithTimeout(withHeader(context.Background()), 2*time.Second)
		s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		return func() { cancel(); conn.Close() }, err
	}
	r1, err1 := hold()
	r2, err2 := hold()
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	_, err := hold()
	wantCode(t, err, codes.Unavailable)
	r1()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r3, err := hold()
		if err == nil {
			r3()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot after a connection closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	r2()
}

// TestShutdown: Run returns once ctx ends, ending open streams with
// Unavailable, and removes the socket.
func TestShutdown(t *testing.T) {
	e := newEnv(t)
	e.add("/a")
	c, _ := e.raw()
	s, err := c.FetchX509SVID(withHeader(ctxTimeout(t, 30*time.Second)), &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ch := recvLoop[workload.X509SVIDResponse](s)
	if r := next(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
	if err := e.stop(); err != nil {
		t.Fatal(err)
	}
	wantCode(t, next(t, ch).err, codes.Unavailable)
	if _, err := os.Lstat(e.path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	if err := e.srv.Run(context.Background()); !errors.Is(err, workloadapi.ErrRunning) {
		t.Errorf("second Run: %v", err)
	}
}

// TestNoLeaks: after Run returns and clients are gone, every goroutine
// the server started has ended, and every file descriptor it opened (the
// socket, connections, pinned processes) is closed.
func TestNoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	fdsBefore := openFDs(t)
	t.Run("serve", func(t *testing.T) {
		e := newEnv(t)
		e.add("/a")
		c, _ := e.raw()
		ctx := withHeader(ctxTimeout(t, 10*time.Second))
		for range 3 {
			s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Recv(); err != nil {
				t.Fatal(err)
			}
			jb, err := c.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := jb.Recv(); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}}); err != nil {
			t.Fatal(err)
		}
		// Streams stay open: Run must end them.
	})
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
	for openFDs(t) > fdsBefore {
		if time.Now().After(deadline) {
			t.Fatalf("%d open file descriptors, %d before", openFDs(t), fdsBefore)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestPassedConnection: a connection handed to another process after its
// own process exited answers nothing, even to a process of the same uid.
func TestPassedConnection(t *testing.T) {
	e := newEnv(t)
	e.add("/a") // this uid is entitled
	ctl, theirs, err := passconn.Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), envChild+"=passconn", envAddr+"="+e.addr)
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	conn, err := passconn.Receive(ctl, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := passconn.Client(conn)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := workload.NewSpiffeWorkloadAPIClient(cc)
	ctx := withHeader(ctxTimeout(t, 10*time.Second))
	_, err = c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
	wantCode(t, err, codes.PermissionDenied)
	s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	wantCode(t, err, codes.PermissionDenied)
}

// failingAttestor pins nobody.
type failingAttestor struct{}

func (failingAttestor) PinConn(*net.UnixConn) (*unixattest.Process, error) {
	return nil, unixattest.ErrNoPID
}

// TestPinFailure: a connection whose process could not be pinned is kept,
// and every call on it is refused with PermissionDenied.
func TestPinFailure(t *testing.T) {
	e := newEnv(t, withConfig(func(c *workloadapi.Config) { c.Attestor = failingAttestor{} }))
	e.add("/a")
	c, _ := e.raw()
	ctx := withHeader(ctxTimeout(t, 10*time.Second))
	_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
	wantCode(t, err, codes.PermissionDenied)
	s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	wantCode(t, err, codes.PermissionDenied)
	// The header is still checked first.
	_, err = c.FetchJWTSVID(ctxTimeout(t, 10*time.Second), &workload.JWTSVIDRequest{Audience: []string{"a"}})
	wantCode(t, err, codes.InvalidArgument)
}

// recreatedCache answers the first FetchJWTSVID as if the entry had been
// removed after the caller's identities were looked up (a template
// instance collected, an entry re-created under a new ID).
type recreatedCache struct {
	workloadapi.Cache
	gone atomic.Bool
}

func (c *recreatedCache) FetchJWTSVID(ctx context.Context, entryID string, audience []string) (*svidcache.JWTSVID, error) {
	if c.gone.CompareAndSwap(false, true) {
		return nil, fmt.Errorf("%w: %s", svidcache.ErrUnknownEntry, entryID)
	}
	return c.Cache.FetchJWTSVID(ctx, entryID, audience)
}

// TestFetchJWTSVIDEntryGoneMeanwhile: a caller whose entry went between
// the lookup and the fetch is looked up once more, not refused.
func TestFetchJWTSVIDEntryGoneMeanwhile(t *testing.T) {
	var rc *recreatedCache
	e := newEnv(t, withConfig(func(c *workloadapi.Config) {
		rc = &recreatedCache{Cache: c.Cache}
		c.Cache = rc
	}))
	e.add("/a")
	c, _ := e.raw()
	resp, err := c.FetchJWTSVID(withHeader(ctxTimeout(t, 30*time.Second)), &workload.JWTSVIDRequest{Audience: []string{"x"}})
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if len(resp.GetSvids()) != 1 || resp.GetSvids()[0].GetSpiffeId() != "spiffe://example.org/a" || !rc.gone.Load() {
		t.Fatalf("got %v", resp.GetSvids())
	}
}
