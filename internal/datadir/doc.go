// Package datadir guards a Writ data directory: it creates it 0700
// whatever the umask, refuses to use one (or a file in one) that other
// users could read or write, holds an exclusive lock so that a second
// server or agent on the same directory fails fast, and writes files
// atomically and durably.
//
//	d, err := datadir.Open("/var/lib/writ")
//	if err != nil { return err } // errors.Is(err, datadir.ErrInUse), datadir.ErrPermissions
//	defer d.Close()
//	err = datadir.WriteFile(d.Join("agent.key"), pemBytes)
//
// The lock is an flock(2) on a file in the directory: it is released by
// the kernel when the process exits, so a crashed process never leaves a
// stale lock behind.
package datadir
