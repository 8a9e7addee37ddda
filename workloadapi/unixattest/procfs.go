package unixattest

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Bounds on what is read from procfs. /proc/<pid>/status is about 1.5 KiB,
// plus up to 11 bytes per supplementary group; /proc/<pid>/stat is one line
// of at most 52 numbers and a name of at most 64 bytes.
const (
	maxStatusSize = 1 << 20
	maxStatSize   = 4096
	// maxGroups is the kernel's NGROUPS_MAX.
	maxGroups = 65536
)

// errProcFormat is wrapped by the parsers' errors.
var errProcFormat = errors.New("unexpected procfs format")

func procFormat(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errProcFormat, fmt.Sprintf(format, args...))
}

// procStatus is what attestation needs from /proc/<pid>/status.
type procStatus struct {
	// UID and GID are the real, effective, saved set and filesystem ids.
	UID, GID [4]uint32
	// Groups are the supplementary group ids, in the kernel's order.
	Groups []uint32
}

// parseStatus parses /proc/<pid>/status. The Uid, Gid and Groups lines must
// each appear exactly once; other lines are ignored. The process name is
// escaped by the kernel, so it cannot forge a line, and a repeated line is
// an error rather than a choice.
func parseStatus(b []byte) (procStatus, error) {
	var (
		st                         procStatus
		seenUID, seenGID, seenGrps bool
	)
	for line := range strings.SplitSeq(string(b), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var err error
		switch key {
		case "Uid":
			if seenUID {
				return procStatus{}, procFormat("status has two Uid lines")
			}
			seenUID = true
			st.UID, err = parseIDQuad(val)
		case "Gid":
			if seenGID {
				return procStatus{}, procFormat("status has two Gid lines")
			}
			seenGID = true
			st.GID, err = parseIDQuad(val)
		case "Groups":
			if seenGrps {
				return procStatus{}, procFormat("status has two Groups lines")
			}
			seenGrps = true
			st.Groups, err = parseGroups(val)
		}
		if err != nil {
			return procStatus{}, fmt.Errorf("status %s line: %w", key, err)
		}
	}
	if !seenUID || !seenGID || !seenGrps {
		return procStatus{}, procFormat("status lacks a Uid, Gid or Groups line")
	}
	return st, nil
}

func parseIDQuad(s string) ([4]uint32, error) {
	var ids [4]uint32
	i := 0
	for f := range strings.FieldsSeq(s) {
		if i == len(ids) {
			return ids, procFormat("more than %d ids", len(ids))
		}
		id, err := parseID(f)
		if err != nil {
			return ids, err
		}
		ids[i] = id
		i++
	}
	if i != len(ids) {
		return ids, procFormat("%d ids, want %d", i, len(ids))
	}
	return ids, nil
}

func parseGroups(s string) ([]uint32, error) {
	var groups []uint32
	for f := range strings.FieldsSeq(s) {
		if len(groups) == maxGroups {
			return nil, procFormat("more than %d groups", maxGroups)
		}
		id, err := parseID(f)
		if err != nil {
			return nil, err
		}
		groups = append(groups, id)
	}
	return groups, nil
}

// parseID parses a uid or gid as the kernel prints it: decimal, no sign, no
// leading zeros.
func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || (len(s) > 1 && s[0] == '0') {
		return 0, procFormat("id %q is not a decimal uint32", brief(s))
	}
	return uint32(n), nil
}

// procStat is what attestation needs from /proc/<pid>/stat.
type procStat struct {
	PID int32
	// State is the one-letter process state (R, S, D, Z, X, ...).
	State byte
	// StartTicks is field 22, starttime: clock ticks from boot to the
	// process's start.
	StartTicks uint64
}

// statStartField is the index of starttime (field 22) among the fields
// that follow the parenthesised name (which is field 2).
const statStartField = 22 - 3

// parseStat parses /proc/<pid>/stat: "pid (comm) state ppid ...". The name
// may contain spaces and parentheses, so it ends at the last ')'.
func parseStat(b []byte) (procStat, error) {
	s := strings.TrimSuffix(string(b), "\n")
	open := strings.IndexByte(s, '(')
	closing := strings.LastIndexByte(s, ')')
	if open < 2 || closing < open || s[open-1] != ' ' {
		return procStat{}, procFormat("stat is not of the form \"pid (name) ...\"")
	}
	pid, err := strconv.ParseInt(s[:open-1], 10, 32)
	if err != nil || pid <= 0 || s[0] == '0' || s[0] == '+' {
		return procStat{}, procFormat("stat pid %q is not a positive number", brief(s[:open-1]))
	}
	rest := s[closing+1:]
	if !strings.HasPrefix(rest, " ") {
		return procStat{}, procFormat("stat has no fields after the name")
	}
	var (
		st = procStat{PID: int32(pid)}
		i  int
	)
	for f := range strings.FieldsSeq(rest) {
		switch i {
		case 0:
			if len(f) != 1 || !('A' <= f[0] && f[0] <= 'Z' || 'a' <= f[0] && f[0] <= 'z') {
				return procStat{}, procFormat("stat state %q is not one letter", brief(f))
			}
			st.State = f[0]
		case statStartField:
			st.StartTicks, err = strconv.ParseUint(f, 10, 64)
			if err != nil {
				return procStat{}, procFormat("stat starttime %q is not a number", brief(f))
			}
		}
		i++
	}
	if i <= statStartField {
		return procStat{}, procFormat("stat has %d fields after the name, want at least %d", i, statStartField+1)
	}
	return st, nil
}

// brief returns s cut to a length fit for an error message, with control
// characters escaped.
func brief(s string) string {
	const max = 32
	if len(s) > max {
		s = s[:max]
	}
	q := strconv.QuoteToASCII(s)
	return q[1 : len(q)-1]
}
