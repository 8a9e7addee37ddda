// Package pidns lets a test make a process take the PID of one that has
// exited, deterministically: the test runs again, alone, as the first
// process of a new PID namespace with its own /proc, where it chooses
// the next PID (/proc/sys/kernel/ns_last_pid). Tests use it to check
// that a connection whose process exited answers nothing to a process
// that took the same PID, with the same uid and executable.
//
//	func TestMain(m *testing.M) {
//		pidns.HoldIfAsked() // the impostors StartImpostor starts
//		os.Exit(m.Run())
//	}
//
//	func TestReusedPID(t *testing.T) {
//		if !pidns.Enter(t) {
//			return // ran in the namespace; its result is this test's
//		}
//		// In the namespace, as PID 1: start a child, let it connect and
//		// exit, reap it, then
//		pidns.StartImpostor(t, childPID)
//		...
//	}
//
// # Caveats
//
//   - It needs CAP_SYS_ADMIN (root): without it, or where /proc cannot
//     be mounted, the test is skipped with the reason, except in CI
//     (CI set), which runs as root, where it fails.
//   - Linux only. In the namespace, no other process may be started while
//     StartAt runs, or it may take the PID first (StartAt then fails).
package pidns
