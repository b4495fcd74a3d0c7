package tcpmux

import (
	"net"
	"time"
)

func (c *streamConn) writeBuffered(p []byte) (int, error) {
	c.bmu.Lock()
	if c.closed.Load() {
		c.bmu.Unlock()
		return 0, ErrConnClosed
	}
	if !c.queued.push(p, c.mux.params.WriteBufferSize) {
		err := c.dropErrorLocked()
		c.bmu.Unlock()
		c.mux.stats.writeDrops.Add(1)
		return 0, err
	}
	start := !c.flushing
	if start {
		c.flushing = true
		c.writers.Add(1)
	}
	wakeFlusher := c.flusherWaits
	c.flusherWaits = false
	c.bmu.Unlock()
	if start {
		go c.flush()
	} else if wakeFlusher {
		signal(c.queuedWake)
	}
	return len(p), nil
}

// dropErrorLocked is the error of a frame dropped for a full write
// buffer. It is made once per connection: an application writing faster
// than its peer reads gets it for many frames in a row, which must not
// allocate. Called with bmu held.
func (c *streamConn) dropErrorLocked() error {
	if c.dropErr == nil {
		opErr := &net.OpError{Op: "write", Net: "tcp", Err: ErrWriteBufferFull}
		if c.pc != nil {
			opErr.Source = c.pc.localAddr
		}
		if c.remote != nil {
			opErr.Addr = c.remote
		}
		c.dropErr = opErr
	}
	return c.dropErr
}

// flusherLinger is how long a flusher waits for more frames before it
// exits. Starting a goroutine allocates, so a connection with steady
// traffic keeps its flusher and one that falls idle gives it up.
const flusherLinger = 2 * time.Second

// flush writes queued frames, waits up to flusherLinger for more, then
// exits.
func (c *streamConn) flush() {
	defer c.writers.Done()
	linger := time.NewTimer(flusherLinger)
	defer linger.Stop()
	for {
		c.bmu.Lock()
		if c.closed.Load() {
			c.flushing, c.flusherWaits = false, false
			c.bmu.Unlock()
			return
		}
		if c.queued.used == 0 {
			c.flusherWaits = true
			c.bmu.Unlock()
			if !c.waitForFrames(linger) {
				return
			}
			continue
		}
		// Writers append behind these bytes meanwhile, never over them.
		front := c.queued.front()
		c.bmu.Unlock()
		n, err := c.conn.Write(front)
		c.bmu.Lock()
		if !c.closed.Load() {
			c.queued.consume(n)
		}
		c.bmu.Unlock()
		if err != nil {
			c.fail(err)
		}
	}
}

// waitForFrames waits until frames are queued, and reports false after
// having retired the flusher if none come within flusherLinger.
func (c *streamConn) waitForFrames(linger *time.Timer) bool {
	linger.Reset(flusherLinger)
	select {
	case <-c.queuedWake:
		return true
	case <-c.done:
		return true // the loop sees closed
	case <-linger.C:
	}
	c.bmu.Lock()
	defer c.bmu.Unlock()
	if c.queued.used > 0 && !c.closed.Load() {
		c.flusherWaits = false
		return true
	}
	c.flushing, c.flusherWaits = false, false
	c.queued.release() // an idle connection keeps no write buffer
	return false
}

// waitWriters waits for a closed connection's flusher to exit.
func (c *streamConn) waitWriters() { c.writers.Wait() }
