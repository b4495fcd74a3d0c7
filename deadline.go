package tcpmux

import (
	"sync"
	"sync/atomic"
	"time"
)

// deadline is a net.Conn-style deadline: a channel closed when the time
// passes, re-armed by set. Waiters take the channel once per wait, so
// moving the deadline while they wait takes effect at once. The channel
// is made on the first wait, so a handle nobody waits on costs none.
type deadline struct {
	mu      sync.Mutex
	at      time.Time
	timer   *time.Timer
	ch      chan struct{} // nil until a wait; closed once expired
	expired atomic.Bool   // the timer fired, or set found the time passed
	armed   atomic.Bool   // at is set: exceeded must look at the clock
	shutOff bool          // shut: its handle closed, waiters stay woken
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.shutOff {
		return
	}
	d.at = t
	d.armed.Store(!t.IsZero())
	if d.timer != nil {
		d.timer.Stop()
	}
	if d.expired.Load() {
		d.ch = nil // closed: the next wait makes a fresh one
		d.expired.Store(false)
	}
	if t.IsZero() {
		return
	}
	d.armLocked()
}

// armLocked expires the deadline if it has passed, or starts the timer.
func (d *deadline) armLocked() {
	wait := time.Until(d.at)
	if wait <= 0 {
		d.expired.Store(true)
		if d.ch != nil {
			close(d.ch)
		}
		return
	}
	if d.timer == nil {
		d.timer = time.AfterFunc(wait, d.fire)
	} else {
		d.timer.Reset(wait)
	}
}

func (d *deadline) fire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.at.IsZero() || d.expired.Load() || d.shutOff {
		return
	}
	d.armLocked() // re-arms if the timer was stale or the clock disagrees
}

func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		d.ch = make(chan struct{})
		if d.expired.Load() || d.shutOff {
			close(d.ch)
		}
	}
	return d.ch
}

// shut stops the deadline for good and wakes its waiters, now and later:
// a closing handle's ReadFroms wait on it, so the handle needs no channel
// of its own.
func (d *deadline) shut() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.shutOff {
		return
	}
	d.shutOff = true
	if d.timer != nil {
		d.timer.Stop()
	}
	if d.ch != nil && !d.expired.Load() { // an expired one is closed already
		close(d.ch)
	}
}

// exceeded reports whether the deadline has passed, even if its timer has
// not fired yet: a call made after the deadline fails, as in package net.
// With no deadline set it costs one atomic load.
func (d *deadline) exceeded() bool {
	if d.expired.Load() {
		return true
	}
	if !d.armed.Load() {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return !d.at.IsZero() && !time.Now().Before(d.at)
}

func (d *deadline) time() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.at
}

func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
	}
}
