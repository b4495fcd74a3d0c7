//go:build unix

package tcpmux

import (
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// Test helpers that need unix system calls.

// raiseNoFile raises RLIMIT_NOFILE to at least want for the test, raising
// the hard limit too if the process may, and restores it afterwards.
func raiseNoFile(t testing.TB, want uint64) {
	t.Helper()
	var orig syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig))
	cur, hard := uint64(orig.Cur), uint64(orig.Max) // int64 on some systems (FreeBSD)
	if cur >= want {
		return
	}
	lim := orig
	setRlimit(&lim.Cur, want)
	setRlimit(&lim.Max, max(hard, want))
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		if hard < want {
			t.Skipf("RLIMIT_NOFILE hard limit %d < %d and not raisable: %v", hard, want, err)
		}
		lim.Max = orig.Max
		require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim))
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig) })
}

// setRlimit sets a syscall.Rlimit field, whichever integer type it has.
func setRlimit[T ~int64 | ~uint64](field *T, v uint64) { *field = T(v) }
