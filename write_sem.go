package tcpmux

import (
	"os"
	"sync/atomic"
)

// writeSem lets one synchronous write at a time use a connection, so that
// frames never interleave, and makes writers take turns: a release while
// writers wait hands the semaphore to the one that waited longest, so a
// writer sending back to back cannot starve another. A writer that waits
// does so together with its own deadline and the connection's end: a write
// stuck on a stalled peer holds no other writer past that writer's
// deadline, which a mutex could not give.
//
// Uncontended, taking and releasing it costs three atomic operations (a
// channel used as a semaphore cost four runtime lock pairs, 2.5% of the
// server's CPU in sync egress of 64-byte frames).
//
// The hand-over is a token on wake, sent with taken set: whoever receives
// it owns the semaphore. Neither side can miss the other: a waiter counts
// itself before it tries again, and a release frees the semaphore before
// it looks for waiters (sequentially consistent atomics). A token sent to
// a waiter that gave up meanwhile stays on wake for the next writer, who
// waits for it since taken stays set: it is never lost.
type writeSem struct {
	taken   atomic.Bool // owned, or being handed over
	waiters atomic.Int32
	wake    atomic.Pointer[chan struct{}] // capacity 1; made by the first writer that waits
}

func (s *writeSem) tryAcquire() bool { return s.taken.CompareAndSwap(false, true) }

// acquire takes the semaphore. It gives up, with the error the write
// returns, when done (the connection closed) or expired (the writer's
// deadline passed) is closed first.
func (s *writeSem) acquire(done, expired <-chan struct{}) error {
	if s.tryAcquire() {
		return nil
	}
	wake := s.wakeChan()
	s.waiters.Add(1)
	if s.tryAcquire() { // released before this writer counted
		s.waiters.Add(-1)
		return nil
	}
	var err error
	select {
	case <-wake:
		s.waiters.Add(-1)
		return nil
	case <-done:
		err = ErrConnClosed
	case <-expired:
		err = os.ErrDeadlineExceeded
	}
	s.waiters.Add(-1)
	return err
}

// release frees the semaphore, then hands it to a waiting writer if there
// is one: the writer that released cannot take it back first (only a
// writer arriving in between could).
func (s *writeSem) release() {
	s.taken.Store(false)
	if s.waiters.Load() > 0 && s.tryAcquire() {
		signal(*s.wake.Load())
	}
}

func (s *writeSem) wakeChan() chan struct{} {
	if w := s.wake.Load(); w != nil {
		return *w
	}
	w := make(chan struct{}, 1)
	if !s.wake.CompareAndSwap(nil, &w) {
		return *s.wake.Load()
	}
	return w
}
