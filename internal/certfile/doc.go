// Package certfile serves a TLS certificate and key from files and
// reloads them when they change, so that an operator (or a certificate
// tool) can replace them without restarting Writ. A replacement that does
// not load (half written, or a key that does not match) is logged and the
// previous pair kept.
package certfile
