package tcpmux

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

// Writers contending for the semaphore never overlap: each increments a
// plain counter inside (the race detector sees any overlap), none is lost
// and none waits forever.
func TestWriteSemExcludes(t *testing.T) {
	synctest.Test(t, writeSemExcludes) // a lost wake-up fails as a deadlock
}

func writeSemExcludes(t *testing.T) {
	var s writeSem
	never := make(chan struct{})
	const writers, each = 8, 2000
	inside, total := 0, 0
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for range each {
				require.NoError(t, s.acquire(never, never))
				inside++
				if inside != 1 {
					t.Errorf("%d writers inside", inside)
				}
				total++
				inside--
				s.release()
			}
		})
	}
	wg.Wait()
	require.Equal(t, writers*each, total)
}

// A writer waiting behind a stuck one leaves on its own deadline or on
// the connection's end, with the error its write returns, and a release
// reaches whoever still waits.
func TestWriteSemWaiterLeavesAndWakes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var s writeSem
		require.True(t, s.tryAcquire())
		require.False(t, s.tryAcquire(), "taken twice")

		expired, done, never := make(chan struct{}), make(chan struct{}), make(chan struct{})
		results := make(chan error, 3)
		waiter := func(done, expired chan struct{}) {
			go func() { results <- s.acquire(done, expired) }()
		}
		waiter(never, expired)
		waiter(done, never)
		waiter(never, never)
		synctest.Wait()
		require.Empty(t, results, "a waiter got in while the semaphore was taken")

		close(expired)
		require.ErrorIs(t, <-results, os.ErrDeadlineExceeded)
		close(done)
		require.ErrorIs(t, <-results, ErrConnClosed)
		synctest.Wait()
		require.Empty(t, results)

		s.release()
		require.NoError(t, <-results, "the last waiter was not woken")
		require.False(t, s.tryAcquire(), "the woken waiter does not hold it")
		s.release()
		require.True(t, s.tryAcquire())
	})
}

// A release while a writer waits gives that writer the turn: the next
// tryAcquire (the releasing writer's next WriteTo) does not take it first.
func TestWriteSemReleaseGivesWaiterTheTurn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var s writeSem
		require.True(t, s.tryAcquire())
		never := make(chan struct{})
		got := make(chan error, 1)
		go func() { got <- s.acquire(never, never) }()
		synctest.Wait() // the waiter is parked

		s.release()
		barged := s.tryAcquire()
		if barged {
			s.release() // let the waiter finish
		}
		require.NoError(t, <-got)
		s.release()
		require.False(t, barged, "the releasing writer took the semaphore back past a waiter")
	})
}

// A waiter that gives up just as the semaphore is handed to it passes it
// on: the next waiter gets it, and it is free once that one releases.
func TestWriteSemHandOverToLeavingWaiterPassesOn(t *testing.T) {
	for range 50 { // the leaving waiter sees both cases ready: either order
		synctest.Test(t, func(t *testing.T) {
			var s writeSem
			require.True(t, s.tryAcquire())
			expired, never := make(chan struct{}), make(chan struct{})
			leaving, staying := make(chan error, 1), make(chan error, 1)
			go func() { leaving <- s.acquire(never, expired) }()
			synctest.Wait()
			go func() { staying <- s.acquire(never, never) }()
			synctest.Wait()

			close(expired)
			s.release() // to the leaving waiter, which waited longest
			synctest.Wait()
			if err := <-leaving; err == nil {
				s.release() // it got the turn before its deadline
			}
			require.NoError(t, <-staying, "the turn was lost with the waiter that left")
			s.release()
			require.True(t, s.tryAcquire(), "not free after the last release")
		})
	}
}

// Writes to one connection take turns (README): a WriteTo that waits
// behind a writer sending back to back gets the connection after that
// writer's current frame. The peer drains a frame every millisecond; the
// second writer's deadline allows a hundred frames to go by first.
// GOMAXPROCS(1) makes the schedule deterministic: a semaphore that lets
// the releasing writer take it straight back starves the waiter.
func TestWriterWaitingBehindBusyWriterGetsItsTurn(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	synctest.Test(t, func(t *testing.T) {
		pc, client, c := pipePair(t)
		h2, err := c.mux.GetConnByUfrag("pipe", false, net.IPv4(127, 0, 0, 1))
		require.NoError(t, err)
		defer h2.Close()
		addr := net.TCPAddrFromAddrPort(mustAddrPort("127.0.0.1:40000"))

		var wg sync.WaitGroup
		wg.Go(func() { // a link that takes a frame every millisecond
			var hdr [FrameHeaderSize]byte
			for {
				time.Sleep(time.Millisecond)
				if _, err := io.ReadFull(client, hdr[:]); err != nil {
					return
				}
				if _, err := io.CopyN(io.Discard, client, int64(binary.BigEndian.Uint16(hdr[:]))); err != nil {
					return
				}
			}
		})
		var stop atomic.Bool
		wg.Go(func() { // writes back to back, no deadline
			for !stop.Load() {
				if _, err := pc.WriteTo([]byte("busy"), addr); err != nil {
					return
				}
			}
		})
		time.Sleep(5 * time.Millisecond) // the busy writer is in full swing

		require.NoError(t, h2.SetWriteDeadline(time.Now().Add(100*time.Millisecond)))
		_, werr := h2.WriteTo([]byte("mine"), addr)
		stop.Store(true)
		_ = client.Close()
		wg.Wait()
		require.NoError(t, werr, "a write waiting behind a busy writer never got its turn")
	})
}
