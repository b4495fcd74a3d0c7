//go:build unix

package compare

import (
	"fmt"
	"syscall"
)

// raiseFileLimit raises this process's soft RLIMIT_NOFILE to its hard
// limit (Go does so itself at start on Linux, but restores the old soft
// limit in the processes it starts unless the program sets the limit
// itself), and returns the limits in force.
func raiseFileLimit() (soft, hard uint64, err error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0, err
	}
	if rl.Cur < rl.Max {
		want := rl
		want.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return uint64(rl.Cur), uint64(rl.Max), fmt.Errorf("raising RLIMIT_NOFILE from %d to %d: %w", rl.Cur, rl.Max, err)
		}
		rl = want
	}
	return uint64(rl.Cur), uint64(rl.Max), nil
}

// checkFileLimit fails, saying why, if this process may not open conns
// connections and a margin.
func checkFileLimit(conns int) error {
	soft, hard, err := raiseFileLimit()
	if need := uint64(conns) + fileLimitMargin; soft < need {
		return fmt.Errorf("RLIMIT_NOFILE is %d (hard %d): %d connections need about %d descriptors in each process; raise the hard limit (ulimit -Hn) (%v)",
			soft, hard, conns, need, err)
	}
	return nil
}
