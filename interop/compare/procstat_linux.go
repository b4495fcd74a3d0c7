//go:build linux

package compare

import (
	"bytes"
	"os"
	"strconv"
	"time"
)

// userHZ is the unit of /proc/<pid>/stat's CPU times (USER_HZ, 100 on
// every Linux ABI that Go supports).
const userHZ = 100

// childCPU is the user+system CPU time process pid has used, from
// /proc/<pid>/stat (10 ms resolution); ok is false if it cannot be read.
func childCPU(pid int) (cpu time.Duration, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	return parseProcStatCPU(b)
}

// parseProcStatCPU reads utime and stime (fields 14 and 15) of a
// /proc/<pid>/stat line. The command name, field 2, is in parentheses and
// may hold spaces and parentheses itself, so fields are counted from the
// last ')'.
func parseProcStatCPU(b []byte) (time.Duration, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	fields := bytes.Fields(b[i+1:]) // field 3 (state) onwards
	const utime, stime = 14 - 3, 15 - 3
	if len(fields) <= stime {
		return 0, false
	}
	u, err1 := strconv.ParseUint(string(fields[utime]), 10, 64)
	s, err2 := strconv.ParseUint(string(fields[stime]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(u+s) * time.Second / userHZ, true
}

// softirqCPU is the time all CPUs spent in softirqs, from /proc/stat
// (10 ms resolution). On loopback the TCP receive path runs in softirqs,
// mostly in the sender's context, and Linux accounts them to no process.
func softirqCPU() (time.Duration, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	return parseProcStatSoftirq(b)
}

// parseProcStatSoftirq reads the softirq field of /proc/stat's "cpu" line:
// cpu user nice system idle iowait irq softirq ...
func parseProcStatSoftirq(b []byte) (time.Duration, bool) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	fields := bytes.Fields(line)
	if len(fields) < 8 || string(fields[0]) != "cpu" {
		return 0, false
	}
	v, err := strconv.ParseUint(string(fields[7]), 10, 64)
	if err != nil {
		return 0, false
	}
	return time.Duration(v) * time.Second / userHZ, true
}
