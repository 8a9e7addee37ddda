package unixattest

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
)

const goodStatus = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nPid:\t4242\n" +
	"Uid:\t1000\t1001\t1002\t1003\nGid:\t2000\t2001\t2002\t2003\nFDSize:\t64\nGroups:\t4 24 27 \n" +
	"NStgid:\t4242\nVmPeak:\t    8000 kB\n"

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    procStatus
		wantErr bool
	}{
		{name: "good", in: goodStatus, want: procStatus{
			UID: [4]uint32{1000, 1001, 1002, 1003}, GID: [4]uint32{2000, 2001, 2002, 2003}, Groups: []uint32{4, 24, 27},
		}},
		{name: "no groups", in: "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n", want: procStatus{}},
		{name: "max ids", in: "Uid:\t4294967295\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t4294967295\n",
			want: procStatus{UID: [4]uint32{4294967295}, Groups: []uint32{4294967295}}},
		{name: "no final newline", in: "Groups:\t5\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8",
			want: procStatus{UID: [4]uint32{1, 2, 3, 4}, GID: [4]uint32{5, 6, 7, 8}, Groups: []uint32{5}}},
		{name: "empty", in: "", wantErr: true},
		{name: "no Groups", in: "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n", wantErr: true},
		{name: "no Uid", in: "Gid:\t0\t0\t0\t0\nGroups:\t\n", wantErr: true},
		{name: "two Uid lines", in: goodStatus + "Uid:\t0\t0\t0\t0\n", wantErr: true},
		{name: "two Gid lines", in: goodStatus + "Gid:\t0\t0\t0\t0\n", wantErr: true},
		{name: "two Groups lines", in: goodStatus + "Groups:\t0\n", wantErr: true},
		{name: "three uids", in: "Uid:\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n", wantErr: true},
		{name: "five gids", in: "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\t0\nGroups:\t\n", wantErr: true},
		{name: "negative", in: "Uid:\t-1\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n", wantErr: true},
		{name: "plus sign", in: "Uid:\t+1\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n", wantErr: true},
		{name: "leading zero", in: "Uid:\t01\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n", wantErr: true},
		{name: "overflow", in: "Uid:\t4294967296\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n", wantErr: true},
		{name: "bad group", in: "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t1 x\n", wantErr: true},
		{name: "too many groups", in: "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t" + strings.Repeat("1 ", maxGroups+1) + "\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatus([]byte(tt.in))
			if tt.wantErr {
				if err == nil || !errors.Is(err, errProcFormat) {
					t.Fatalf("parseStatus = %+v, %v; want a format error", got, err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("parseStatus = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func goodStat(name string) string {
	return "4242 (" + name + ") S 1 4242 4242 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 98765 8192000 200 " +
		"18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
}

func TestParseStat(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    procStat
		wantErr bool
	}{
		{name: "good", in: goodStat("sleep"), want: procStat{PID: 4242, State: 'S', StartTicks: 98765}},
		{name: "name with spaces and parens", in: goodStat("a) S 1 (b"), want: procStat{PID: 4242, State: 'S', StartTicks: 98765}},
		{name: "name with newline", in: goodStat("a\nb"), want: procStat{PID: 4242, State: 'S', StartTicks: 98765}},
		{name: "empty name", in: goodStat(""), want: procStat{PID: 4242, State: 'S', StartTicks: 98765}},
		{name: "exactly 22 fields", in: "1 (x) Z 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 7", want: procStat{PID: 1, State: 'Z', StartTicks: 7}},
		{name: "empty", in: "", wantErr: true},
		{name: "21 fields", in: "1 (x) Z 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0", wantErr: true},
		{name: "no parens", in: "1 x S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 7", wantErr: true},
		{name: "no close paren", in: "1 (x S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 7", wantErr: true},
		{name: "no space after name", in: "1 (x)S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 7", wantErr: true},
		{name: "no pid", in: " (x) S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 7", wantErr: true},
		{name: "pid 0", in: "0 (x) S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 7", wantErr: true},
		{name: "pid leading zero", in: "01 (x) S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 7", wantErr: true},
		{name: "pid plus", in: "+1 (x) S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 7", wantErr: true},
		{name: "pid negative", in: "-1 (x) S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 7", wantErr: true},
		{name: "pid overflow", in: "2147483648 (x) S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 7", wantErr: true},
		{name: "state not a letter", in: "1 (x) ? 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 7", wantErr: true},
		{name: "state two letters", in: "1 (x) SS 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 7", wantErr: true},
		{name: "bad starttime", in: "1 (x) S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 -7", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.in))
			if tt.wantErr {
				if err == nil || !errors.Is(err, errProcFormat) {
					t.Fatalf("parseStat = %+v, %v; want a format error", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseStat = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// TestParseSelf parses this process's own procfs files.
func TestParseSelf(t *testing.T) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip(err)
	}
	st, err := parseStatus(b)
	if err != nil {
		t.Fatal(err)
	}
	if st.UID[1] != uint32(os.Geteuid()) || st.GID[1] != uint32(os.Getegid()) {
		t.Errorf("status ids %v %v; want effective %d %d", st.UID, st.GID, os.Geteuid(), os.Getegid())
	}
	b, err = os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	ps, err := parseStat(b)
	if err != nil || ps.PID != int32(os.Getpid()) || ps.StartTicks == 0 {
		t.Errorf("parseStat(self) = %+v, %v", ps, err)
	}
}

func formatStatus(st procStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Name:\tx\nUid:\t%d\t%d\t%d\t%d\n", st.UID[0], st.UID[1], st.UID[2], st.UID[3])
	fmt.Fprintf(&b, "Gid:\t%d\t%d\t%d\t%d\nGroups:\t", st.GID[0], st.GID[1], st.GID[2], st.GID[3])
	for _, g := range st.Groups {
		fmt.Fprintf(&b, "%d ", g)
	}
	b.WriteString("\n")
	return b.String()
}

func formatStat(ps procStat) string {
	return fmt.Sprintf("%d (x) %c%s %d 0\n", ps.PID, ps.State, strings.Repeat(" 0", statStartField-1), ps.StartTicks)
}

func procSeeds(f *testing.F, name string) {
	if b, err := os.ReadFile("/proc/self/" + name); err == nil {
		f.Add(b)
	}
	if b, err := os.ReadFile("/proc/1/" + name); err == nil {
		f.Add(b)
	}
}

// FuzzParseStatus checks that parseStatus never panics, that what it
// accepts it reads back from its canonical form, and that it fails only
// with format errors.
func FuzzParseStatus(f *testing.F) {
	procSeeds(f, "status")
	f.Add([]byte(goodStatus))
	f.Add([]byte("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n"))
	f.Add([]byte(goodStatus + "Uid:\t0\t0\t0\t0\n"))
	f.Add([]byte("Uid:\t01\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t1 x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseStatus(b)
		if err != nil {
			if !errors.Is(err, errProcFormat) {
				t.Fatalf("error %v does not wrap errProcFormat", err)
			}
			return
		}
		again, err := parseStatus([]byte(formatStatus(st)))
		if err != nil || !reflect.DeepEqual(again, st) {
			t.Fatalf("round trip of %+v = %+v, %v", st, again, err)
		}
	})
}

// FuzzParseStat is FuzzParseStatus for parseStat.
func FuzzParseStat(f *testing.F) {
	procSeeds(f, "stat")
	f.Add([]byte(goodStat("sleep")))
	f.Add([]byte(goodStat("a) S 1 (b")))
	f.Add([]byte("1 (x) Z 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 7"))
	f.Add([]byte("1 (x)"))
	f.Add([]byte(")( 1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ps, err := parseStat(b)
		if err != nil {
			if !errors.Is(err, errProcFormat) {
				t.Fatalf("error %v does not wrap errProcFormat", err)
			}
			return
		}
		if ps.PID <= 0 {
			t.Fatalf("accepted pid %d", ps.PID)
		}
		again, err := parseStat([]byte(formatStat(ps)))
		if err != nil || again != ps {
			t.Fatalf("round trip of %+v = %+v, %v", ps, again, err)
		}
	})
}
