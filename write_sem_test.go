package tcpmux

import (
	"os"
	"sync"
	"testing"
	"testing/synctest"

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
