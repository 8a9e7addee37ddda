//go:build !(linux || darwin || dragonfly || freebsd || netbsd || openbsd)

package main

func isTerminal(uintptr) bool { return false }
