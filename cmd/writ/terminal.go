package main

import (
	"io"
	"os"
)

// terminalOf returns w if it is a terminal, else nil. Progress is shown
// only on terminals, so that logs and pipes get no carriage returns.
func terminalOf(w io.Writer) io.Writer {
	switch w := w.(type) {
	case interface{ IsTerminal() bool }:
		if w.IsTerminal() {
			return w.(io.Writer)
		}
	case *os.File:
		if isTerminal(w.Fd()) {
			return w
		}
	}
	return nil
}
