package tcpmux

import (
	"net"
	"sync"
	"time"
)

// bufferedWriter is a connection's state in buffered mode: frames are
// appended to queued and a flusher goroutine, alive only while frames are
// queued (and a linger after), writes them from there in as few Writes as
// possible. Made only when WriteBufferSize > 0, so that a connection in
// synchronous mode does not carry it. mu guards what follows it.
type bufferedWriter struct {
	mu           sync.Mutex
	queued       writeRing
	flushing     bool
	flusherWaits bool          // the flusher waits for frames on queuedWake
	queuedWake   chan struct{} // one token: frames were queued for an idle flusher
	dropErr      error         // returned for every dropped frame (dropErrorLocked)
	flushers     sync.WaitGroup
}

func (c *streamConn) writeBuffered(p []byte) (int, error) {
	c.bw.mu.Lock()
	if c.closed.Load() {
		c.bw.mu.Unlock()
		return 0, ErrConnClosed
	}
	if !c.bw.queued.push(p, c.mux.params.WriteBufferSize) {
		err := c.dropErrorLocked()
		c.bw.mu.Unlock()
		c.mux.stats.writeDrops.Add(1)
		return 0, err
	}
	start := !c.bw.flushing
	if start {
		c.bw.flushing = true
		c.bw.flushers.Add(1)
	}
	wakeFlusher := c.bw.flusherWaits
	c.bw.flusherWaits = false
	c.bw.mu.Unlock()
	if start {
		go c.flush()
	} else if wakeFlusher {
		signal(c.bw.queuedWake)
	}
	return len(p), nil
}

// dropErrorLocked is the error of a frame dropped for a full write
// buffer. It is made once per connection: an application writing faster
// than its peer reads gets it for many frames in a row, which must not
// allocate. Called with bw.mu held.
func (c *streamConn) dropErrorLocked() error {
	if c.bw.dropErr == nil {
		opErr := &net.OpError{Op: "write", Net: "tcp", Err: ErrWriteBufferFull}
		if c.pc != nil {
			opErr.Source = c.pc.localAddr
		}
		if c.remote != nil {
			opErr.Addr = c.remote
		}
		c.bw.dropErr = opErr
	}
	return c.bw.dropErr
}

// flusherLinger is how long a flusher waits for more frames before it
// exits. Starting a goroutine allocates, so a connection with steady
// traffic keeps its flusher and one that falls idle gives it up.
const flusherLinger = 2 * time.Second

// flush writes queued frames, waits up to flusherLinger for more, then
// exits.
func (c *streamConn) flush() {
	defer c.bw.flushers.Done()
	linger := time.NewTimer(flusherLinger)
	defer linger.Stop()
	for {
		c.bw.mu.Lock()
		if c.closed.Load() {
			c.bw.flushing, c.bw.flusherWaits = false, false
			c.bw.mu.Unlock()
			return
		}
		if c.bw.queued.used == 0 {
			c.bw.flusherWaits = true
			c.bw.mu.Unlock()
			if !c.waitForFrames(linger) {
				return
			}
			continue
		}
		// Writers append behind these bytes meanwhile, never over them.
		front := c.bw.queued.front()
		c.bw.mu.Unlock()
		n, err := c.conn.Write(front)
		c.bw.mu.Lock()
		if !c.closed.Load() {
			c.bw.queued.consume(n)
		}
		c.bw.mu.Unlock()
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
	case <-c.bw.queuedWake:
		return true
	case <-c.done:
		return true // the loop sees closed
	case <-linger.C:
	}
	c.bw.mu.Lock()
	defer c.bw.mu.Unlock()
	if c.bw.queued.used > 0 && !c.closed.Load() {
		c.bw.flusherWaits = false
		return true
	}
	c.bw.flushing, c.bw.flusherWaits = false, false
	c.bw.queued.release() // an idle connection keeps no write buffer
	return false
}

// waitWriters waits for a closed connection's flusher to exit.
func (c *streamConn) waitWriters() {
	if c.bw != nil {
		c.bw.flushers.Wait()
	}
}
