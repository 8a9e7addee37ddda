// Package integration runs the real writ binary: servers in temporary data
// directories, admin commands over real Unix sockets, restarts, crashes
// (SIGKILL) and bad input, as an operator would.
//
// TestMain builds the binary once (with the race detector when the tests
// run with it). Socket paths stay short because sun_path holds about 104
// bytes.
package integration
