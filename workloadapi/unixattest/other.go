//go:build !linux

package unixattest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"

	"writ.dev/writ/ca/entry"
	"writ.dev/writ/internal/peercred"
)

// Process is a process pinned at connect time. Only Linux can pin one.
type Process struct {
	cred peercred.Cred
}

var errUnsupported = fmt.Errorf("unixattest: workload attestation on %s: %w", runtime.GOOS, errors.ErrUnsupported)

// Pin is not implemented on this OS: it returns an error wrapping
// errors.ErrUnsupported.
func (a *Attestor) Pin(peercred.Cred) (*Process, error) { return nil, errUnsupported }

// PinConn is not implemented on this OS: it returns an error wrapping
// errors.ErrUnsupported.
func (a *Attestor) PinConn(*net.UnixConn) (*Process, error) { return nil, errUnsupported }

// Check returns ErrClosed: no Process exists on this OS.
func (p *Process) Check() error { return ErrClosed }

// Selectors returns ErrClosed: no Process exists on this OS.
func (p *Process) Selectors(context.Context) ([]entry.Selector, error) { return nil, ErrClosed }

// Close does nothing.
func (p *Process) Close() error { return nil }
