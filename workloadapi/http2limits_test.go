package workloadapi_test

import (
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"writ.dev/writ/workloadapi"
)

// TestHTTP2Limits: the socket's HTTP/2 settings bound what one connection
// may ask of the agent, whatever client it uses: the calls open at once
// and the size of a call's headers.
func TestHTTP2Limits(t *testing.T) {
	e := newEnv(t)
	conn, err := net.Dial("unix", e.path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no SETTINGS frame from the server: %v", err)
		}
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			continue
		}
		want := map[http2.SettingID]uint32{
			http2.SettingMaxConcurrentStreams: workloadapi.DefaultMaxConcurrentStreams,
			http2.SettingMaxHeaderListSize:    16 << 10, // the server's maxHeaderListSize
		}
		for id, v := range want {
			if got, ok := sf.Value(id); !ok || got != v {
				t.Errorf("%v: %d (sent %v), want %d", id, got, ok, v)
			}
		}
		return
	}
}
