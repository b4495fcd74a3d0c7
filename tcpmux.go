// Package tcpmux lets every ICE agent of a server share one TCP port for
// ICE-TCP passive candidates (RFC 6544).
//
// A TCPMuxDefault accepts connections from a net.Listener, reads the first
// RFC 4571 frame of each, requires it to be a STUN Binding request (RFC
// 8489), takes the local ufrag from its USERNAME, and attaches the
// connection to the net.PacketConn of that ufrag, which an ICE agent obtains
// with GetConnByUfrag. Its types and methods match pion/ice v4's TCP mux,
// so ice.WithTCPMux and pion/webrtc's SettingEngine.SetICETCPMux accept it
// unchanged.
//
// Every byte from the network is treated as hostile: the first frame is
// bounded in size and time, validated before any per-ufrag state exists,
// and every rejection is counted in Stats. Connection limits cannot be
// turned against honest peers: when one is full, the mux evicts the oldest
// connection of the source holding the most (see
// TCPMuxParams.MaxPendingConnections and MaxConnections) instead of
// refusing newcomers. Memory follows the bytes that actually arrived or
// were sent, never the lengths a peer announces.
package tcpmux

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/logging"
)

// Locks. Every lock of the package, what it guards, and the one order in
// which they may be taken (a lock may be taken while holding any lock
// above it in this list, never one below). No lock is held across network
// I/O, except a connection's wsem, which serialises whole frames.
//
//	loanSweeper.mu      the sweeper's list of loans, their watched and
//	                    sweptUses fields (socket_loan.go)
//	TCPMuxDefault.mu    admission table, PacketConn registry, closing
//	tcpPacketConn.mu    a PacketConn's connections, handles, claim, expiry
//	socketLoan.mu       who reads a lone connection's socket, the readers
//	                    waiting, and the read deadline of a socket on loan
//	packetQueue.mu      queued packets, blocked pushers
//	streamConn.dlmu     the write deadline a socket carries (a write with
//	                    none skips it: see own in conn_writer.go)
//	deadline.mu         one handle's read or write deadline
//
// Leaves, taken with no other lock held: bufferedWriter.mu (buffered
// frames), fallbackListener.mu (connections handed over). streamConn.wsem,
// a semaphore, is held across a frame's Write and while a failed write
// removes its connection, which takes every lock above but the sweeper's,
// and bufferedWriter.mu; nothing waits for wsem while holding a lock.
//
// Channels of capacity 1 carry the wake-ups (signal): tcpPacketConn.readable
// for readers and packetQueue.writable for blocked pushers, where a woken
// waiter that leaves work behind passes the token on; streamConn.resume,
// one token per loan, for a lender whose loan ended.

// signal leaves a wake-up token in ch, a channel of capacity 1, unless one
// is already there.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// TCPMux is pion/ice v4's ice.TCPMux: what an ICE agent needs from a mux.
type TCPMux interface {
	io.Closer
	GetConnByUfrag(ufrag string, isIPv6 bool, local net.IP) (net.PacketConn, error)
	RemoveConnByUfrag(ufrag string)
}

// AllConnsGetter is pion/ice v4's ice.AllConnsGetter: a mux over several
// ports returns one PacketConn per port.
type AllConnsGetter interface {
	GetAllConns(ufrag string, isIPv6 bool, localIP net.IP) ([]net.PacketConn, error)
}

// closedError matches both net.ErrClosed and io.ErrClosedPipe, the two
// errors callers of net.PacketConn and of pion's muxes test for.
type closedError struct{ what string }

func (e *closedError) Error() string { return "tcpmux: " + e.what + " closed" }

func (e *closedError) Is(target error) bool {
	return target == net.ErrClosed || target == io.ErrClosedPipe
}

var (
	// ErrMuxClosed is returned by a closed mux. errors.Is matches it with
	// net.ErrClosed and io.ErrClosedPipe.
	ErrMuxClosed error = &closedError{what: "mux"}
	// ErrConnClosed is returned by a closed PacketConn or connection.
	// errors.Is matches it with net.ErrClosed and io.ErrClosedPipe.
	ErrConnClosed error = &closedError{what: "connection"}
	// ErrNoConnForAddr is returned by WriteTo for an address with no live
	// TCP connection in the PacketConn.
	ErrNoConnForAddr = errors.New("tcpmux: no connection for address")
	// ErrWriteBufferFull is returned by WriteTo in buffered mode when the
	// frame does not fit in the connection's write buffer; it was dropped.
	ErrWriteBufferFull = errors.New("tcpmux: write buffer full, frame dropped")
	// ErrFallbackDisabled is returned by FallbackListener().Accept when
	// TCPMuxParams.Fallback is false.
	ErrFallbackDisabled = errors.New("tcpmux: fallback is disabled")
	// ErrEmptyUfrag is returned by GetConnByUfrag for an empty ufrag.
	ErrEmptyUfrag = errors.New("tcpmux: empty ufrag")
)

// Accept back-off after errors other than a closed listener.
const (
	minAcceptBackoff = 5 * time.Millisecond
	maxAcceptBackoff = time.Second
)

// TCPMuxDefault multiplexes the ICE-TCP connections of one listener into
// per-ufrag net.PacketConns. Create it with NewTCPMuxDefault; it is safe for
// concurrent use.
type TCPMuxDefault struct {
	params   TCPMuxParams
	log      logging.LeveledLogger
	listener net.Listener
	port     int
	initErr  error
	fallback *fallbackListener
	stats    counters
	sweeper  loanSweeper

	// mu guards table, conns and the closing of done (see Locks above).
	mu     sync.Mutex
	closed atomic.Bool // written under mu
	done   chan struct{}
	table  admissionTable
	conns  map[string]ufragConns

	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

var (
	_ TCPMux         = (*TCPMuxDefault)(nil)
	_ net.PacketConn = (*packetConnHandle)(nil)
)

// NewTCPMuxDefault starts serving params.Listener at once. Zero fields of
// params take their documented defaults. If params fail Validate, the error
// is logged, the listener is closed (the mux owns it from the start) and
// the returned mux is closed: GetConnByUfrag returns the error.
func NewTCPMuxDefault(params TCPMuxParams) *TCPMuxDefault {
	p := params.populateDefaults()
	m := &TCPMuxDefault{
		params:   p,
		log:      p.Logger,
		listener: p.Listener,
		done:     make(chan struct{}),
		conns:    make(map[string]ufragConns),
	}
	m.table = newAdmissionTable(&m.stats)
	if err := params.Validate(); err != nil {
		m.log.Errorf("not serving: %v", err)
		if p.Listener != nil {
			_ = p.Listener.Close() // the mux owns it from the start
		}
		m.initErr = err
		m.closed.Store(true)
		close(m.done)
		return m
	}
	m.port = int(addrPortOf(p.Listener.Addr()).Port())
	m.fallback = newFallbackListener(m)
	m.wg.Add(1)
	go m.acceptLoop()
	return m
}

// LocalAddr is the listener's address.
func (m *TCPMuxDefault) LocalAddr() net.Addr {
	if m.listener == nil {
		return nil
	}
	return m.listener.Addr()
}

// Stats returns a consistent snapshot of the mux's counters: each
// connection counts in one state at most. It takes the mux's lock, which
// is never held across I/O, so it never waits on a peer.
func (m *TCPMuxDefault) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stats.snapshot()
}

// FallbackListener yields the connections that do not speak framed STUN
// when TCPMuxParams.Fallback is set, with the bytes the mux read replayed.
// Its Addr is the mux's; closing it stops the hand-over; the mux's Close
// closes it. Without Fallback, its Accept fails at once.
func (m *TCPMuxDefault) FallbackListener() net.Listener {
	if m.fallback == nil {
		return newFallbackListener(m) // for a mux that never started
	}
	return m.fallback
}

func (m *TCPMuxDefault) isClosed() bool { return m.closed.Load() }

// GetConnByUfrag returns a new handle on the PacketConn of (ufrag, isIPv6,
// local), creating the PacketConn if needed, or claiming one that incoming
// connections created, with every packet they queued. The PacketConn
// closes with its last handle.
func (m *TCPMuxDefault) GetConnByUfrag(ufrag string, isIPv6 bool, local net.IP) (net.PacketConn, error) {
	if ufrag == "" {
		return nil, ErrEmptyUfrag
	}
	ip, _ := netip.AddrFromSlice(local)
	key := pcKey{ipv6: isIPv6, local: ip.Unmap()}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.initErr != nil {
		return nil, m.initErr
	}
	if m.closed.Load() {
		return nil, ErrMuxClosed
	}
	pc := m.conns[ufrag].get(key)
	if pc == nil || !pc.acquire(&m.table) {
		pc = m.newPacketConnLocked(ufrag, key)
		pc.acquire(&m.table)
	}
	return newPacketConnHandle(pc), nil
}

// RemoveConnByUfrag closes every PacketConn of ufrag, in both families and
// on every local IP, with their connections. Idempotent.
func (m *TCPMuxDefault) RemoveConnByUfrag(ufrag string) {
	m.mu.Lock()
	pcs := make([]*tcpPacketConn, 0, len(m.conns[ufrag]))
	for _, pc := range m.conns[ufrag] {
		pcs = append(pcs, pc)
	}
	m.mu.Unlock()
	for _, pc := range pcs {
		pc.close()
	}
}

// Close closes the listener, every pending and attached connection, every
// PacketConn and the fallback listener, and returns once every goroutine
// the mux started has exited, except one running PasswordLookup: Close
// does not wait for it, so that the lookup may call Close, and it exits
// as soon as the lookup returns, touching nothing. Later calls return nil.
func (m *TCPMuxDefault) Close() error {
	first := false
	m.closeOnce.Do(func() {
		first = true
		m.closeErr = m.shutdown()
	})
	if !first {
		return nil
	}
	return m.closeErr
}

func (m *TCPMuxDefault) shutdown() error {
	if m.initErr != nil {
		return nil
	}
	m.mu.Lock()
	m.closed.Store(true)
	close(m.done)
	pending := m.table.pendingConns()
	m.dropLookupsLocked(pending)
	var pcs []*tcpPacketConn
	for _, byKey := range m.conns {
		for _, pc := range byKey {
			pcs = append(pcs, pc)
		}
	}
	m.mu.Unlock()

	err := m.listener.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	for _, c := range pending {
		c.close() // their goroutines count them as Other, or dropLookupsLocked did
	}
	for _, pc := range pcs {
		pc.close()
	}
	_ = m.fallback.Close()
	m.wg.Wait()
	return err
}

// enterCallback registers a timer callback with the WaitGroup that Close
// waits on, unless the mux is closed.
func (m *TCPMuxDefault) enterCallback() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed.Load() {
		return false
	}
	m.wg.Add(1)
	return true
}

// dropLookupsLocked counts as Other, as their goroutines would, the
// pending connections whose goroutines are out in PasswordLookup: they
// will find the mux closed and exit without counting, and Stats must be
// final when Close returns. Called with m.mu held.
func (m *TCPMuxDefault) dropLookupsLocked(pending []*streamConn) {
	for _, c := range pending {
		if c.inLookup && m.table.drop(c) {
			m.stats.reject(rejectOther)
		}
	}
}

// lookupPassword calls PasswordLookup with the connection's goroutine out
// of m.wg, in the manner of enterCallback: the lookup is user code and may
// call Close, which waits on m.wg. It returns leftMux if the mux closed
// meanwhile: Close then accounted for the connection (dropLookupsLocked)
// and the goroutine, no longer in m.wg, must exit touching nothing of the
// mux. (The Logger is user code too, called under m.wg; a logger has no
// reason to close the mux.)
func (m *TCPMuxDefault) lookupPassword(c *streamConn, lookup func(string) (string, bool), ufrag []byte) (password string, ok bool, _ rejectReason) {
	if !m.leaveForLookup(c) {
		return "", false, rejectOther // closing: counted as Close's pending ones
	}
	password, ok = lookup(string(ufrag))
	if !m.returnFromLookup(c) {
		c.close() // Close closes it too; no need to wait for that
		return "", false, leftMux
	}
	return password, ok, rejectNone
}

// leaveForLookup takes c's goroutine out of m.wg, unless the mux is
// closed.
func (m *TCPMuxDefault) leaveForLookup(c *streamConn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed.Load() {
		return false
	}
	c.inLookup = true
	m.wg.Done()
	return true
}

// returnFromLookup puts c's goroutine back in m.wg, unless the mux closed
// meanwhile.
func (m *TCPMuxDefault) returnFromLookup(c *streamConn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed.Load() {
		return false
	}
	c.inLookup = false
	m.wg.Add(1)
	return true
}

func (m *TCPMuxDefault) acceptLoop() {
	defer m.wg.Done()
	var backoff time.Duration
	for {
		conn, err := m.listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || m.isClosed() {
				return
			}
			backoff = min(max(2*backoff, minAcceptBackoff), maxAcceptBackoff)
			m.log.Warnf("accept failed, retrying in %v: %v", backoff, err)
			if !m.sleep(backoff) {
				return
			}
			continue
		}
		backoff = 0
		m.stats.accepted.Add(1)
		m.startConn(conn)
	}
}

// sleep waits for d or Close, reporting whether the mux is still open.
func (m *TCPMuxDefault) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-m.done:
		return false
	}
}

// startConn admits a connection, evicting older ones if a limit is full
// (admission.go), and starts its goroutine, which reads the first frame
// and then every later one. It never waits on the peer: a wrapped conn's
// addresses are asked for on the connection's own goroutine.
func (m *TCPMuxDefault) startConn(conn net.Conn) {
	c := newStreamConn(m, conn)
	src := sourceAtAccept(conn)
	m.mu.Lock()
	if m.closed.Load() {
		m.mu.Unlock()
		m.stats.reject(rejectOther)
		c.close()
		return
	}
	evicted, refuse := m.table.admit(c, src, m.limits())
	if refuse != rejectNone {
		m.mu.Unlock()
		m.stats.reject(refuse) // counted first: the peer may look at once
		m.log.Debugf("connection refused: %v", refuse)
		c.close()
		return
	}
	m.wg.Add(1)
	m.mu.Unlock()
	for _, victim := range evicted {
		m.closeEvicted(victim)
	}
	go m.serveConn(c, time.Now())
}

func (m *TCPMuxDefault) limits() limits {
	p := &m.params
	return limits{maxHeld: p.MaxConnections, maxPending: p.MaxPendingConnections, maxPerSource: p.MaxConnectionsPerIP}
}

// closeEvicted closes a connection the table evicted: it leaves its
// PacketConn (an unclaimed one closes with its last connection) and its
// goroutine sees the stream end.
func (m *TCPMuxDefault) closeEvicted(c *streamConn) {
	m.log.Debugf("connection evicted to make room")
	if c.pc != nil { // set under mu before the eviction, never changed
		c.pc.removeConn(c)
	}
	c.close()
}

// serveConn is a connection's goroutine, registered with m.wg by
// startConn. It leaves m.wg when it ends, unless it left already because
// the mux closed during PasswordLookup (see lookupPassword).
func (m *TCPMuxDefault) serveConn(c *streamConn, accepted time.Time) {
	if m.serve(c, accepted) {
		m.wg.Done()
	}
}

// serve reads and admits the first frame, then every later one. It
// reports whether the goroutine is still in m.wg.
func (m *TCPMuxDefault) serve(c *streamConn, accepted time.Time) (inWaitGroup bool) {
	// The deadline comes first: a wrapped conn such as a PROXY-protocol
	// one may read from the network to learn its addresses.
	if err := c.conn.SetReadDeadline(accepted.Add(m.params.FirstStunBindTimeout)); err != nil {
		m.reject(c, rejectOther)
		return true
	}
	c.learnAddrs()
	if verdict := m.learnSource(c); verdict != rejectNone {
		m.reject(c, verdict)
		return true
	}
	fr := NewFrameReader(c.conn, m.params.MaxFirstFrameSize)
	frame, ufrag, verdict := m.readFirstFrame(c, fr)
	switch verdict {
	case rejectNone:
		verdict = m.attach(c, ufrag)
	case handedOver:
		return true
	case leftMux:
		return false
	}
	if verdict != rejectNone {
		m.reject(c, verdict)
		return true
	}
	fr.setMaxPayload(MaxFramePayload)
	c.fr = fr
	if c.pc.deliver(c, frame) {
		c.readLoop()
	}
	c.fail(io.EOF) // no-op unless the PacketConn closed under a blocked reader
	c.waitWriters()
	return true
}

// learnSource counts a connection whose address was unknown at accept
// under its real source, now that its RemoteAddr is known.
func (m *TCPMuxDefault) learnSource(c *streamConn) rejectReason {
	src := sourceOf(c.remoteAP.Addr())
	m.mu.Lock()
	defer m.mu.Unlock()
	held, refuse := m.table.learnSource(c, src, m.params.MaxConnectionsPerIP)
	if !held {
		return rejectOther // evicted meanwhile: reject counts nothing
	}
	return refuse
}

// Verdicts for connections that need no reject: handedOver for one that
// handOver dealt with (given to the fallback listener, or closed and
// counted there), leftMux for one whose goroutine left m.wg for
// PasswordLookup and found the mux closed on return (Close counted it).
const (
	handedOver = rejectReason(255)
	leftMux    = rejectReason(254)
)

// readFirstFrame reads and validates the first frame under the
// first-frame deadline, already set, or hands a non-STUN connection to the
// fallback. Its verdict is leftMux if the mux closed during PasswordLookup.
func (m *TCPMuxDefault) readFirstFrame(c *streamConn, fr *FrameReader) (frame, ufrag []byte, _ rejectReason) {
	if m.params.Fallback {
		head, err := fr.peek(stunSniffSize)
		if err != nil {
			return nil, nil, readFailure(err)
		}
		if !looksLikeBindingRequest(head) {
			return nil, nil, m.handOver(c, fr)
		}
	}
	frame, err := fr.Next()
	if err != nil {
		return nil, nil, readFailure(err)
	}
	ufrag, reason := parseBindingRequest(frame)
	if reason != rejectNone {
		return nil, nil, reason
	}
	if lookup := m.params.PasswordLookup; lookup != nil {
		password, ok, verdict := m.lookupPassword(c, lookup, ufrag)
		if verdict != rejectNone {
			return nil, nil, verdict
		}
		if !ok || !verifyIntegrity(frame, password) {
			return nil, nil, rejectAuth
		}
	}
	// A connection too broken to clear its deadline fails its next Read
	// and leaves quietly; its valid request is still delivered.
	_ = c.conn.SetReadDeadline(time.Time{})
	return frame, ufrag, rejectNone
}

func readFailure(err error) rejectReason {
	var netErr net.Error
	switch {
	case errors.Is(err, ErrFrameTooLarge):
		return rejectTooLarge
	case errors.As(err, &netErr) && netErr.Timeout():
		return rejectTimeout
	default:
		return rejectOther
	}
}

// attach joins an admitted connection to the PacketConn of its ufrag,
// family and local IP, creating an unclaimed one if nobody asked for it.
func (m *TCPMuxDefault) attach(c *streamConn, ufrag []byte) rejectReason {
	key := pcKey{ipv6: !c.remoteAP.Addr().Is4(), local: c.local}
	c.multipath = isMultipath(c.conn)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed.Load() || !c.entry.in { // closing, or evicted meanwhile
		return rejectOther
	}
	byKey := m.conns[string(ufrag)]
	if limit := m.params.MaxConnectionsPerUfrag; limit > 0 && attachedCount(byKey) >= limit {
		return rejectLimit
	}
	pc := byKey.get(key)
	for {
		if pc == nil {
			pc = m.newPacketConnLocked(string(ufrag), key)
			pc.startExpiry()
		}
		dead, duplicate, claimed := pc.addConn(c)
		if duplicate {
			return rejectOther
		}
		if !dead {
			m.table.attach(c, claimed)
			return rejectNone
		}
		pc = nil
	}
}

func attachedCount(byKey ufragConns) int {
	n := 0
	for _, pc := range byKey {
		n += pc.connCount()
	}
	return n
}

// newPacketConnLocked creates and registers a PacketConn. Called with m.mu
// held.
func (m *TCPMuxDefault) newPacketConnLocked(ufrag string, key pcKey) *tcpPacketConn {
	pc := newTCPPacketConn(m, ufrag, key)
	byKey := m.conns[ufrag]
	if i := byKey.index(key); i >= 0 {
		byKey[i] = pc // the old one is closing: forget leaves pc in place
	} else {
		m.conns[ufrag] = append(byKey, pc)
	}
	m.stats.packetConns.Add(1)
	return pc
}

// ufragConns are the PacketConns of one ufrag, one per (family, local IP):
// one or two in practice, so a slice, which costs a session less than a
// map.
type ufragConns []*tcpPacketConn

func (pcs ufragConns) index(key pcKey) int {
	for i, pc := range pcs {
		if pc.key == key {
			return i
		}
	}
	return -1
}

func (pcs ufragConns) get(key pcKey) *tcpPacketConn {
	if i := pcs.index(key); i >= 0 {
		return pcs[i]
	}
	return nil
}

// forget unregisters a closing PacketConn, leaving any newer one of the
// same key in place, and ends the accounting of the connections closing
// with it.
func (m *TCPMuxDefault) forget(pc *tcpPacketConn, conns []*streamConn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range conns {
		m.table.drop(c)
	}
	m.stats.packetConns.Add(-1)
	byKey := m.conns[pc.ufrag]
	i := byKey.index(pc.key)
	if i < 0 || byKey[i] != pc {
		return
	}
	if len(byKey) == 1 {
		delete(m.conns, pc.ufrag)
		return
	}
	m.conns[pc.ufrag] = slices.Delete(byKey, i, i+1)
}

// reject closes a connection that was not admitted and counts why, unless
// its accounting closed already (evicted).
func (m *TCPMuxDefault) reject(c *streamConn, reason rejectReason) {
	m.mu.Lock()
	counted := m.table.drop(c)
	if counted {
		m.stats.reject(reason)
	}
	m.mu.Unlock()
	if counted {
		m.log.Debugf("rejected connection from %s: %v", c.remoteAP, reason)
	}
	c.close()
}

// forgetConn ends the accounting of a connection that leaves on its own
// account (ended, failed, removed).
func (m *TCPMuxDefault) forgetConn(c *streamConn) {
	m.mu.Lock()
	m.table.drop(c)
	m.mu.Unlock()
}

// String describes the mux for logs.
func (m *TCPMuxDefault) String() string {
	return fmt.Sprintf("tcpmux(%v)", m.LocalAddr())
}
