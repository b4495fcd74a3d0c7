// Adversarial tests of SPEC 8 (limits under flood, eviction, per-source
// limits), of the bounded unclaimed PacketConns of SPEC 3, and of the Stats
// that report them (SPEC 6): floods over loopback from one attacker source
// while honest peers from other sources connect, model-checked unit tests of
// the admission table, and the params that go with them (SPEC 2).
package tcpmux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/netip"
	"os"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// --- helpers -------------------------------------------------------------

// floodIP is 127.0.0.x: loopback accepts any 127/8 source address, so
// each x is a source of its own for the mux.
func floodIP(x int) net.IP { return net.IPv4(127, 0, 0, byte(x)) }

// floodDial connects to the mux from ip. It does not touch t, so
// goroutines may call it.
func floodDial(m *TCPMuxDefault, ip net.IP) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 3 * time.Second}
	return d.Dial("tcp4", m.LocalAddr().String())
}

// floodRequest is a valid ICE Binding request for ufrag, built without t
// for goroutines.
func floodRequest(ufrag string) []byte {
	msg, err := stun.Build(stun.BindingRequest, stun.TransactionID, stun.NewUsername(ufrag+":peer"), stun.Fingerprint)
	if err != nil {
		panic(err)
	}
	return msg.Raw
}

// floodRead reads one packet within d, without touching t.
func floodRead(pc net.PacketConn, d time.Duration) ([]byte, net.Addr, error) {
	if err := pc.SetReadDeadline(time.Now().Add(d)); err != nil {
		return nil, nil, err
	}
	buf := make([]byte, MaxFramePayload)
	n, addr, err := pc.ReadFrom(buf)
	return buf[:n], addr, err
}

// floodAccounting checks SPEC 6's partition of accepted connections: every
// accepted connection is pending, attached, handed over, rejected, or gone,
// so the first four never add up to more than ConnsAccepted.
func floodAccounting(s Stats) error {
	inStates := uint64(s.ConnsPending) + uint64(s.ConnsActive) + s.FallbackConns + s.ConnsRejected
	if s.ConnsAccepted < inStates {
		return fmt.Errorf("ConnsAccepted %d < ConnsPending %d + ConnsActive %d + FallbackConns %d + ConnsRejected %d",
			s.ConnsAccepted, s.ConnsPending, s.ConnsActive, s.FallbackConns, s.ConnsRejected)
	}
	if r := s.Rejected; r.total() != s.ConnsRejected {
		return fmt.Errorf("ConnsRejected %d != sum of Rejected %d (%+v)", s.ConnsRejected, r.total(), r)
	}
	return nil
}

// floodSampler checks a condition on every Stats snapshot it takes while a
// flood runs.
type floodSampler struct {
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
	samples  int
	failures int
	first    []string
}

func startFloodSampler(t testing.TB, m *TCPMuxDefault, check func(Stats) error) *floodSampler {
	s := &floodSampler{stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(s.halt) // if the test fails before finish
	go func() {
		defer close(s.done)
		tick := time.NewTicker(200 * time.Microsecond)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
			s.samples++
			if err := check(m.Stats()); err != nil {
				s.failures++
				if len(s.first) < 5 {
					s.first = append(s.first, err.Error())
				}
			}
		}
	}()
	return s
}

func (s *floodSampler) halt() {
	s.stopOnce.Do(func() { close(s.stop) })
	<-s.done
}

// finish stops the sampler and fails the test if any sample failed.
func (s *floodSampler) finish(t testing.TB) {
	t.Helper()
	s.halt()
	t.Logf("stats sampled %d times during the flood", s.samples)
	require.Greater(t, s.samples, 10, "the sampler ran")
	if s.failures > 0 {
		t.Errorf("%d of %d Stats samples broke an invariant; first ones:\n%s", s.failures, s.samples, strings.Join(s.first, "\n"))
	}
}

// endFlood stops the attacker and the sampler and checks what every flood
// must leave: at least 90 percent of the honest peers admitted, by evicting
// the attacker's connections. It returns the final Stats.
func endFlood(t *testing.T, m *TCPMuxDefault, attacker *floodAttacker, sampler *floodSampler, admitted, honest int) Stats {
	t.Helper()
	attacker.finish()
	sampler.finish(t)
	s := m.Stats()
	t.Logf("attacker: %d dials (%d failed), %d closed by the mux; stats: %+v", attacker.dials.Load(), attacker.failures.Load(), attacker.closed.Load(), s)
	require.GreaterOrEqual(t, float64(admitted), 0.9*float64(honest), "at least 90 percent of honest peers get in")
	require.Positive(t, s.Rejected.Evicted)
	return s
}

// floodAttacker keeps workers connections open from one source, re-dialing
// each one the mux closes, until stopped or until it has dialed maxDials
// times. A connection sends first(n) if first is not nil (n numbers the
// dials), then reads until the mux closes it.
type floodAttacker struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	dials    atomic.Int64
	closed   atomic.Int64 // closed by the mux
	failures atomic.Int64 // dials that failed

	mu      sync.Mutex
	stopped bool
	conns   map[net.Conn]struct{}
}

func startFloodAttacker(m *TCPMuxDefault, ip net.IP, workers int, maxDials int64, first func(n int64) []byte) *floodAttacker {
	a := &floodAttacker{stop: make(chan struct{}), conns: make(map[net.Conn]struct{})}
	a.wg.Add(workers)
	for range workers {
		go func() {
			defer a.wg.Done()
			for {
				n := a.dials.Add(1)
				if n > maxDials {
					return
				}
				conn, err := floodDial(m, ip)
				if err != nil {
					a.failures.Add(1)
					select {
					case <-a.stop:
						return
					case <-time.After(time.Millisecond): // back off, then retry
					}
					continue
				}
				if !a.track(conn) {
					_ = conn.Close()
					return
				}
				if first != nil {
					_, _ = conn.Write(frame(first(n)))
				}
				_, _ = io.Copy(io.Discard, conn) // until the mux closes it, or stop does
				a.untrack(conn)
				_ = conn.Close()
				select {
				case <-a.stop:
					return
				default:
					a.closed.Add(1)
				}
			}
		}()
	}
	return a
}

func (a *floodAttacker) track(c net.Conn) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopped {
		return false
	}
	a.conns[c] = struct{}{}
	return true
}

func (a *floodAttacker) untrack(c net.Conn) {
	a.mu.Lock()
	delete(a.conns, c)
	a.mu.Unlock()
}

// finish closes every connection of the attacker and waits for its
// workers.
func (a *floodAttacker) finish() {
	a.mu.Lock()
	if !a.stopped {
		a.stopped = true
		close(a.stop)
		for c := range a.conns {
			_ = c.Close()
		}
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// floodChurned returns a condition that holds when full reports true and
// the eviction count has grown by at least churn since the last time the
// condition held: the flood is at full strength and still going.
func floodChurned(full func() (bool, uint64), churn uint64) func() bool {
	var mark atomic.Uint64
	return func() bool {
		ok, evicted := full()
		if !ok || evicted < mark.Load()+churn {
			return false
		}
		mark.Store(evicted)
		return true
	}
}

// honestPeer is one well-behaved ICE peer: its ufrag is claimed by the app
// before it dials, and it sends its Binding request at once.
type honestPeer struct {
	ip    net.IP
	ufrag string
	req   []byte
	pc    net.PacketConn

	conn     net.Conn // the client side, once dialed
	from     net.Addr // its address as the app sees it
	admitted bool
	err      error
	latency  time.Duration
}

// distinctIPs puts peer i on 127.0.0.(first+i): a source of its own.
func distinctIPs(first int) func(int) net.IP {
	return func(i int) net.IP { return floodIP(first + i) }
}

// sharedIP puts every peer on 127.0.0.x, as behind a NAT.
func sharedIP(x int) func(int) net.IP {
	return func(int) net.IP { return floodIP(x) }
}

// newHonestPeers claims n ufrags and prepares n peers, peer i dialing from
// ip(i).
func newHonestPeers(t testing.TB, m *TCPMuxDefault, n int, ip func(int) net.IP, prefix string) []*honestPeer {
	t.Helper()
	peers := make([]*honestPeer, n)
	for i := range peers {
		ufrag := fmt.Sprintf("%s%02d", prefix, i)
		peers[i] = &honestPeer{ip: ip(i), ufrag: ufrag, req: bindingRequest(t, ufrag), pc: getConn(t, m, ufrag)}
	}
	t.Cleanup(func() {
		for _, p := range peers {
			if p.conn != nil {
				_ = p.conn.Close()
			}
		}
	})
	return peers
}

// run dials and sends the first frame; the peer is admitted if the app
// reads that frame within 2 s.
func (p *honestPeer) run(m *TCPMuxDefault) {
	start := time.Now()
	conn, err := floodDial(m, p.ip)
	if err != nil {
		p.err = fmt.Errorf("dial: %w", err)
		return
	}
	p.conn = conn
	if _, err := conn.Write(frame(p.req)); err != nil {
		p.err = fmt.Errorf("write: %w", err)
		return
	}
	got, from, err := floodRead(p.pc, 2*time.Second)
	switch {
	case err != nil:
		p.err = fmt.Errorf("app read: %w", err)
	case !bytes.Equal(got, p.req):
		p.err = errors.New("app read another packet than the first request")
	default:
		p.admitted, p.from, p.latency = true, from, time.Since(start)
	}
}

// runHonestWaves runs the peers in waves of size, each wave concurrently,
// and returns how many were admitted. Before each wave, ready must hold
// (the flood is at full strength).
func runHonestWaves(t testing.TB, m *TCPMuxDefault, peers []*honestPeer, size int, ready func() bool) int {
	t.Helper()
	for start := 0; start < len(peers); start += size {
		eventually(t, ready, "the flood is at full strength before the wave")
		var wg sync.WaitGroup
		for _, p := range peers[start:min(start+size, len(peers))] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.run(m)
			}()
		}
		wg.Wait()
	}
	admitted := 0
	var worst time.Duration
	for _, p := range peers {
		if p.admitted {
			admitted++
			worst = max(worst, p.latency)
		} else {
			t.Logf("honest peer %s (%s) not admitted: %v", p.ip, p.ufrag, p.err)
		}
	}
	t.Logf("honest peers admitted: %d/%d (%.0f%%), slowest admission %v", admitted, len(peers), 100*float64(admitted)/float64(len(peers)), worst)
	return admitted
}

// roundTrip checks that an admitted peer's connection still works both
// ways: the app writes to it, the peer reads the frame.
func (p *honestPeer) roundTrip(t testing.TB, payload []byte) {
	t.Helper()
	_, err := p.pc.WriteTo(payload, p.from)
	require.NoError(t, err, "app WriteTo %s (%s)", p.from, p.ufrag)
	require.Equal(t, payload, readFrame(t, p.conn), "peer %s (%s) reads the app's frame", p.from, p.ufrag)
}

// --- 1. Pending flood from one source ------------------------------------

// SPEC 8: an attacker holding twice MaxPendingConnections silent
// connections from one source, re-dialing each one evicted, cannot keep
// honest peers from other sources out: each newcomer evicts the attacker's
// oldest pending connection. ConnsPending never exceeds the limit.
func TestFloodPendingFromOneSource(t *testing.T) {
	const (
		maxPending = 64
		honestN    = 40
	)
	m := newTestMux(t, TCPMuxParams{MaxPendingConnections: maxPending})
	peers := newHonestPeers(t, m, honestN, distinctIPs(10), "pend")

	sampler := startFloodSampler(t, m, func(s Stats) error {
		if s.ConnsPending > maxPending {
			return fmt.Errorf("ConnsPending %d > MaxPendingConnections %d", s.ConnsPending, maxPending)
		}
		return floodAccounting(s)
	})
	attacker := startFloodAttacker(m, floodIP(2), 2*maxPending, 200_000, nil)
	defer attacker.finish()

	// Before each wave of honest peers the attacker holds the whole
	// pending table and has had a few hundred connections evicted since
	// the last wave.
	full := floodChurned(func() (bool, uint64) {
		s := m.Stats()
		return s.ConnsPending == maxPending, s.Rejected.Evicted
	}, 4*maxPending)
	admitted := runHonestWaves(t, m, peers, 5, full)
	eventually(t, full, "the attacker still holds the pending table after the last wave")

	s := endFlood(t, m, attacker, sampler, admitted, honestN)
	require.Zero(t, s.Rejected.Limit, "MaxPendingConnections evicts, it never refuses")

	// Quiescent now: the attacker's connections have all gone (rejected:
	// evicted, or Other when they closed before their first frame), and
	// the admitted honest ones are attached. Nothing has gone after
	// attaching, so the partition is exact.
	eventually(t, func() bool { return m.Stats().ConnsPending == 0 }, "the attacker's pending connections are gone")
	s = m.Stats()
	require.Equal(t, admitted, s.ConnsActive, "every admitted honest peer is still attached")
	require.Equal(t, s.ConnsAccepted, s.ConnsRejected+uint64(s.ConnsActive), "accepted = rejected + attached: %+v", s)
	for _, p := range peers {
		if p.admitted {
			p.roundTrip(t, []byte("still there"))
		}
	}
}

// --- 2. Unclaimed flood filling MaxConnections ---------------------------

// SPEC 8: an attacker filling MaxConnections with connections on ufrags
// nobody claims, re-dialing each one evicted, cannot keep out honest peers
// whose ufrag the app claimed, and a connection attached to a claimed
// PacketConn is never evicted. Some honest peers share one address (a
// NAT): once they are in, that source holds more connections than the
// attacker can, so only their being unevictable keeps them.
func TestFloodUnclaimedFillsMaxConnections(t *testing.T) {
	const (
		maxConns  = 50
		distinctN = 15 // honest peers from sources of their own
		natN      = 20 // honest peers behind one address
		honestN   = distinctN + natN
	)
	m := newTestMux(t, TCPMuxParams{MaxConnections: maxConns})
	distinct := newHonestPeers(t, m, distinctN, distinctIPs(10), "claimed")
	nat := newHonestPeers(t, m, natN, sharedIP(9), "nat")
	var peers []*honestPeer
	for i := range max(distinctN, natN) { // interleaved in the waves
		if i < distinctN {
			peers = append(peers, distinct[i])
		}
		if i < natN {
			peers = append(peers, nat[i])
		}
	}

	sampler := startFloodSampler(t, m, func(s Stats) error {
		if held := s.ConnsPending + s.ConnsActive; held > maxConns {
			return fmt.Errorf("ConnsPending %d + ConnsActive %d > MaxConnections %d", s.ConnsPending, s.ConnsActive, maxConns)
		}
		return floodAccounting(s)
	})
	attacker := startFloodAttacker(m, floodIP(2), 2*maxConns, 200_000, func(n int64) []byte {
		return floodRequest(fmt.Sprintf("junk%d", n))
	})
	defer attacker.finish()

	full := floodChurned(func() (bool, uint64) {
		s := m.Stats()
		return s.ConnsPending+s.ConnsActive == maxConns, s.Rejected.Evicted
	}, 4*maxConns)
	admitted := runHonestWaves(t, m, peers, 5, full)

	// The flood goes on: the honest connections stay, attached.
	eventually(t, full, "the flood is still at full strength")
	for _, p := range peers {
		if p.admitted {
			p.roundTrip(t, []byte("during the flood"))
		}
	}
	s := endFlood(t, m, attacker, sampler, admitted, honestN)
	require.Positive(t, s.UnclaimedExpired, "an evicted connection closes its unclaimed PacketConn")
	require.Zero(t, s.Rejected.Limit, "there was always an evictable connection")

	// The attacker's connections leave with their unclaimed PacketConns;
	// every honest one stays.
	eventually(t, func() bool {
		s := m.Stats()
		return s.ConnsPending == 0 && s.ConnsActive == admitted && s.PacketConns == honestN
	}, "only the honest connections and claimed PacketConns are left")
	for _, p := range peers {
		if p.admitted {
			p.roundTrip(t, []byte("after the flood"))
		}
	}
	require.NoError(t, floodAccounting(m.Stats()))
}

// --- 3. Nothing evictable ----------------------------------------------------

// SPEC 8: with MaxConnections held by connections of claimed PacketConns,
// a newcomer is refused (Limit) and nobody is evicted.
func TestFloodNothingEvictableRefuses(t *testing.T) {
	const maxConns = 5
	m := newTestMux(t, TCPMuxParams{MaxConnections: maxConns})
	peers := newHonestPeers(t, m, maxConns, distinctIPs(10), "full")
	for _, p := range peers {
		p.run(m)
		require.True(t, p.admitted, "peer %s: %v", p.ip, p.err)
	}
	eventually(t, func() bool { return m.Stats().ConnsActive == maxConns }, "the table is full of claimed connections")

	// A silent newcomer, and one with a valid request for a claimed
	// ufrag, from sources of their own and from a held one.
	waitClosedByPeer(t, dialFrom(t, m, floodIP(20), nil), time.Second)
	waitClosedByPeer(t, dialFrom(t, m, floodIP(21), peers[0].req), time.Second)
	waitClosedByPeer(t, dialFrom(t, m, peers[1].ip, peers[1].req), time.Second)

	s := m.Stats()
	require.Equal(t, uint64(3), s.Rejected.Limit)
	require.Zero(t, s.Rejected.Evicted, "a connection of a claimed PacketConn is never evicted")
	require.Equal(t, uint64(3), s.ConnsRejected)
	require.Equal(t, maxConns, s.ConnsActive)
	require.Zero(t, s.ConnsPending)
	for _, p := range peers {
		p.roundTrip(t, []byte("kept"))
	}

	// Room again once a held connection leaves on its own.
	require.NoError(t, peers[0].conn.Close())
	eventually(t, func() bool { return m.Stats().ConnsActive == maxConns-1 }, "the closed connection left")
	late := dialFrom(t, m, floodIP(22), peers[0].req)
	got, from := readPacket(t, peers[0].pc)
	require.Equal(t, peers[0].req, got)
	require.Equal(t, late.LocalAddr().String(), from.String())
	require.Equal(t, uint64(3), m.Stats().Rejected.Limit)
}

// --- 4. MaxConnectionsPerIP ------------------------------------------------

// SPEC 8: MaxConnectionsPerIP counts a source's pending and attached
// connections; a newcomer over it is refused (Limit) and evicts nobody,
// even when a full pending table would otherwise evict; other sources get
// in.
func TestFloodMaxConnectionsPerIP(t *testing.T) {
	t.Run("pending and attached count together", func(t *testing.T) {
		m := newTestMux(t, TCPMuxParams{MaxConnectionsPerIP: 3})
		a := floodIP(2)
		pcA := getConn(t, m, "a")
		reqA := bindingRequest(t, "a")
		attached := []net.Conn{dialFrom(t, m, a, reqA), dialFrom(t, m, a, reqA)}
		readPacket(t, pcA)
		readPacket(t, pcA)
		pending := dialFrom(t, m, a, nil)
		eventually(t, func() bool { s := m.Stats(); return s.ConnsActive == 2 && s.ConnsPending == 1 }, "two attached, one pending")

		waitClosedByPeer(t, dialFrom(t, m, a, reqA), time.Second)
		s := m.Stats()
		require.Equal(t, uint64(1), s.Rejected.Limit)
		require.Zero(t, s.Rejected.Evicted)
		require.Equal(t, 2, s.ConnsActive)
		require.Equal(t, 1, s.ConnsPending)

		// Another source is unaffected.
		pcB := getConn(t, m, "b")
		dialFrom(t, m, floodIP(3), bindingRequest(t, "b"))
		readPacket(t, pcB)

		// The pending connection of A was not evicted: it still gets in.
		_, err := pending.Write(frame(reqA))
		require.NoError(t, err)
		_, from := readPacket(t, pcA)
		require.Equal(t, pending.LocalAddr().String(), from.String())
		for _, c := range append(attached, pending) {
			_, err := pcA.WriteTo([]byte("hi"), c.LocalAddr())
			require.NoError(t, err)
			require.Equal(t, []byte("hi"), readFrame(t, c))
		}

		// A connection that leaves frees its place.
		require.NoError(t, attached[0].Close())
		eventually(t, func() bool { return m.Stats().ConnsActive == 3 }, "A's closed connection left") // 2 of A + B
		dialFrom(t, m, a, reqA)
		readPacket(t, pcA)
		require.Equal(t, uint64(1), m.Stats().Rejected.Limit)
	})

	t.Run("refused before evicting", func(t *testing.T) {
		m := newTestMux(t, TCPMuxParams{MaxConnectionsPerIP: 3, MaxPendingConnections: 3})
		a := floodIP(2)
		oldest := dialFrom(t, m, a, nil)
		dialFrom(t, m, a, nil)
		dialFrom(t, m, a, nil)
		eventually(t, func() bool { return m.Stats().ConnsPending == 3 }, "A fills the pending table")
		waitClosedByPeer(t, dialFrom(t, m, a, nil), time.Second)
		s := m.Stats()
		require.Equal(t, uint64(1), s.Rejected.Limit)
		require.Zero(t, s.Rejected.Evicted, "a newcomer refused by MaxConnectionsPerIP evicts nobody")
		require.Equal(t, 3, s.ConnsPending)

		// Another source evicts A's oldest pending connection.
		pcB := getConn(t, m, "b")
		dialFrom(t, m, floodIP(3), bindingRequest(t, "b"))
		waitClosedByPeer(t, oldest, time.Second)
		readPacket(t, pcB)
		require.Equal(t, uint64(1), m.Stats().Rejected.Evicted)
	})

	t.Run("IPv6 loopback", func(t *testing.T) {
		ln, err := net.Listen("tcp6", "[::1]:0")
		if err != nil {
			t.Skipf("no IPv6 loopback: %v", err)
		}
		m := newTestMux(t, TCPMuxParams{Listener: ln, MaxConnectionsPerIP: 2})
		pc, err := m.GetConnByUfrag("v6", true, net.IPv6loopback)
		require.NoError(t, err)
		defer pc.Close()
		req := bindingRequest(t, "v6")
		for range 2 {
			dial(t, m, req)
			readPacket(t, pc)
		}
		waitClosedByPeer(t, dial(t, m, nil), time.Second)
		s := m.Stats()
		require.Equal(t, uint64(1), s.Rejected.Limit)
		require.Zero(t, s.Rejected.Evicted)
		require.Equal(t, 2, s.ConnsActive)
	})

	// Connections whose source is learned on their own goroutine (a
	// wrapped conn, here an in-memory one with chosen addresses): the
	// limit applies once it is known, per IPv6 /64, with IPv4-mapped
	// addresses counted as IPv4.
	t.Run("IPv6 /64 and IPv4-mapped, source learned late", func(t *testing.T) {
		ln := newPipeListener("[2001:db8:ff::1]:443")
		m := newTestMux(t, TCPMuxParams{Listener: ln, MaxConnectionsPerIP: 2})
		local := net.ParseIP("2001:db8:ff::1")
		pc, err := m.GetConnByUfrag("v6", true, local)
		require.NoError(t, err)
		defer pc.Close()
		req := bindingRequest(t, "v6")
		for _, remote := range []string{"[2001:db8::1]:1000", "[2001:db8::2]:1000"} {
			c := ln.dial(t, "[2001:db8:ff::1]:443", remote)
			_, err := c.Write(frame(req))
			require.NoError(t, err)
			_, from := readPacket(t, pc)
			require.Equal(t, remote, from.String())
		}
		waitClosedByPeer(t, ln.dial(t, "[2001:db8:ff::1]:443", "[2001:db8::3]:1000"), time.Second)
		eventually(t, func() bool { return m.Stats().Rejected.Limit == 1 }, "a third address of the /64 is refused")
		c := ln.dial(t, "[2001:db8:ff::1]:443", "[2001:db8:0:1::1]:1000")
		_, err = c.Write(frame(req))
		require.NoError(t, err)
		_, from := readPacket(t, pc)
		require.Equal(t, "[2001:db8:0:1::1]:1000", from.String(), "another /64 gets in")

		ln4 := newPipeListener("192.0.2.100:443")
		m4 := newTestMux(t, TCPMuxParams{Listener: ln4, MaxConnectionsPerIP: 1})
		pc4, err := m4.GetConnByUfrag("m", false, net.ParseIP("192.0.2.100"))
		require.NoError(t, err)
		defer pc4.Close()
		c = ln4.dial(t, "192.0.2.100:443", "[::ffff:192.0.2.1]:1000")
		_, err = c.Write(frame(bindingRequest(t, "m")))
		require.NoError(t, err)
		readPacket(t, pc4)
		waitClosedByPeer(t, ln4.dial(t, "192.0.2.100:443", "192.0.2.1:1001"), time.Second)
		eventually(t, func() bool { return m4.Stats().Rejected.Limit == 1 }, "IPv4-mapped and IPv4 are one source")
		require.Zero(t, m.Stats().Rejected.Evicted+m4.Stats().Rejected.Evicted)
	})
}

// SPEC 8: a source is one IPv4 address or one IPv6 /64; IPv4-mapped IPv6
// is IPv4, and zones do not matter.
func TestSourceOf(t *testing.T) {
	p := func(s string) netip.Prefix { return sourceOf(netip.MustParseAddr(s)) }
	require.Equal(t, p("2001:db8::1"), p("2001:db8::2"))
	require.Equal(t, p("2001:db8::1"), p("2001:db8::ffff:ffff:ffff:ffff"))
	require.NotEqual(t, p("2001:db8::1"), p("2001:db8:0:1::1"))
	require.Equal(t, netip.MustParsePrefix("2001:db8::/64"), p("2001:db8::1"))
	require.Equal(t, p("192.0.2.1"), p("::ffff:192.0.2.1"))
	require.Equal(t, netip.MustParsePrefix("192.0.2.1/32"), p("::ffff:192.0.2.1"))
	require.NotEqual(t, p("192.0.2.1"), p("192.0.2.2"), "each IPv4 address is a source")
	require.Equal(t, p("fe80::1"), p("fe80::1%eth0"))
	require.False(t, sourceOf(netip.Addr{}).IsValid())
}

// --- 5. The admission table -----------------------------------------------

func newTestTable() (*admissionTable, *counters) {
	st := &counters{}
	t := newAdmissionTable(st)
	return &t, st
}

func srcV4(s string) netip.Prefix { return sourceOf(netip.MustParseAddr(s)) }

// admitOK admits a new fake connection and fails on a refusal.
func admitOK(t *testing.T, tb *admissionTable, src netip.Prefix, l limits) (*streamConn, []*streamConn) {
	t.Helper()
	c := &streamConn{}
	evicted, refuse := tb.admit(c, src, l)
	require.Equal(t, rejectNone, refuse)
	return c, evicted
}

// SPEC 8: a full pending table evicts the oldest pending connection of the
// source holding the most; between sources holding as many, the one whose
// oldest connection is oldest.
func TestAdmissionEvictsOldestOfLargestSource(t *testing.T) {
	tb, st := newTestTable()
	l := limits{maxPending: 6}
	a, b, c, d := srcV4("192.0.2.1"), srcV4("192.0.2.2"), srcV4("192.0.2.3"), srcV4("192.0.2.4")
	b1, _ := admitOK(t, tb, b, l)
	a1, _ := admitOK(t, tb, a, l)
	admitOK(t, tb, c, l)
	a2, _ := admitOK(t, tb, a, l)
	b2, _ := admitOK(t, tb, b, l)
	a3, _ := admitOK(t, tb, a, l)

	d1, ev := admitOK(t, tb, d, l) // A holds 3
	require.Equal(t, []*streamConn{a1}, ev)
	_, ev = admitOK(t, tb, d, l) // A and B hold 2 each; B's oldest (b1) is older than A's (a2)
	require.Equal(t, []*streamConn{b1}, ev)
	_, ev = admitOK(t, tb, d, l) // A 2, B 1, C 1, D 2: A's a2 is older than D's d1
	require.Equal(t, []*streamConn{a2}, ev)
	_, ev = admitOK(t, tb, c, l) // A 1, B 1, C 1, D 3
	require.Equal(t, []*streamConn{d1}, ev, "D now holds the most")
	require.Equal(t, uint64(4), st.rejected[rejectEvicted].Load())
	require.Equal(t, int64(6), st.pending.Load())
	require.True(t, a3.entry.in)
	require.True(t, b2.entry.in)

	// Single-connection sources: the stalest goes first.
	tb, _ = newTestTable()
	l = limits{maxPending: 3}
	first, _ := admitOK(t, tb, srcV4("198.51.100.1"), l)
	second, _ := admitOK(t, tb, srcV4("198.51.100.2"), l)
	admitOK(t, tb, srcV4("198.51.100.3"), l)
	_, ev = admitOK(t, tb, srcV4("198.51.100.4"), l)
	require.Equal(t, []*streamConn{first}, ev)
	_, ev = admitOK(t, tb, srcV4("198.51.100.5"), l)
	require.Equal(t, []*streamConn{second}, ev)
}

// SPEC 8: MaxConnections evicts only pending connections and connections
// of unclaimed PacketConns, ranked by the evictable ones each source
// holds; with none, the newcomer is refused and nothing changes.
func TestAdmissionNeverEvictsClaimed(t *testing.T) {
	tb, st := newTestTable()
	l := limits{maxHeld: 4}
	a, b := srcV4("192.0.2.1"), srcV4("192.0.2.2")
	a1, _ := admitOK(t, tb, a, l)
	a2, _ := admitOK(t, tb, a, l)
	a3, _ := admitOK(t, tb, a, l)
	b1, _ := admitOK(t, tb, b, l)
	require.True(t, tb.attach(a1, true))
	require.True(t, tb.attach(a2, true))
	require.True(t, tb.attach(b1, false)) // an unclaimed PacketConn: evictable
	require.Equal(t, int64(3), st.active.Load())

	// A holds the most connections but, like B, one evictable: A's (a3,
	// pending) is older than B's (b1, attached but unclaimed).
	b2, ev := admitOK(t, tb, b, l)
	require.Equal(t, []*streamConn{a3}, ev)
	// B now holds two evictable connections, A none.
	b3, ev := admitOK(t, tb, b, l)
	require.Equal(t, []*streamConn{b1}, ev)
	require.Equal(t, int64(2), st.active.Load(), "an evicted attached connection leaves the active level")
	require.Equal(t, uint64(2), st.rejected[rejectEvicted].Load())

	// b2 attaches unclaimed, then its PacketConn is claimed; b3 attaches
	// to a claimed one. Nothing is evictable any more.
	require.True(t, tb.attach(b2, false))
	tb.claimed(b2)
	tb.claimed(b2) // idempotent
	require.True(t, tb.attach(b3, true))
	for _, c := range []*streamConn{a1, a2, b2, b3} {
		require.False(t, c.entry.member[classEvictable])
		require.False(t, c.entry.member[classPending])
	}
	require.Nil(t, tb.oldestOfLargest(classEvictable))
	ev, refuse := tb.admit(&streamConn{}, srcV4("192.0.2.3"), l)
	require.Equal(t, rejectLimit, refuse)
	require.Empty(t, ev)
	require.Equal(t, 4, tb.held)
	require.Equal(t, uint64(2), st.rejected[rejectEvicted].Load(), "nothing evicted")
	for _, c := range []*streamConn{a1, a2, b2, b3} {
		require.True(t, c.entry.in)
	}
}

// drop closes a connection's accounting once: it reports true the first
// time and false after, also after an eviction.
func TestAdmissionDropOnce(t *testing.T) {
	tb, st := newTestTable()
	l := limits{maxPending: 1}
	a := srcV4("192.0.2.1")
	c1, _ := admitOK(t, tb, a, l)
	require.True(t, tb.drop(c1))
	require.False(t, tb.drop(c1))
	require.False(t, tb.attach(c1, false), "a dropped connection cannot attach")
	require.Zero(t, tb.held)
	require.Zero(t, tb.pending)
	require.Empty(t, tb.sources, "an empty source is forgotten")

	c2, _ := admitOK(t, tb, a, l)
	require.True(t, tb.attach(c2, false))
	require.False(t, tb.attach(c2, false), "attaching twice")
	require.Equal(t, int64(1), st.active.Load())
	require.True(t, tb.drop(c2))
	require.False(t, tb.drop(c2))
	require.Zero(t, st.active.Load())

	c3, _ := admitOK(t, tb, a, l)
	_, ev := admitOK(t, tb, a, l)
	require.Equal(t, []*streamConn{c3}, ev)
	require.False(t, tb.drop(c3), "an evicted connection was dropped by the eviction")
	require.Equal(t, uint64(1), st.rejected[rejectEvicted].Load())
	require.Equal(t, int64(1), st.pending.Load())
	require.Equal(t, 1, tb.held)
}

// SPEC 8: a connection whose source is unknown at accept is a source of
// its own until learnSource moves it under its real source, where the
// per-source limit then applies.
func TestAdmissionLearnSource(t *testing.T) {
	tb, _ := newTestTable()
	l := limits{maxPerSource: 2, maxPending: 3}
	a := srcV4("192.0.2.1")
	a1, _ := admitOK(t, tb, a, l)
	u1, _ := admitOK(t, tb, netip.Prefix{}, l)
	u2, _ := admitOK(t, tb, netip.Prefix{}, l)
	require.NotSame(t, u1.entry.src, u2.entry.src, "unknown sources are separate")
	require.Len(t, tb.sources, 1, "unknown sources are not registered")

	held, refuse := tb.learnSource(u1, a, l.maxPerSource)
	require.True(t, held)
	require.Equal(t, rejectNone, refuse)
	require.Equal(t, a, u1.entry.src.prefix)
	require.Equal(t, 2, tb.sources[a].held)
	require.Equal(t, 2, tb.sources[a].lists[classPending].n)

	held, refuse = tb.learnSource(u2, a, l.maxPerSource)
	require.True(t, held)
	require.Equal(t, rejectLimit, refuse, "A is full")
	require.False(t, u2.entry.src.prefix.IsValid(), "a refused move changes nothing")
	require.Equal(t, 2, tb.sources[a].held)

	// A now holds the most pending: a newcomer evicts A's oldest.
	_, ev := admitOK(t, tb, srcV4("192.0.2.9"), l)
	require.Equal(t, []*streamConn{a1}, ev, "A's oldest goes")
	require.Equal(t, 1, tb.sources[a].held)

	require.True(t, tb.drop(u2))
	held, _ = tb.learnSource(u2, a, l.maxPerSource)
	require.False(t, held, "a dropped connection is not held")
	held, refuse = tb.learnSource(u1, a, l.maxPerSource)
	require.True(t, held)
	require.Equal(t, rejectNone, refuse, "already there")
}

// SPEC 8: "waited longest" counts from accept, also for connections whose
// source is learned after accept (behind a PROXY-protocol listener the
// header may come in any order): of two connections of one source, the one
// accepted first goes first.
func TestAdmissionLearnSourceKeepsAcceptOrder(t *testing.T) {
	tb, _ := newTestTable()
	l := limits{maxPending: 2}
	s := srcV4("192.0.2.1")
	first, _ := admitOK(t, tb, netip.Prefix{}, l)  // its header comes late
	second, _ := admitOK(t, tb, netip.Prefix{}, l) // its header comes at once
	held, refuse := tb.learnSource(second, s, 0)
	require.True(t, held)
	require.Equal(t, rejectNone, refuse)
	held, refuse = tb.learnSource(first, s, 0)
	require.True(t, held)
	require.Equal(t, rejectNone, refuse)
	require.Less(t, first.entry.seq, second.entry.seq)

	_, ev := admitOK(t, tb, srcV4("192.0.2.2"), l)
	require.Len(t, ev, 1)
	require.Equal(t, first.entry.seq, ev[0].entry.seq, "evicted the connection accepted second; the one accepted first has waited longest")
}

// The walk back to accept order is bounded: a source that opened many
// connections while one connection's header was late cannot hold the
// mux's lock for long (found in review: 2.8 ms per late header with
// 100,000 newer connections); the late one lands maxOrderSteps from the
// tail instead.
func TestAdmissionLateSourceWalkBounded(t *testing.T) {
	tb, _ := newTestTable()
	s := srcV4("192.0.2.1")
	late, _ := admitOK(t, tb, netip.Prefix{}, limits{})
	const newer = 10 * maxOrderSteps
	for range newer {
		admitOK(t, tb, s, limits{})
	}
	held, refuse := tb.learnSource(late, s, 0)
	require.True(t, held)
	require.Equal(t, rejectNone, refuse)
	behind := 0
	for c := late.entry.next[classPending]; c != nil; c = c.entry.next[classPending] {
		behind++
	}
	require.Equal(t, maxOrderSteps, behind, "the late connection walked further than the bound")
}

// admModel is a brute-force model of the admission table, for the random
// test below.
type admModel struct {
	tb      *admissionTable
	st      *counters
	live    []*admModelConn // held
	gone    []*admModelConn // recently dropped, to exercise calls on them
	seq     uint64
	evicted uint64
	nextID  int
}

// admModelConn is one connection of the model. Within a source, the
// lists are in accept order, a connection moved by learnSource included
// (SPEC 8: "waited longest" counts from accept).
type admModelConn struct {
	c        *streamConn
	id       int
	seq      uint64
	prefix   netip.Prefix // invalid: a source of its own
	attached bool
	claimed  bool
	tick     [numClasses]uint64 // its place in each class's list: its accept order
}

func (mc *admModelConn) srcKey() string {
	if mc.prefix.IsValid() {
		return mc.prefix.String()
	}
	return fmt.Sprintf("own#%d", mc.id)
}

func (mc *admModelConn) member(k connClass) bool {
	if k == classPending {
		return !mc.attached
	}
	return !mc.attached || !mc.claimed
}

func (m *admModel) find(c *streamConn) int {
	for i, mc := range m.live {
		if mc.c == c {
			return i
		}
	}
	return -1
}

func (m *admModel) heldBy(prefix netip.Prefix) int {
	n := 0
	for _, mc := range m.live {
		if mc.prefix.IsValid() && mc.prefix == prefix {
			n++
		}
	}
	return n
}

func (m *admModel) pending() int {
	n := 0
	for _, mc := range m.live {
		if !mc.attached {
			n++
		}
	}
	return n
}

// choose is SPEC 8's rule by brute force: among the sources holding the
// most connections of class k, the one whose oldest is oldest; its oldest.
func (m *admModel) choose(k connClass) *admModelConn {
	type group struct {
		n    int
		head *admModelConn
	}
	groups := map[string]*group{}
	for _, mc := range m.live {
		if !mc.member(k) {
			continue
		}
		g := groups[mc.srcKey()]
		if g == nil {
			g = &group{}
			groups[mc.srcKey()] = g
		}
		g.n++
		if g.head == nil || mc.tick[k] < g.head.tick[k] {
			g.head = mc
		}
	}
	var best *group
	for _, g := range groups {
		if best == nil || g.n > best.n || g.n == best.n && g.head.seq < best.head.seq {
			best = g
		}
	}
	if best == nil {
		return nil
	}
	return best.head
}

func (m *admModel) remove(i int) {
	mc := m.live[i]
	m.live = append(m.live[:i], m.live[i+1:]...)
	m.gone = append(m.gone, mc)
	if len(m.gone) > 8 {
		m.gone = m.gone[1:]
	}
}

func (m *admModel) join(mc *admModelConn) {
	for k := range numClasses {
		if mc.member(k) {
			mc.tick[k] = mc.seq
		}
	}
}

// admit admits a newcomer through the table and checks its decision
// against the model's.
func (m *admModel) admit(t *testing.T, prefix netip.Prefix, l limits) string {
	c := &streamConn{}
	evicted, refuse := m.tb.admit(c, prefix, l)
	if prefix.IsValid() && l.maxPerSource > 0 && m.heldBy(prefix) >= l.maxPerSource {
		require.Equal(t, rejectLimit, refuse, "per-source limit")
		require.Empty(t, evicted)
		return "admit: refused per source"
	}
	var want []*streamConn
	if l.maxHeld > 0 && len(m.live) >= l.maxHeld {
		v := m.choose(classEvictable)
		if v == nil {
			require.Equal(t, rejectLimit, refuse, "nothing evictable")
			require.Empty(t, evicted)
			return "admit: refused, nothing evictable"
		}
		want = append(want, v.c)
		m.remove(m.find(v.c))
	}
	if l.maxPending > 0 && m.pending() >= l.maxPending {
		v := m.choose(classPending)
		require.NotNil(t, v)
		want = append(want, v.c)
		m.remove(m.find(v.c))
	}
	require.Equal(t, rejectNone, refuse)
	require.Equal(t, want, evicted, "evicted connections")
	m.evicted += uint64(len(want))
	m.seq++
	m.nextID++
	mc := &admModelConn{c: c, id: m.nextID, seq: m.seq, prefix: prefix}
	m.join(mc)
	m.live = append(m.live, mc)
	return fmt.Sprintf("admit %v: %d evicted", prefix, len(want))
}

// check compares every part of the table with the model. It runs after
// every operation, so it avoids testify's reflection.
func (m *admModel) check(t *testing.T, step int, op string) {
	t.Helper()
	tb := m.tb
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("step %d (%s): %s", step, op, fmt.Sprintf(format, args...))
	}
	pending, active := m.pending(), len(m.live)-m.pending()
	if tb.held != len(m.live) || tb.pending != pending {
		fail("table held %d pending %d, model %d %d", tb.held, tb.pending, len(m.live), pending)
	}
	if m.st.pending.Load() != int64(pending) || m.st.active.Load() != int64(active) {
		fail("stats pending %d active %d, model %d %d", m.st.pending.Load(), m.st.active.Load(), pending, active)
	}
	if got := m.st.rejected[rejectEvicted].Load(); got != m.evicted {
		fail("stats evicted %d, model %d", got, m.evicted)
	}

	// Connections: held ones point at the right source with the right
	// memberships; dropped ones are out of everything.
	bySrc := map[*source][]*admModelConn{}
	keyOf := map[string]*source{}
	for _, mc := range m.live {
		e := &mc.c.entry
		if !e.in || e.attached != mc.attached || e.seq != mc.seq || e.src == nil || e.src.prefix != mc.prefix {
			fail("conn %d: entry %+v, model %+v", mc.id, *e, *mc)
		}
		for k := range numClasses {
			if e.member[k] != mc.member(k) {
				fail("conn %d: member of class %d %v, model %v", mc.id, k, e.member[k], mc.member(k))
			}
		}
		if s, ok := keyOf[mc.srcKey()]; ok && s != e.src {
			fail("conn %d: two sources for %s", mc.id, mc.srcKey())
		}
		keyOf[mc.srcKey()] = e.src
		bySrc[e.src] = append(bySrc[e.src], mc)
	}
	for _, mc := range m.gone {
		e := &mc.c.entry
		if e.in || e.src != nil || e.member != [numClasses]bool{} {
			fail("dropped conn %d still in the table: %+v", mc.id, *e)
		}
	}

	// Sources: the map holds exactly the valid ones with connections;
	// counts and lists match the model, oldest first.
	valid := 0
	for s, conns := range bySrc {
		if s.held != len(conns) {
			fail("source %v holds %d, model %d", s.prefix, s.held, len(conns))
		}
		if s.prefix.IsValid() {
			valid++
			if tb.sources[s.prefix] != s {
				fail("source %v not in the map", s.prefix)
			}
		}
		for k := range numClasses {
			members := append([]*admModelConn(nil), conns...)
			sort.Slice(members, func(i, j int) bool { return members[i].tick[k] < members[j].tick[k] })
			var want []*streamConn
			for _, mc := range members {
				if mc.member(k) {
					want = append(want, mc.c)
				}
			}
			var prev *streamConn
			i := 0
			for c := s.lists[k].head; c != nil; c = c.entry.next[k] {
				if i >= len(want) || c != want[i] || c.entry.prev[k] != prev {
					fail("source %v class %d: list differs from the model at %d", s.prefix, k, i)
				}
				prev = c
				i++
			}
			if i != len(want) || s.lists[k].tail != prev || s.lists[k].n != len(want) {
				fail("source %v class %d: list of %d (n %d), model %d", s.prefix, k, i, s.lists[k].n, len(want))
			}
			if len(want) == 0 && s.slot[k] != -1 {
				fail("source %v class %d: empty but ranked", s.prefix, k)
			}
		}
	}
	if len(tb.sources) != valid {
		fail("the map holds %d sources, %d have connections", len(tb.sources), valid)
	}

	// Rankings: a valid heap of the sources with connections of the
	// class, whose top is the brute-force choice.
	for k := range numClasses {
		r := &tb.ranks[k]
		ranked := 0
		for s := range bySrc {
			if s.lists[k].n > 0 {
				ranked++
			}
		}
		if len(r.sources) != ranked {
			fail("class %d ranks %d sources, %d have connections", k, len(r.sources), ranked)
		}
		for i, s := range r.sources {
			if s.slot[k] != i || s.lists[k].n == 0 || i > 0 && r.Less(i, (i-1)/2) {
				fail("class %d: heap broken at %d", k, i)
			}
		}
		var want *streamConn
		if mc := m.choose(k); mc != nil {
			want = mc.c
		}
		if got := tb.oldestOfLargest(k); got != want {
			fail("class %d: the table would evict %p, the rule says %p", k, got, want)
		}
	}
}

// SPEC 8: random admit/attach/claim/learnSource/drop sequences keep the
// admission table equal to a brute-force model: levels, every source's
// lists, and the eviction choice at the top of each ranking.
func TestAdmissionTableRandomAgainstModel(t *testing.T) {
	pool := []netip.Prefix{
		sourceOf(netip.MustParseAddr("192.0.2.1")),
		sourceOf(netip.MustParseAddr("192.0.2.2")),
		sourceOf(netip.MustParseAddr("::ffff:192.0.2.3")),
		sourceOf(netip.MustParseAddr("198.51.100.7")),
		sourceOf(netip.MustParseAddr("2001:db8::1")),
		sourceOf(netip.MustParseAddr("2001:db8::2:3")), // the same /64
		sourceOf(netip.MustParseAddr("2001:db8:0:1::1")),
	}
	for _, tc := range []struct {
		name string
		l    limits
		seed int64
	}{
		{"all limits", limits{maxHeld: 12, maxPending: 6, maxPerSource: 4}, 1},
		{"pending only", limits{maxPending: 5}, 2},
		{"held and per source", limits{maxHeld: 8, maxPerSource: 3}, 3},
		{"tight", limits{maxHeld: 3, maxPending: 2, maxPerSource: 2}, 4},
		{"none", limits{}, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewSource(tc.seed))
			tb, st := newTestTable()
			m := &admModel{tb: tb, st: st}
			pick := func(ok func(*admModelConn) bool) *admModelConn {
				var cands []*admModelConn
				for _, mc := range m.live {
					if ok(mc) {
						cands = append(cands, mc)
					}
				}
				if len(cands) == 0 {
					return nil
				}
				return cands[r.Intn(len(cands))]
			}
			counts := map[string]int{}
			for step := range 5000 {
				var op string
				switch x := r.Intn(100); {
				case x < 35 && len(m.live) < 30 || len(m.live) == 0:
					prefix := netip.Prefix{}
					if r.Intn(5) > 0 {
						prefix = pool[r.Intn(len(pool))]
					}
					op = m.admit(t, prefix, tc.l)
				case x < 55:
					mc := pick(func(mc *admModelConn) bool { return !mc.attached })
					if mc == nil {
						op = "attach: none pending"
						break
					}
					claimed := r.Intn(2) == 0
					require.True(t, tb.attach(mc.c, claimed))
					mc.attached, mc.claimed = true, claimed
					op = fmt.Sprintf("attach %d claimed=%v", mc.id, claimed)
				case x < 62:
					// A claim reaches every connection of the PacketConn,
					// some maybe dropped or evicted meanwhile.
					if len(m.gone) > 0 && r.Intn(3) == 0 {
						mc := m.gone[r.Intn(len(m.gone))]
						tb.claimed(mc.c)
						op = "claimed on a dropped conn"
						break
					}
					mc := pick(func(mc *admModelConn) bool { return mc.attached })
					if mc == nil {
						op = "claimed: none attached"
						break
					}
					tb.claimed(mc.c)
					mc.claimed = true
					op = fmt.Sprintf("claimed %d", mc.id)
				case x < 85:
					if len(m.gone) > 0 && r.Intn(4) == 0 {
						mc := m.gone[r.Intn(len(m.gone))]
						require.False(t, tb.drop(mc.c), "drop twice")
						require.False(t, tb.attach(mc.c, false), "attach after drop")
						op = "drop again"
						break
					}
					mc := pick(func(*admModelConn) bool { return true })
					require.True(t, tb.drop(mc.c))
					m.remove(m.find(mc.c))
					op = fmt.Sprintf("drop %d", mc.id)
				default:
					if len(m.gone) > 0 && r.Intn(5) == 0 {
						mc := m.gone[r.Intn(len(m.gone))]
						held, refuse := tb.learnSource(mc.c, pool[0], tc.l.maxPerSource)
						require.False(t, held)
						require.Equal(t, rejectNone, refuse)
						op = "learnSource on a dropped conn"
						break
					}
					mc := pick(func(mc *admModelConn) bool { return !mc.prefix.IsValid() && !mc.attached })
					if mc == nil {
						op = "learnSource: none unknown"
						break
					}
					prefix := pool[r.Intn(len(pool))]
					if r.Intn(10) == 0 {
						prefix = netip.Prefix{} // still unknown
					}
					held, refuse := tb.learnSource(mc.c, prefix, tc.l.maxPerSource)
					require.True(t, held)
					switch {
					case !prefix.IsValid():
						require.Equal(t, rejectNone, refuse)
						op = "learnSource: unknown"
					case tc.l.maxPerSource > 0 && m.heldBy(prefix) >= tc.l.maxPerSource:
						require.Equal(t, rejectLimit, refuse)
						op = "learnSource: refused"
					default:
						require.Equal(t, rejectNone, refuse)
						mc.prefix = prefix
						m.join(mc)
						op = fmt.Sprintf("learnSource %d -> %v", mc.id, prefix)
					}
				}
				counts[strings.SplitN(op, " ", 2)[0]]++
				m.check(t, step, op)
			}
			t.Logf("operations: %v; evicted %d", counts, m.evicted)
			if tc.l.maxHeld > 0 || tc.l.maxPending > 0 {
				require.Positive(t, m.evicted, "the sequence reached the limits")
			}
		})
	}
}

// --- 6. Unclaimed PacketConns close with their last connection ------------

// SPEC 3 and 6: an unclaimed PacketConn closes as soon as its last
// connection goes (end or eviction) or it expires, and each counts in
// UnclaimedExpired; RemoveConnByUfrag and the mux's Close do not count.
func TestUnclaimedClosesWithLastConn(t *testing.T) {
	t.Run("peer leaves", func(t *testing.T) {
		m := newTestMux(t, TCPMuxParams{})
		client := dialUfrag(t, m, "gone")
		eventually(t, func() bool { s := m.Stats(); return s.PacketConns == 1 && s.ConnsActive == 1 }, "the connection created an unclaimed PacketConn")
		_, err := client.Write(frame([]byte("queued")))
		require.NoError(t, err)
		eventually(t, func() bool { return m.Stats().PacketsReceived == 2 }, "a second packet queued")

		start := time.Now()
		require.NoError(t, client.Close())
		require.Eventually(t, func() bool {
			s := m.Stats()
			return s.UnclaimedExpired == 1 && s.PacketConns == 0 && s.ConnsActive == 0
		}, time.Second, time.Millisecond, "the unclaimed PacketConn closes at once: %+v", m.Stats())
		t.Logf("closed %v after its last connection", time.Since(start))

		pc := getConn(t, m, "gone")
		require.NoError(t, pc.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
		_, _, err = pc.ReadFrom(make([]byte, 1500))
		require.ErrorIs(t, err, os.ErrDeadlineExceeded, "a fresh PacketConn: nothing queued by the gone connection")
		require.Equal(t, uint64(1), m.Stats().UnclaimedExpired)
		require.Zero(t, m.Stats().ConnsRejected, "a connection gone after attaching is not rejected")
	})

	t.Run("one of two leaves", func(t *testing.T) {
		m := newTestMux(t, TCPMuxParams{})
		first := dialFrom(t, m, floodIP(2), bindingRequest(t, "two"))
		second := dialFrom(t, m, floodIP(3), bindingRequest(t, "two"))
		eventually(t, func() bool { return m.Stats().ConnsActive == 2 }, "both attached")
		require.Equal(t, 1, m.Stats().PacketConns)
		require.NoError(t, first.Close())
		eventually(t, func() bool { return m.Stats().ConnsActive == 1 }, "one left")
		require.Equal(t, 1, m.Stats().PacketConns, "the other connection keeps it")
		require.Zero(t, m.Stats().UnclaimedExpired)
		require.NoError(t, second.Close())
		eventually(t, func() bool { s := m.Stats(); return s.PacketConns == 0 && s.UnclaimedExpired == 1 }, "closed with the last one")
	})

	t.Run("evicted", func(t *testing.T) {
		m := newTestMux(t, TCPMuxParams{MaxConnections: 1})
		victim := dialFrom(t, m, floodIP(2), bindingRequest(t, "evictme"))
		eventually(t, func() bool { return m.Stats().ConnsActive == 1 }, "attached, unclaimed")
		dialFrom(t, m, floodIP(3), nil)
		waitClosedByPeer(t, victim, time.Second)
		eventually(t, func() bool { s := m.Stats(); return s.PacketConns == 0 && s.UnclaimedExpired == 1 }, "its PacketConn closed with it")
		s := m.Stats()
		require.Equal(t, uint64(1), s.Rejected.Evicted)
		require.Equal(t, uint64(1), s.ConnsRejected, "an evicted attached connection counts as Evicted only")
		require.Zero(t, s.ConnsActive)
		require.Equal(t, 1, s.ConnsPending)
	})

	t.Run("expiry", func(t *testing.T) {
		const alive = 200 * time.Millisecond
		m := newTestMux(t, TCPMuxParams{AliveDurationForConnFromStun: alive})
		client := dialUfrag(t, m, "late")
		waitClosedByPeer(t, client, alive+2*time.Second)
		eventually(t, func() bool { s := m.Stats(); return s.PacketConns == 0 && s.ConnsActive == 0 }, "expired")
		require.Equal(t, uint64(1), m.Stats().UnclaimedExpired)
	})

	t.Run("RemoveConnByUfrag and Close do not count", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		m := newTestMux(t, TCPMuxParams{Listener: ln})
		client := dialUfrag(t, m, "rm")
		eventually(t, func() bool { return m.Stats().ConnsActive == 1 }, "attached, unclaimed")
		m.RemoveConnByUfrag("rm")
		waitClosedByPeer(t, client, time.Second)
		eventually(t, func() bool { s := m.Stats(); return s.PacketConns == 0 && s.ConnsActive == 0 }, "removed")
		require.Zero(t, m.Stats().UnclaimedExpired)

		dialUfrag(t, m, "open")
		eventually(t, func() bool { return m.Stats().ConnsActive == 1 }, "attached, unclaimed")
		require.NoError(t, m.Close())
		s := m.Stats()
		require.Zero(t, s.UnclaimedExpired)
		require.Zero(t, s.PacketConns)
	})
}

// --- 7. Unclaimed queue bound --------------------------------------------

// SPEC 3: until claimed, a PacketConn queues at most 16 KiB of payload
// (one packet of any size when empty); the rest waits in TCP, and the claim
// then delivers every packet in order.
func TestUnclaimedQueueBound(t *testing.T) {
	const (
		frames = 200
		size   = 1000
	)
	m := newTestMux(t, TCPMuxParams{})
	req := bindingRequest(t, "hoard")
	client := dial(t, m, req)
	sent := make(chan error, 1)
	go func() {
		var stream []byte
		for i := range frames {
			p := make([]byte, size)
			binary.BigEndian.PutUint32(p, uint32(i))
			stream = append(stream, frame(p)...)
		}
		_, err := client.Write(stream) // blocks while the mux holds back
		sent <- err
	}()

	// Wait until the mux stops taking packets: BytesReceived is unchanged
	// for 300 ms (or the sender finished and it is unchanged).
	var last uint64
	steady := time.Now()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if b := m.Stats().BytesReceived; b != last {
			last, steady = b, time.Now()
		} else if time.Since(steady) > 300*time.Millisecond {
			break
		}
		time.Sleep(5 * time.Millisecond) // polling Stats
	}
	s := m.Stats()
	bound := uint64(UnclaimedQueueBytes + size + len(req))
	t.Logf("queued before the claim: %d packets, %d bytes (bound %d)", s.PacketsReceived, s.BytesReceived, bound)
	require.Positive(t, s.BytesReceived)
	// Not fatal: the claim below must still deliver everything.
	assert.LessOrEqual(t, s.BytesReceived, bound, "an unclaimed PacketConn queues at most 16 KiB + one packet")

	pc := getConn(t, m, "hoard")
	got, _ := readPacket(t, pc)
	require.Equal(t, req, got)
	for i := range frames {
		got, _ := readPacket(t, pc)
		require.Len(t, got, size)
		require.Equal(t, uint32(i), binary.BigEndian.Uint32(got), "packet %d in order", i)
	}
	select {
	case err := <-sent:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("the sender is still blocked after every packet was read")
	}
	require.Equal(t, uint64(1+frames), m.Stats().PacketsReceived)
}

// --- 8. MultiTCPMuxDefault.Stats ----------------------------------------

// floodStatsMux is a TCPMux with a Stats method that is not a
// *TCPMuxDefault.
type floodStatsMux struct {
	*multiFakeMux
	stats Stats
}

func (f *floodStatsMux) Stats() Stats { return f.stats }

// floodNumberedStats sets the i-th numeric field of Stats (depth first) to
// base*i, so that a field missed by a sum shows.
func floodNumberedStats(base uint64) Stats {
	var s Stats
	i := uint64(0)
	var fill func(v reflect.Value)
	fill = func(v reflect.Value) {
		for f := range v.NumField() {
			field := v.Field(f)
			switch field.Kind() {
			case reflect.Struct:
				fill(field)
				continue
			case reflect.Uint64:
				i++
				field.SetUint(base * i)
			case reflect.Int:
				i++
				field.SetInt(int64(base * i))
			default:
				panic("unexpected Stats field kind " + field.Kind().String())
			}
		}
	}
	fill(reflect.ValueOf(&s).Elem())
	return s
}

// SPEC 5 and 6: MultiTCPMuxDefault.Stats sums every field of its muxes'
// Stats, and counts nothing for a mux without a Stats method.
func TestMultiStatsSums(t *testing.T) {
	t.Run("every field", func(t *testing.T) {
		one := &floodStatsMux{multiFakeMux: &multiFakeMux{}, stats: floodNumberedStats(1)}
		hundred := &floodStatsMux{multiFakeMux: &multiFakeMux{}, stats: floodNumberedStats(100)}
		multi := NewMultiTCPMuxDefault(one, &multiFakeMux{}, hundred)
		require.Equal(t, floodNumberedStats(101), multi.Stats())
		require.Equal(t, Stats{}, NewMultiTCPMuxDefault(&multiFakeMux{}).Stats())
		require.Equal(t, Stats{}, NewMultiTCPMuxDefault().Stats())
	})
	t.Run("real muxes", func(t *testing.T) {
		a := newTestMux(t, TCPMuxParams{})
		b := newTestMux(t, TCPMuxParams{MaxConnectionsPerIP: 1})
		waitClosedByPeer(t, dial(t, a, []byte("not STUN")), time.Second)
		dial(t, b, nil)
		eventually(t, func() bool { return b.Stats().ConnsPending == 1 }, "pending on b")
		waitClosedByPeer(t, dial(t, b, nil), time.Second)
		eventually(t, func() bool { return a.Stats().Rejected.NotSTUN == 1 }, "rejected on a")

		multi := NewMultiTCPMuxDefault(a, &multiFakeMux{}, b)
		require.Equal(t, Stats{
			ConnsAccepted: 3,
			ConnsRejected: 2,
			Rejected:      RejectedStats{NotSTUN: 1, Limit: 1},
			ConnsPending:  1,
		}, multi.Stats())
	})
}

// --- 9. Invalid params ----------------------------------------------------

// SPEC 2: a mux whose params fail Validate closes the listener it was
// given at once, and its GetConnByUfrag returns Validate's error, which
// names the field. A negative MaxPendingConnections is valid: no limit.
func TestInvalidParamsCloseListener(t *testing.T) {
	silent := logging.NewDefaultLoggerFactory()
	silent.DefaultLogLevel = logging.LogLevelDisabled
	for _, tc := range []struct {
		field string
		set   func(*TCPMuxParams)
	}{
		{"MaxFirstFrameSize", func(p *TCPMuxParams) { p.MaxFirstFrameSize = 1000 }},
		{"MaxFirstFrameSize", func(p *TCPMuxParams) { p.MaxFirstFrameSize = MinMaxFirstFrameSize - 1 }},
		{"MaxFirstFrameSize", func(p *TCPMuxParams) { p.MaxFirstFrameSize = 70000 }},
		{"MaxFirstFrameSize", func(p *TCPMuxParams) { p.MaxFirstFrameSize = MaxMaxFirstFrameSize + 1 }},
		{"MaxFirstFrameSize", func(p *TCPMuxParams) { p.MaxFirstFrameSize = -1 }},
		{"MaxConnectionsPerIP", func(p *TCPMuxParams) { p.MaxConnectionsPerIP = -1 }},
		{"MaxConnections", func(p *TCPMuxParams) { p.MaxConnections = -1 }},
		{"MaxConnectionsPerUfrag", func(p *TCPMuxParams) { p.MaxConnectionsPerUfrag = -1 }},
		{"ReadBufferSize", func(p *TCPMuxParams) { p.ReadBufferSize = -1 }},
		{"WriteBufferSize", func(p *TCPMuxParams) { p.WriteBufferSize = -1 }},
		{"FirstStunBindTimeout", func(p *TCPMuxParams) { p.FirstStunBindTimeout = -time.Second }},
		{"AliveDurationForConnFromStun", func(p *TCPMuxParams) { p.AliveDurationForConnFromStun = -time.Second }},
		{"FallbackQueueSize", func(p *TCPMuxParams) { p.FallbackQueueSize = -1 }},
	} {
		p := TCPMuxParams{Logger: silent.NewLogger("tcpmux")} // the mux logs the error
		tc.set(&p)
		t.Run(fmt.Sprintf("%s %+v", tc.field, reflect.ValueOf(p).FieldByName(tc.field).Interface()), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			t.Cleanup(func() { _ = ln.Close() })
			p.Listener = ln
			verr := p.Validate()
			require.ErrorIs(t, verr, ErrInvalidParams)
			require.Contains(t, verr.Error(), tc.field)

			m := NewTCPMuxDefault(p)
			_, err = m.GetConnByUfrag("srv", false, net.IPv4(127, 0, 0, 1))
			require.ErrorIs(t, err, ErrInvalidParams)
			require.ErrorIs(t, err, verr, "SPEC 2: errors.Is matches it with Validate's")
			require.Contains(t, err.Error(), tc.field, "the error names the field")

			conn, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second)
			if err == nil {
				_ = conn.Close()
				t.Fatal("the listener still accepts connections")
			}
			_, err = ln.Accept() // returns at once on a closed listener
			require.ErrorIs(t, err, net.ErrClosed)
			require.NoError(t, m.Close())
		})
	}

	t.Run("valid bounds", func(t *testing.T) {
		for _, n := range []int{0, MinMaxFirstFrameSize, MaxMaxFirstFrameSize} {
			p := TCPMuxParams{Listener: newPipeListener("127.0.0.1:1"), MaxFirstFrameSize: n, MaxPendingConnections: -5}
			require.NoError(t, p.Validate(), "MaxFirstFrameSize %d", n)
		}
	})

	t.Run("negative MaxPendingConnections means no limit", func(t *testing.T) {
		const silent = 8
		m := newTestMux(t, TCPMuxParams{MaxPendingConnections: -1})
		for range silent {
			dial(t, m, nil)
		}
		eventually(t, func() bool { return m.Stats().ConnsPending == silent }, "every silent connection pending")
		pc := getConn(t, m, "srv")
		dialUfrag(t, m, "srv")
		readPacket(t, pc)
		s := m.Stats()
		require.Zero(t, s.ConnsRejected)
		require.Equal(t, silent, s.ConnsPending)
	})
}

// --- 10. MaxFirstFrameSize -------------------------------------------------

// SPEC 1 and 2: MaxFirstFrameSize raises the first-frame bound; the
// default rejects a header announcing one byte more than 2048 as TooLarge.
func TestMaxFirstFrameSize(t *testing.T) {
	t.Run("4096 admits 3000 bytes", func(t *testing.T) {
		m := newTestMux(t, TCPMuxParams{MaxFirstFrameSize: 4096})
		req := paddedRequest(t, "big", 3000)
		require.Len(t, req, 3000)
		pc := getConn(t, m, "big")
		dial(t, m, req)
		got, _ := readPacket(t, pc)
		require.Equal(t, req, got)

		client := dial(t, m, nil)
		var hdr [2]byte
		binary.BigEndian.PutUint16(hdr[:], 4097)
		_, err := client.Write(hdr[:])
		require.NoError(t, err)
		waitClosedByPeer(t, client, time.Second)
		eventually(t, func() bool { return m.Stats().Rejected.TooLarge == 1 }, "4097 is over the bound")
	})
	t.Run("maximum admits 65532 bytes", func(t *testing.T) {
		m := newTestMux(t, TCPMuxParams{MaxFirstFrameSize: MaxMaxFirstFrameSize})
		req := paddedRequest(t, "huge", 65532)
		pc := getConn(t, m, "huge")
		dial(t, m, req)
		got, _ := readPacket(t, pc)
		require.Equal(t, req, got)
		require.Zero(t, m.Stats().ConnsRejected)
	})
	t.Run("default rejects 2049 and 3000", func(t *testing.T) {
		m := newTestMux(t, TCPMuxParams{})
		client := dial(t, m, nil)
		var hdr [2]byte
		binary.BigEndian.PutUint16(hdr[:], DefaultMaxFirstFrameSize+1)
		_, err := client.Write(hdr[:])
		require.NoError(t, err)
		waitClosedByPeer(t, client, time.Second)
		eventually(t, func() bool { return m.Stats().Rejected.TooLarge == 1 }, "2049 is TooLarge")

		waitClosedByPeer(t, dial(t, m, paddedRequest(t, "big", 3000)), time.Second)
		eventually(t, func() bool { return m.Stats().Rejected.TooLarge == 2 }, "a whole 3000-byte request is TooLarge")
		s := m.Stats()
		require.Equal(t, uint64(2), s.ConnsRejected)
		require.Zero(t, s.PacketConns, "nothing reached any PacketConn")

		req := paddedRequest(t, "edge", DefaultMaxFirstFrameSize)
		pc := getConn(t, m, "edge")
		dial(t, m, req)
		got, _ := readPacket(t, pc)
		require.Equal(t, req, got, "2048 bytes are admitted")
	})
}

// --- Stats snapshots --------------------------------------------------------

// snapshotRace runs cycle over and over, one connection at a time, while
// it takes snapshots of st for 3 s (under mu when locked, as
// TCPMuxDefault.Stats does), and returns the first one that bad rejects.
func snapshotRace(t *testing.T, st *counters, mu *sync.Mutex, locked bool, cycle func(), bad func(Stats) bool) (Stats, bool) {
	t.Helper()
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				cycle()
			}
		}
	}()
	defer func() { close(stop); <-done }()
	samples := 0
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); samples++ {
		if locked {
			mu.Lock()
		}
		s := st.snapshot()
		if locked {
			mu.Unlock()
		}
		if bad(s) {
			return s, true
		}
	}
	t.Logf("%d snapshots", samples)
	return Stats{}, false
}

// SPEC 6: a Stats snapshot shows each connection in one state at most: a
// connection that attaches is never counted both pending and active. One
// connection at a time goes through admit, attach and drop (under a lock,
// as the mux does) while snapshots are taken.
func TestStatsSnapshotAttachCountsOnce(t *testing.T) {
	tb, st := newTestTable()
	var mu sync.Mutex
	src := srcV4("192.0.2.1")
	cycle := func() {
		c := &streamConn{}
		mu.Lock()
		tb.admit(c, src, limits{})
		mu.Unlock()
		mu.Lock()
		tb.attach(c, true)
		mu.Unlock()
		mu.Lock()
		tb.drop(c)
		mu.Unlock()
	}
	s, bad := snapshotRace(t, st, &mu, true, cycle, func(s Stats) bool { return s.ConnsPending+s.ConnsActive > 1 })
	require.False(t, bad, "one connection counted as pending and active at once: ConnsPending %d, ConnsActive %d", s.ConnsPending, s.ConnsActive)
}

// SPEC 6: in a snapshot, ConnsAccepted covers every connection counted in
// a state, even read without the lock. As in the mux, a connection is
// counted accepted, then admitted (pending), then rejected, one at a time,
// while snapshots are taken.
func TestStatsSnapshotAcceptedCoversPending(t *testing.T) {
	tb, st := newTestTable()
	var mu sync.Mutex
	src := srcV4("192.0.2.1")
	cycle := func() {
		c := &streamConn{}
		st.accepted.Add(1) // acceptLoop
		mu.Lock()          // startConn
		tb.admit(c, src, limits{})
		mu.Unlock()
		mu.Lock() // reject
		if tb.drop(c) {
			st.reject(rejectTimeout)
		}
		mu.Unlock()
	}
	s, bad := snapshotRace(t, st, &mu, false, cycle, func(s Stats) bool { return floodAccounting(s) != nil })
	require.False(t, bad, "an inconsistent snapshot: %v", floodAccounting(s))
}
