// Package nodump keeps a process that holds private keys from writing
// them to a core file and from being read by another process of its own
// user.
//
// Disable sets the core-file size limit to zero, soft and hard, and on
// Linux marks the process non-dumpable (prctl PR_SET_DUMPABLE 0), which
// also refuses ptrace attachment and reads of its memory through /proc by
// other processes of the same uid. `writ server run`, `writ agent run`
// and `writ dev` call it at start. `writ helper run` does not: the
// key it holds is the one it writes to disk, the agent attests it by
// reading its executable from /proc, and the program it starts with
// --cmd would inherit the core-file limit.
package nodump
