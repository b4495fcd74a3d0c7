package tcpmux

import (
	"errors"
	"net"
	"testing"

	"github.com/stretchr/testify/require"
)

// An application writing faster than its peer reads gets ErrWriteBufferFull
// for frame after frame: each drop is a *net.OpError, as every PacketConn
// error, and allocates nothing.
func TestBufferedDropAllocatesNothing(t *testing.T) {
	_, pc, _, from := pcPair(t, pcFamilies[0], TCPMuxParams{WriteBufferSize: 64 << 10})
	payload := make([]byte, 1200)
	var err error
	for range 10000 { // the peer reads nothing: the socket, then the buffer, fill up
		if _, err = pc.WriteTo(payload, from); err != nil {
			break
		}
	}
	require.ErrorIs(t, err, ErrWriteBufferFull)
	var opErr *net.OpError
	require.True(t, errors.As(err, &opErr), "a drop is a %T, not a *net.OpError", err)
	require.Equal(t, from.String(), opErr.Addr.String())
	drops := 0
	allocs := testing.AllocsPerRun(100, func() {
		switch _, err := pc.WriteTo(payload, from); {
		case errors.Is(err, ErrWriteBufferFull):
			drops++
		case err != nil: // the flusher may free room meanwhile: a frame then fits
			panic(err)
		}
	})
	require.Zero(t, allocs, "allocations per dropped frame")
	require.Greater(t, drops, 25, "frames dropped")
}
