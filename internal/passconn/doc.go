// Package passconn hands an open Unix-socket connection from one process
// to another (SCM_RIGHTS) and makes a gRPC client over a connection that
// is already open. Tests use it to play a caller whose connection outlives
// or leaves the process that opened it: the Workload API must answer such
// a connection nothing.
//
// The sending side, typically a child process, calls Send once the server
// has pinned it; the receiving side calls Receive, then Client.
package passconn
