package tcpmux

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// The Chaos case of the PacketConn contract suite (testPacketConnContract):
// every method of net.PacketConn and of pion's allocation-free interface
// called at once on two handles of one PacketConn while its peers send and
// receive, in the spirit of x/net/nettest's testConcurrentMethods, but
// checking invariants rather than only running. It uses the exported API
// alone, so it holds whatever the read and write paths look like inside.

// requireOpError reports, through fail, an error from method (a
// PacketConn method's name) that is not a *net.OpError: every method wraps
// its errors in one, as net.Conn's do; who says whose call it was.
func requireOpError(fail func(format string, args ...any), method, who string, err error) {
	var opErr *net.OpError
	if !errors.As(err, &opErr) {
		fail("%s %s: error %q is a %T, not a *net.OpError", who, method, err, err)
	}
}

// Sizes of the chaos. Every frame sent to a peer in the traffic phase is
// at most chaosMaxWrite bytes and there are chaosWriters*chaosWriterFrames
// of them (about 12 KB in all), so a peer's socket buffers hold them all
// even if it stopped reading: no WriteTo of that phase ever waits on the
// network, so a write deadline can only fail a WriteTo before its frame
// starts, never tear it mid-frame (which closes the connection, SPEC 4;
// TestPacketConnWriteDeadlineMidFrame covers that).
const (
	chaosPeerFrames   = 150 // frames each peer sends in the traffic phase
	chaosWriters      = 4   // WriteTo and WriteToAddrPort on each of two handles
	chaosWriterFrames = 30  // frames each writer gets accepted
	chaosMaxWrite     = 200
	chaosWithin       = 5 * time.Second // bound of each wait: a hang fails, never waits forever
)

var chaosEnd = []byte("END")

func chaosWriteSize(w, seq int) int { return 6 + (w*131+seq*37)%(chaosMaxWrite-5) }

// pcChaos is one run of the Chaos case.
type pcChaos struct {
	handles []net.PacketConn // two handles of one PacketConn
	peers   []net.Conn
	peerAPs []netip.AddrPort // the peers' addresses as the mux sees them
	peerOf  map[netip.AddrPort]int
	local   string // LocalAddr of both handles
	nowhere netip.AddrPort

	// shake moves deadlines while the phase's chaos runs: under a read
	// lock, so that endChaos, which takes the write lock, knows that no
	// deadline moves after it returns.
	chaosMu   sync.RWMutex
	chaosOver bool
	writeAny  bool        // shake may set write deadlines that come
	closing   atomic.Bool // Close has been called

	mu    sync.Mutex
	fails []string
	// what happened, logged
	reads, readTimeouts, writes, writeTimeouts, deadlineSets atomic.Int64
}

// failf records a violated invariant. Goroutines call it; the test
// goroutine reports (t.Errorf must not run once a test has ended, which a
// goroutine left behind by a hang could do).
func (c *pcChaos) failf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.fails) < 50 {
		c.fails = append(c.fails, fmt.Sprintf(format, args...))
	}
}

func (c *pcChaos) report(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.fails {
		t.Error(f)
	}
	if len(c.fails) > 0 {
		t.FailNow()
	}
}

// classify checks an error from method, called by who: a *net.OpError
// matching one of allowed (a deadline error must also say Timeout()). It
// returns the sentinel matched, or nil after reporting an error that
// matches none.
func (c *pcChaos) classify(method, who string, err error, allowed ...error) error {
	requireOpError(c.failf, method, who, err)
	for _, want := range allowed {
		if !errors.Is(err, want) {
			continue
		}
		if want == os.ErrDeadlineExceeded {
			var netErr net.Error
			if !errors.As(err, &netErr) || !netErr.Timeout() {
				c.failf("%s %s: deadline error %q does not say Timeout()", who, method, err)
			}
		}
		return want
	}
	c.failf("%s %s: unexpected error %q (want one matching %v)", who, method, err, allowed)
	return nil
}

// failedCallGoesOn checks a call that failed: it moved no bytes, and its
// error is net.ErrClosed once its handle is closing, or else transient
// (transient: a deadline or a full buffer), and not transient after its
// handle's Close. It reports whether the caller goes on calling.
func (c *pcChaos) failedCallGoesOn(who, method string, n int, err, transient error, closing *atomic.Bool, afterClose bool) bool {
	if n != 0 {
		c.failf("%s %s: n = %d with error %v", who, method, n, err)
	}
	switch c.classify(method, who, err, net.ErrClosed, transient) {
	case net.ErrClosed:
		if !closing.Load() {
			c.failf("%s %s: %v before its handle was closed", who, method, err)
		}
		return false
	case nil:
		return false
	}
	if afterClose {
		c.failf("%s %s after its Close: %v, want net.ErrClosed", who, method, err)
		return false
	}
	return true
}

// read calls ReadFrom or ReadFromAddrPort and returns the sender unmapped.
func (c *pcChaos) read(h net.PacketConn, addrPort bool, buf []byte) (int, netip.AddrPort, error) {
	if addrPort {
		return h.(pcAddrPortConn).ReadFromAddrPort(buf)
	}
	n, from, err := h.ReadFrom(buf)
	if err != nil {
		return n, netip.AddrPort{}, err
	}
	tcp, ok := from.(*net.TCPAddr)
	if !ok {
		c.failf("ReadFrom returned a %T address", from)
		return n, netip.AddrPort{}, nil
	}
	ap := tcp.AddrPort()
	return n, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

func (c *pcChaos) write(h net.PacketConn, addrPort bool, p []byte, to netip.AddrPort) (int, error) {
	if addrPort {
		return h.(pcAddrPortConn).WriteToAddrPort(p, to)
	}
	return h.WriteTo(p, net.TCPAddrFromAddrPort(to))
}

// caller names the goroutine that calls handle h's read or write method.
func caller(h int, read, addrPort bool) (who, method string) {
	who = fmt.Sprintf("handle %d", h)
	switch {
	case read && addrPort:
		return who, "ReadFromAddrPort"
	case read:
		return who, "ReadFrom"
	case addrPort:
		return who, "WriteToAddrPort"
	}
	return who, "WriteTo"
}

// shake calls SetDeadline, SetReadDeadline or SetWriteDeadline on a
// random handle with a time in the past, a few milliseconds ahead, an hour
// ahead, or zero (cleared), unless the phase's chaos is over. Unless
// writeAny, a deadline that bounds writes is only ever an hour ahead or
// zero: one that never comes. A setter fails only with net.ErrClosed, and
// only once Close has been called.
func (c *pcChaos) shake() {
	c.chaosMu.RLock()
	defer c.chaosMu.RUnlock()
	if c.chaosOver {
		return
	}
	i := rand.IntN(len(c.handles))
	h := c.handles[i]
	method := [...]string{"SetDeadline", "SetReadDeadline", "SetWriteDeadline"}[rand.IntN(3)]
	kind := rand.IntN(4)
	if method != "SetReadDeadline" && !c.writeAny {
		kind = 2 + rand.IntN(2)
	}
	var at time.Time
	switch kind {
	case 0:
		at = time.Now().Add(-time.Second)
	case 1:
		at = time.Now().Add(time.Duration(rand.IntN(3000)) * time.Microsecond)
	case 2:
		at = time.Now().Add(time.Hour)
	}
	c.deadlineSets.Add(1)
	var err error
	switch method {
	case "SetDeadline":
		err = h.SetDeadline(at)
	case "SetWriteDeadline":
		err = h.SetWriteDeadline(at)
	default:
		err = h.SetReadDeadline(at)
	}
	if err != nil && c.classify(method, fmt.Sprintf("handle %d", i), err, net.ErrClosed) != nil && !c.closing.Load() {
		c.failf("handle %d %s before Close: %v", i, method, err)
	}
}

// startChaos lets shake move deadlines; endChaos stops it, and once it
// returns no deadline moves.
func (c *pcChaos) startChaos(writeAny bool) {
	c.chaosMu.Lock()
	defer c.chaosMu.Unlock()
	c.chaosOver, c.writeAny = false, writeAny
}

func (c *pcChaos) endChaos() {
	c.chaosMu.Lock()
	defer c.chaosMu.Unlock()
	c.chaosOver = true
}

// checkLocalAddr calls LocalAddr on every handle.
func (c *pcChaos) checkLocalAddr() {
	for i, h := range c.handles {
		a := h.LocalAddr()
		if _, ok := a.(*net.TCPAddr); !ok || a.String() != c.local {
			c.failf("handle %d: LocalAddr %v (%T), want %s", i, a, a, c.local)
		}
	}
}

// chaosInbox gathers the packets the PacketConn's readers return.
type chaosInbox struct {
	got   atomic.Int64 // count, for reading without the lock
	mu    sync.Mutex
	seen  []map[int]bool // per peer
	count int
	want  int           // packets that complete it; 0: never
	all   chan struct{} // closed when count reaches want
}

func newChaosInbox(peers, want int) *chaosInbox {
	in := &chaosInbox{seen: make([]map[int]bool, peers), want: want, all: make(chan struct{})}
	for i := range in.seen {
		in.seen[i] = make(map[int]bool)
	}
	return in
}

func (in *chaosInbox) add(peer, seq int) (dup bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.seen[peer][seq] {
		return true
	}
	in.seen[peer][seq] = true
	in.count++
	in.got.Store(int64(in.count))
	if in.count == in.want {
		close(in.all)
	}
	return false
}

func (in *chaosInbox) missing(frames int) []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	var m []string
	for p, seen := range in.seen {
		for seq := range frames {
			if !seen[seq] {
				m = append(m, fmt.Sprintf("%d/%d", p, seq))
			}
		}
	}
	return m
}

// packet checks one packet a reader got: from a peer's address, carrying
// that peer's payload, whole (its own length: never split or merged),
// intact, after the packets this reader got from that peer before it
// (packets of one connection come in order, so one reader sees them in
// order), and never seen before.
func (c *pcChaos) packet(in *chaosInbox, reader string, last []int, p []byte, from netip.AddrPort) {
	c.reads.Add(1)
	peer, ok := c.peerOf[from]
	if !ok {
		c.failf("%s: packet from %v, which is no peer's address", reader, from)
		return
	}
	w, seq, err := pcParseSeqPayload(p)
	switch {
	case err != nil:
		c.failf("%s: packet from peer %d: %v", reader, peer, err)
	case w != peer:
		c.failf("%s: peer %d's packet %d came from %v, peer %d's address", reader, w, seq, from, peer)
	case len(p) != pcSeqSize(w, seq):
		c.failf("%s: peer %d's packet %d has %d bytes, sent %d: split or merged", reader, w, seq, len(p), pcSeqSize(w, seq))
	case seq <= last[peer]:
		c.failf("%s: peer %d's packet %d after its packet %d", reader, peer, seq, last[peer])
	default:
		last[peer] = seq
		if in.add(peer, seq) {
			c.failf("%s: peer %d's packet %d delivered twice", reader, peer, seq)
		}
	}
}

func testPacketConnChaos(t *testing.T, mk func(t *testing.T) pcContractEnv) {
	// Registered first, so it runs last: after mk's cleanups have closed
	// the mux and the peers, nothing this test started may be left.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })

	env := mk(t)
	c := &pcChaos{
		handles: []net.PacketConn{env.pc, env.handle()},
		peers:   env.peers,
		peerOf:  make(map[netip.AddrPort]int),
		local:   env.pc.LocalAddr().String(),
	}
	for i, p := range env.peers {
		ap := netip.MustParseAddrPort(p.LocalAddr().String())
		c.peerAPs = append(c.peerAPs, ap)
		c.peerOf[ap] = i
	}
	// An address of the peers' family that no connection has.
	c.nowhere = netip.AddrPortFrom(c.peerAPs[0].Addr(), 1)
	require.Equal(t, c.local, c.handles[1].LocalAddr().String(), "two handles, one PacketConn")

	start := time.Now()
	c.traffic(t)
	c.report(t)
	traffic := time.Since(start)
	c.shutdown(t)
	c.report(t)
	t.Logf("traffic %v, closing %v; %d packets read, %d read timeouts, %d frames written, %d write timeouts, %d deadlines set",
		traffic.Round(time.Millisecond), (time.Since(start) - traffic).Round(time.Millisecond),
		c.reads.Load(), c.readTimeouts.Load(), c.writes.Load(), c.writeTimeouts.Load(), c.deadlineSets.Load())
}

// await waits for done, and fails the test after within.
func (c *pcChaos) await(t *testing.T, done <-chan struct{}, within time.Duration, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(within):
		c.report(t)
		t.Fatalf("%s did not finish within %v", what, within)
	}
}

func waitGroupDone(wg *sync.WaitGroup) <-chan struct{} {
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	return ch
}

// traffic: each peer sends chaosPeerFrames frames in random pieces while
// four readers (ReadFrom and ReadFromAddrPort on each handle) read them,
// four writers (WriteTo and WriteToAddrPort on each handle) send frames to
// the peers, to an address no connection has, and too large to frame, and
// everyone moves both handles' deadlines (past, soon, later, cleared) and
// calls LocalAddr. Then: the readers got every peer frame exactly once,
// intact and from its peer's address; each peer got exactly the frames
// WriteTo accepted for it, in each writer's order; every error was a
// deadline's, or the one the probe asked for.
func (c *pcChaos) traffic(t *testing.T) {
	nPeers := len(c.peers)
	in := newChaosInbox(nPeers, nPeers*chaosPeerFrames)
	gate := make(chan struct{}) // every goroutine starts at once
	var stop atomic.Bool        // the readers are done, or the test gave up
	c.startChaos(true)

	// The peers.
	type peerRx struct {
		perWriter [chaosWriters][]int
		err       error
	}
	var peers sync.WaitGroup
	received := make([]chan peerRx, nPeers)
	for i, conn := range c.peers {
		peers.Go(func() { // sender: the whole stream, in random pieces
			<-gate
			var stream []byte
			for seq := range chaosPeerFrames {
				stream = append(stream, frame(pcSeqPayload(i, seq, pcSeqSize(i, seq)))...)
			}
			if err := conn.SetWriteDeadline(time.Now().Add(chaosWithin)); err != nil {
				c.failf("peer %d: %v", i, err)
				return
			}
			for len(stream) > 0 {
				n := min(len(stream), 1+rand.IntN(3000))
				if _, err := conn.Write(stream[:n]); err != nil {
					c.failf("peer %d: sending: %v", i, err)
					return
				}
				stream = stream[n:]
			}
		})
		received[i] = make(chan peerRx, 1)
		peers.Go(func() { // receiver: frames until the end marker
			var rx peerRx
			defer func() { received[i] <- rx }()
			for {
				p, err := pcReadFrame(conn, chaosWithin)
				if err != nil {
					rx.err = err
					return
				}
				if string(p) == string(chaosEnd) {
					return
				}
				w, seq, err := pcParseSeqPayload(p)
				switch {
				case err != nil:
					rx.err = fmt.Errorf("a corrupt frame: %w", err)
				case w >= chaosWriters || seq%nPeers != i:
					rx.err = fmt.Errorf("writer %d's frame %d is not for peer %d", w, seq, i)
				case len(p) != chaosWriteSize(w, seq):
					rx.err = fmt.Errorf("writer %d's frame %d has %d bytes, sent %d", w, seq, len(p), chaosWriteSize(w, seq))
				}
				if rx.err != nil {
					return
				}
				rx.perWriter[w] = append(rx.perWriter[w], seq)
			}
		})
	}

	// The PacketConn's readers.
	var readers sync.WaitGroup
	for r := range 4 {
		h, addrPort := c.handles[r/2], r%2 == 1
		who, method := caller(r/2, true, addrPort)
		readers.Go(func() {
			<-gate
			buf := make([]byte, MaxFramePayload)
			last := make([]int, nPeers)
			for i := range last {
				last[i] = -1
			}
			for i := 0; ; i++ {
				if i%8 == 0 {
					c.shake()
				}
				n, from, err := c.read(h, addrPort, buf)
				if err == nil {
					c.packet(in, who+" "+method, last, buf[:n], from)
					continue
				}
				if n != 0 {
					c.failf("%s %s: n = %d with error %v", who, method, n, err)
				}
				if c.classify(method, who, err, os.ErrDeadlineExceeded) == nil || stop.Load() {
					return
				}
				c.readTimeouts.Add(1)
				c.shake() // a passed deadline holds until someone moves it
				runtime.Gosched()
			}
		})
	}

	// The PacketConn's writers.
	var writers sync.WaitGroup
	accepted := make([][]int, chaosWriters)
	for w := range chaosWriters {
		h, addrPort := c.handles[w/2], w%2 == 1
		who, method := caller(w/2, false, addrPort)
		writers.Go(func() {
			<-gate
			tooLarge := make([]byte, MaxFramePayload+1)
			for attempt, seq := 0, 0; len(accepted[w]) < chaosWriterFrames; attempt++ {
				// Spread the frames over the whole phase: the next is
				// accepted once the readers are as far on.
				for in.got.Load() < int64(len(accepted[w])*in.want/chaosWriterFrames) && !stop.Load() {
					runtime.Gosched()
				}
				if stop.Load() {
					return // the test gave up
				}
				if attempt%8 == 0 {
					c.shake()
				}
				switch attempt % 16 {
				case 5: // no connection has this address
					if _, err := c.write(h, addrPort, []byte("lost"), c.nowhere); err == nil {
						c.failf("%s %s to %v, which no connection has: no error", who, method, c.nowhere)
					} else {
						c.classify(method, who, err, ErrNoConnForAddr, os.ErrDeadlineExceeded)
					}
					continue
				case 11: // cannot be framed
					if _, err := c.write(h, addrPort, tooLarge, c.peerAPs[0]); err == nil {
						c.failf("%s %s of %d bytes: no error", who, method, len(tooLarge))
					} else {
						c.classify(method, who, err, ErrFrameTooLarge, os.ErrDeadlineExceeded)
					}
					continue
				}
				p := pcSeqPayload(w, seq, chaosWriteSize(w, seq))
				n, err := c.write(h, addrPort, p, c.peerAPs[seq%nPeers])
				seq++ // a frame that failed is never sent: the next has a new number
				switch {
				case err == nil && n != len(p):
					c.failf("%s %s: n = %d for a frame of %d bytes", who, method, n, len(p))
				case err == nil:
					accepted[w] = append(accepted[w], seq-1)
					c.writes.Add(1)
				case n != 0:
					c.failf("%s %s: n = %d with error %v", who, method, n, err)
				default:
					if c.classify(method, who, err, os.ErrDeadlineExceeded, ErrWriteBufferFull) == os.ErrDeadlineExceeded {
						c.writeTimeouts.Add(1)
						c.shake()
						runtime.Gosched()
					}
				}
			}
		})
	}

	// Deadlines and LocalAddr on their own, until the traffic is done.
	var others sync.WaitGroup
	trafficDone := make(chan struct{})
	for range 2 {
		others.Go(func() {
			<-gate
			for {
				select {
				case <-trafficDone:
					return
				default:
				}
				c.shake()
				c.checkLocalAddr()
				runtime.Gosched()
			}
		})
	}

	close(gate)
	select {
	case <-in.all:
	case <-time.After(chaosWithin):
		stop.Store(true)
		close(trafficDone)
		c.report(t)
		t.Fatalf("the readers got %d of %d peer frames within %v; missing (peer/seq): %v",
			in.got.Load(), in.want, chaosWithin, in.missing(chaosPeerFrames))
	}
	select {
	case <-waitGroupDone(&writers):
	case <-time.After(chaosWithin):
		stop.Store(true)
		close(trafficDone)
		c.report(t)
		t.Fatalf("the writers did not get %d frames each accepted within %v", chaosWriterFrames, chaosWithin)
	}
	close(trafficDone)
	c.await(t, waitGroupDone(&others), chaosWithin, "the deadline and LocalAddr goroutines")

	// No packet is left for the readers: wake them, with no deadline
	// moving any more.
	c.endChaos()
	stop.Store(true)
	for _, h := range c.handles {
		require.NoError(t, h.SetReadDeadline(time.Now().Add(-time.Second)))
	}
	c.await(t, waitGroupDone(&readers), chaosWithin, "the readers, woken by a passed deadline")
	for _, h := range c.handles {
		require.NoError(t, h.SetDeadline(time.Time{}))
	}

	// Every writer is done: the end marker is each peer's last frame.
	for _, ap := range c.peerAPs {
		_, err := c.handles[0].(pcAddrPortConn).WriteToAddrPort(chaosEnd, ap)
		require.NoError(t, err)
	}
	c.await(t, waitGroupDone(&peers), chaosWithin, "the peers")
	c.report(t)
	for i := range c.peers {
		rx := <-received[i]
		require.NoError(t, rx.err, "peer %d must read a clean stream of frames", i)
		for w := range chaosWriters {
			var want []int
			for _, seq := range accepted[w] {
				if seq%nPeers == i {
					want = append(want, seq)
				}
			}
			require.Equal(t, want, rx.perWriter[w], "peer %d gets every frame writer %d had accepted, once, in order, and no other", i, w)
		}
	}
}

// shutdown: the readers and writers run again, the writers now with frames
// of up to 30 KB to peers that no longer read (synchronous writes end up
// blocked), the peers send until the mux closes their connections, read
// deadlines keep moving (write deadlines too, to times that never come: a
// write that ends at its deadline mid-frame closes its connection, and the
// writers are to be blocked when Close comes). Then the first handle is
// closed by two Close calls at once, and later the second handle. Then
// (SPEC 5): exactly one of the two Close calls succeeds; closing the first
// handle returns its reads in progress within a second, and the second
// handle still reads; closing the second, the last, returns every call in
// progress within a second; those calls end with net.ErrClosed or, for
// reads, os.ErrDeadlineExceeded; a call made after its handle's Close
// returned fails with net.ErrClosed; LocalAddr still answers; the peers
// see their connections closed.
func (c *pcChaos) shutdown(t *testing.T) {
	nPeers := len(c.peers)
	in := newChaosInbox(nPeers, 0)
	var closing, closed [2]atomic.Bool // each handle's Close calls have begun, returned
	c.startChaos(false)

	var peers sync.WaitGroup
	peerErrs := make([]error, nPeers)
	for i, conn := range c.peers {
		peers.Go(func() {
			if err := conn.SetWriteDeadline(time.Now().Add(chaosWithin)); err != nil {
				peerErrs[i] = err
				return
			}
			for seq := chaosPeerFrames; ; seq++ {
				if _, err := conn.Write(frame(pcSeqPayload(i, seq, pcSeqSize(i, seq)))); err != nil {
					peerErrs[i] = err
					return
				}
			}
		})
	}

	var readers [2]sync.WaitGroup // per handle
	var calls sync.WaitGroup      // every goroutine that calls the PacketConn
	var reads [2]atomic.Int64     // per handle
	var writersIn atomic.Int64
	busy := make(chan struct{})
	var busyOnce sync.Once
	progress := func() {
		if reads[0].Load()+reads[1].Load() >= 10 && writersIn.Load() >= chaosWriters {
			busyOnce.Do(func() { close(busy) })
		}
	}
	for r := range 4 {
		k, addrPort := r/2, r%2 == 1
		h := c.handles[k]
		who, method := caller(k, true, addrPort)
		calls.Add(1)
		readers[k].Go(func() {
			defer calls.Done()
			buf := make([]byte, MaxFramePayload)
			last := make([]int, nPeers)
			for i := range last {
				last[i] = chaosPeerFrames - 1
			}
			for i := 0; ; i++ {
				if i%8 == 0 {
					c.shake()
				}
				after := closed[k].Load()
				n, from, err := c.read(h, addrPort, buf)
				if err == nil {
					if after {
						c.failf("%s %s after its Close: a packet", who, method)
						return
					}
					c.packet(in, who+" "+method, last, buf[:n], from)
					reads[k].Add(1)
					progress()
					continue
				}
				if !c.failedCallGoesOn(who, method, n, err, os.ErrDeadlineExceeded, &closing[k], after) {
					return
				}
				c.readTimeouts.Add(1)
				c.shake()
				runtime.Gosched()
			}
		})
	}
	for w := range chaosWriters {
		k, addrPort := w/2, w%2 == 1
		h := c.handles[k]
		who, method := caller(k, false, addrPort)
		calls.Go(func() {
			for seq := 0; ; seq++ {
				if seq == 0 {
					writersIn.Add(1) // about to be in a call
					progress()
				}
				if seq%8 == 0 {
					c.shake()
				}
				after := closed[k].Load()
				p := pcSeqPayload(w, seq, pcSeqSize(w, seq))
				n, err := c.write(h, addrPort, p, c.peerAPs[seq%nPeers])
				if err == nil {
					if after {
						c.failf("%s %s after its Close: no error", who, method)
						return
					}
					if n != len(p) {
						c.failf("%s %s: n = %d for a frame of %d bytes", who, method, n, len(p))
					}
					continue
				}
				if !c.failedCallGoesOn(who, method, n, err, ErrWriteBufferFull, &closing[k], after) {
					return
				}
				runtime.Gosched() // the buffer stays full until the socket drains, if ever
			}
		})
	}
	calls.Go(func() {
		for !closed[1].Load() {
			c.shake()
			c.checkLocalAddr()
			runtime.Gosched()
		}
		c.shake() // on closed handles
		c.checkLocalAddr()
	})

	c.await(t, busy, chaosWithin, "reading and writing")
	release := make(chan struct{})
	var closers sync.WaitGroup
	var errs [2]error
	for i := range errs {
		closers.Go(func() { <-release; errs[i] = c.handles[0].Close() })
	}
	c.closing.Store(true)
	closing[0].Store(true)
	start := time.Now()
	close(release)
	c.await(t, waitGroupDone(&closers), time.Second, "Close")
	closed[0].Store(true)
	c.await(t, waitGroupDone(&readers[0]), time.Second, "the first handle's reads in progress at its Close")
	took := time.Since(start)

	// The second handle reads on.
	more := reads[1].Load() + 5
	readingOn := make(chan struct{})
	go func() {
		for reads[1].Load() < more && time.Since(start) < chaosWithin {
			runtime.Gosched()
		}
		if reads[1].Load() >= more {
			close(readingOn)
		}
	}()
	c.await(t, readingOn, chaosWithin, "reads on the second handle after the first one closed")

	closing[1].Store(true)
	start = time.Now()
	err := c.handles[1].Close()
	closed[1].Store(true)
	c.await(t, waitGroupDone(&calls), time.Second, "every call in progress at the last handle's Close")
	t.Logf("calls returned within %v of the first handle's Close, %v of the last's",
		took.Round(time.Microsecond), time.Since(start).Round(time.Microsecond))
	c.endChaos()

	require.NoError(t, err, "the second handle's Close")
	if errs[0] != nil {
		errs[0], errs[1] = errs[1], errs[0]
	}
	require.NoError(t, errs[0], "one of two Close calls on a handle succeeds")
	require.ErrorIs(t, errs[1], net.ErrClosed, "the other fails: a handle closes once")
	requireOpError(t.Errorf, "Close", "handle 0", errs[1])

	c.await(t, waitGroupDone(&peers), chaosWithin, "the peers' writes, once the mux closed their connections")
	for i, err := range peerErrs {
		var netErr net.Error
		require.False(t, errors.As(err, &netErr) && netErr.Timeout(),
			"peer %d's connection must close with the PacketConn, it timed out instead: %v", i, err)
	}
}
