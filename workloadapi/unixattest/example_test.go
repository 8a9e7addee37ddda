//go:build linux

package unixattest_test

import (
	"context"
	"fmt"
	"os"

	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/peercred"
	"writ.dev/writ/workloadapi/unixattest"
)

func Example() {
	a := unixattest.New(unixattest.Config{})

	// A Workload API server gets cred from peercred.FromConn (or calls
	// a.PinConn) as soon as it accepts a connection; this example attests
	// itself.
	cred := peercred.Cred{PID: int32(os.Getpid()), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	p, err := a.Pin(cred)
	if err != nil {
		fmt.Println("permission denied:", err)
		return
	}
	defer p.Close() // with the connection

	// On every call on the connection: Selectors checks, then answers.
	sel, err := p.Selectors(context.Background())
	if err != nil {
		fmt.Println("permission denied:", err)
		return
	}
	want, _ := entry.ParseSelector(fmt.Sprintf("unix:uid:%d", os.Geteuid()))
	fmt.Println(entry.Match([]entry.Selector{want}, sel))
	// Output: true
}
