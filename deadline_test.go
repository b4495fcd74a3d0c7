package tcpmux

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A deadline that has passed is exceeded even before its timer runs: the
// timer is only how waiters learn it.
func TestDeadlineExceededBeforeItsTimer(t *testing.T) {
	var d deadline
	defer d.stop()
	require.False(t, d.exceeded(), "no deadline set")
	d.set(time.Now().Add(time.Hour))
	require.False(t, d.exceeded())
	d.mu.Lock()
	d.at = time.Now().Add(-time.Nanosecond) // the clock passed it; the timer has not fired
	d.mu.Unlock()
	require.True(t, d.exceeded())
	d.set(time.Time{})
	require.False(t, d.exceeded(), "a zero time clears it")
}

// SPEC 4: a WriteTo issued after its write deadline has passed fails and
// writes nothing, in both write modes, even if the deadline's timer has
// not run yet (found by the contract suite: buffered mode looked at the
// timer only).
func TestWriteDeadlinePassedBeforeTimer(t *testing.T) {
	for _, mode := range pcWriteModes {
		t.Run(mode.name, func(t *testing.T) {
			_, pc, _, addr := pcPair(t, pcFamilies[0], TCPMuxParams{WriteBufferSize: mode.writeBufferSize})
			dl := time.Now().Add(5 * time.Millisecond)
			require.NoError(t, pc.SetWriteDeadline(dl))
			for time.Now().Before(dl) { //nolint:revive // spin: a sleep would let the timer run
			}
			_, err := pc.WriteTo([]byte("late"), addr)
			pcRequireTimeout(t, err)
		})
	}
}
