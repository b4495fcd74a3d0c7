package tcpmux

import (
	"container/heap"
	"crypto/tls"
	"net"
	"net/netip"
)

// Admission: which connections the mux holds, from which source, and whom
// to evict when a limit is reached (SPEC 8).
//
// A limit that refuses newcomers when full is a lever for an attacker: fill
// it with silent connections, or with connections on ufrags nobody claims,
// and every honest peer is locked out. So when MaxPendingConnections or
// MaxConnections is reached, the mux makes room by evicting the connection
// that has waited longest among those of the source holding the most
// evictable ones. Honest peers, which send their first frame within a
// round trip and whose ufrag their agent claims, are in small sources and
// young, so an attacker evicts its own connections first.
//
// The table is guarded by the mux's mu. A connection is in it from accept
// until its accounting closes: whoever removes it (drop) decides how it is
// counted, so a connection evicted while its goroutine is failing on its
// own is counted once.

// connClass names the rankings a connection can be in.
type connClass uint8

const (
	classPending   connClass = iota // first frame not arrived yet
	classEvictable                  // pending, or attached to an unclaimed PacketConn
	numClasses
)

// source is where connections come from: one IPv4 address or one IPv6
// /64, so that an attacker cannot spread over the addresses of one host.
type source struct {
	prefix netip.Prefix // invalid for a connection whose address is unknown yet
	held   int          // connections held, pending and attached
	lists  [numClasses]connList
	slot   [numClasses]int // index in the class's ranking; -1 when absent
}

// connList is an intrusive FIFO of connections, oldest first.
type connList struct {
	head, tail *streamConn
	n          int
}

// tableEntry is the part of a streamConn the admission table keeps.
type tableEntry struct {
	in       bool // held: its accounting is still open
	attached bool
	src      *source
	seq      uint64 // accept order
	member   [numClasses]bool
	prev     [numClasses]*streamConn
	next     [numClasses]*streamConn
}

// admissionTable holds every connection between accept and the end of its
// accounting. Guarded by TCPMuxDefault.mu; the levels it keeps are mirrored
// to stats, which Stats reads under the same lock.
type admissionTable struct {
	stats   *counters
	sources map[netip.Prefix]*source
	ranks   [numClasses]ranking
	seq     uint64
	held    int
	pending int
}

func newAdmissionTable(stats *counters) admissionTable {
	t := admissionTable{stats: stats, sources: make(map[netip.Prefix]*source)}
	for k := range t.ranks {
		t.ranks[k].class = connClass(k)
	}
	return t
}

// limits are the admission bounds, from the params; 0 means none.
type limits struct {
	maxHeld, maxPending, maxPerSource int
}

// admit adds a newcomer from src (invalid: not known yet) as pending,
// first making room under the limits. It returns the connections evicted
// for it, already dropped and counted as Evicted, or the reason to refuse
// it, in which case nothing changed.
func (t *admissionTable) admit(c *streamConn, src netip.Prefix, l limits) (evicted []*streamConn, refuse rejectReason) {
	if s := t.sources[src]; src.IsValid() && s != nil && l.maxPerSource > 0 && s.held >= l.maxPerSource {
		return nil, rejectLimit
	}
	if l.maxHeld > 0 && t.held >= l.maxHeld {
		victim := t.oldestOfLargest(classEvictable)
		if victim == nil {
			return nil, rejectLimit
		}
		t.evict(victim)
		evicted = append(evicted, victim)
	}
	if l.maxPending > 0 && t.pending >= l.maxPending {
		if victim := t.oldestOfLargest(classPending); victim != nil {
			t.evict(victim)
			evicted = append(evicted, victim)
		}
	}
	t.seq++
	e := &c.entry
	e.in, e.attached, e.seq = true, false, t.seq
	e.src = t.sourceFor(src)
	e.src.held++
	t.held++
	t.pending++
	t.join(c, classPending)
	t.join(c, classEvictable)
	t.publish()
	return evicted, rejectNone
}

// learnSource moves a connection whose address was unknown at accept (a
// wrapped conn, e.g. PROXY protocol) under its real source, in accept
// order, and applies the per-source limit there. It reports false if the
// connection is no longer held, and rejectLimit if its source is full.
func (t *admissionTable) learnSource(c *streamConn, src netip.Prefix, maxPerSource int) (held bool, refuse rejectReason) {
	e := &c.entry
	if !e.in {
		return false, rejectNone
	}
	if !src.IsValid() || e.src.prefix == src {
		return true, rejectNone
	}
	if s := t.sources[src]; s != nil && maxPerSource > 0 && s.held >= maxPerSource {
		return true, rejectLimit
	}
	member := e.member
	for k := range numClasses {
		if member[k] {
			t.leave(c, k)
		}
	}
	t.releaseSource(e.src)
	e.src = t.sourceFor(src)
	e.src.held++
	for k := range numClasses {
		if member[k] {
			t.join(c, k)
		}
	}
	return true, rejectNone
}

// attach marks a pending connection attached; it stays evictable only if
// its PacketConn is unclaimed. It reports false if the connection is no
// longer held (evicted meanwhile).
func (t *admissionTable) attach(c *streamConn, claimed bool) bool {
	e := &c.entry
	if !e.in || e.attached {
		return false
	}
	e.attached = true
	t.leave(c, classPending)
	if claimed {
		t.leave(c, classEvictable)
	}
	t.pending--
	t.publish() // before active counts it: see counters.snapshot
	t.stats.active.Add(1)
	if c.multipath {
		t.stats.multipath.Add(1)
	}
	return true
}

// claimed makes an attached connection of a PacketConn just claimed
// unevictable.
func (t *admissionTable) claimed(c *streamConn) {
	if c.entry.member[classEvictable] {
		t.leave(c, classEvictable)
	}
}

// drop ends a connection's stay in the table. It reports whether the
// caller closed its accounting (false: someone else did first).
func (t *admissionTable) drop(c *streamConn) bool {
	e := &c.entry
	if !e.in {
		return false
	}
	for k := range numClasses {
		if e.member[k] {
			t.leave(c, k)
		}
	}
	t.releaseSource(e.src)
	e.in, e.src = false, nil
	t.held--
	if e.attached {
		t.stats.active.Add(-1)
		if c.multipath {
			t.stats.multipath.Add(-1)
		}
	} else {
		t.pending--
	}
	t.publish()
	return true
}

// evict drops a connection to make room and counts it as Evicted. The
// caller closes it once the mux's lock is released (see
// TCPMuxDefault.evict).
func (t *admissionTable) evict(c *streamConn) {
	t.drop(c)
	t.stats.reject(rejectEvicted)
}

// oldestOfLargest is the eviction rule: the connection that has waited
// longest among those of the source holding the most of class k.
func (t *admissionTable) oldestOfLargest(k connClass) *streamConn {
	r := &t.ranks[k]
	if len(r.sources) == 0 {
		return nil
	}
	return r.sources[0].lists[k].head
}

// pendingConns lists the pending connections, for Close.
func (t *admissionTable) pendingConns() []*streamConn {
	var conns []*streamConn
	for _, s := range t.ranks[classPending].sources {
		for c := s.lists[classPending].head; c != nil; c = c.entry.next[classPending] {
			conns = append(conns, c)
		}
	}
	return conns
}

func (t *admissionTable) publish() {
	t.stats.pending.Store(int64(t.pending))
}

// sourceFor returns the source of prefix, registering it; an invalid
// prefix gets a source of its own.
func (t *admissionTable) sourceFor(prefix netip.Prefix) *source {
	if s := t.sources[prefix]; s != nil && prefix.IsValid() {
		return s
	}
	s := &source{prefix: prefix, slot: [numClasses]int{-1, -1}}
	if prefix.IsValid() {
		t.sources[prefix] = s
	}
	return s
}

func (t *admissionTable) releaseSource(s *source) {
	s.held--
	if s.held == 0 && s.prefix.IsValid() {
		delete(t.sources, s.prefix)
	}
}

// maxOrderSteps bounds how far a connection whose source was learned late
// walks back to its place in accept order (see join).
const maxOrderSteps = 64

// join inserts c in its source's list of class k, in accept order, and
// re-ranks the source. A newcomer goes to the tail at once; a connection
// whose source was learned late (learnSource) walks back past the ones
// accepted after it while its PROXY header was in flight, at most
// maxOrderSteps of them: a source that made many connections meanwhile
// (only a flooding one does) cannot make the walk long under the mux's
// lock, and its late connection merely looks younger among its own.
func (t *admissionTable) join(c *streamConn, k connClass) {
	e := &c.entry
	l := &e.src.lists[k]
	after := l.tail
	for steps := 0; after != nil && after.entry.seq > e.seq && steps < maxOrderSteps; steps++ {
		after = after.entry.prev[k]
	}
	var before *streamConn
	if after != nil {
		before = after.entry.next[k]
		after.entry.next[k] = c
	} else {
		before = l.head
		l.head = c
	}
	if before != nil {
		before.entry.prev[k] = c
	} else {
		l.tail = c
	}
	e.member[k], e.prev[k], e.next[k] = true, after, before
	l.n++
	t.ranks[k].update(e.src)
}

// leave unlinks c from its source's list of class k and re-ranks the
// source.
func (t *admissionTable) leave(c *streamConn, k connClass) {
	e := &c.entry
	l := &e.src.lists[k]
	if e.prev[k] != nil {
		e.prev[k].entry.next[k] = e.next[k]
	} else {
		l.head = e.next[k]
	}
	if e.next[k] != nil {
		e.next[k].entry.prev[k] = e.prev[k]
	} else {
		l.tail = e.prev[k]
	}
	e.member[k], e.prev[k], e.next[k] = false, nil, nil
	l.n--
	t.ranks[k].update(e.src)
}

// ranking orders the sources that hold connections of one class: most
// connections first, then the one whose oldest connection is oldest (so
// that among many single-connection sources the stalest goes first). A
// binary heap: O(log n) per change.
type ranking struct {
	class   connClass
	sources []*source
}

// update re-ranks s after its list of the ranking's class changed.
func (r *ranking) update(s *source) {
	i, n := s.slot[r.class], s.lists[r.class].n
	switch {
	case i < 0 && n > 0:
		heap.Push(r, s)
	case i >= 0 && n == 0:
		heap.Remove(r, i)
	case i >= 0:
		heap.Fix(r, i)
	}
}

func (r *ranking) Len() int { return len(r.sources) }

func (r *ranking) Less(i, j int) bool {
	a, b := &r.sources[i].lists[r.class], &r.sources[j].lists[r.class]
	if a.n != b.n {
		return a.n > b.n
	}
	return a.head.entry.seq < b.head.entry.seq
}

func (r *ranking) Swap(i, j int) {
	r.sources[i], r.sources[j] = r.sources[j], r.sources[i]
	r.sources[i].slot[r.class] = i
	r.sources[j].slot[r.class] = j
}

func (r *ranking) Push(x any) {
	s := x.(*source)
	s.slot[r.class] = len(r.sources)
	r.sources = append(r.sources, s)
}

func (r *ranking) Pop() any {
	last := len(r.sources) - 1
	s := r.sources[last]
	r.sources[last] = nil
	r.sources = r.sources[:last]
	s.slot[r.class] = -1
	return s
}

// sourceOf is the source an address belongs to: the address itself for
// IPv4 (and IPv4-mapped IPv6), its /64 for IPv6. Invalid for an invalid
// address.
func sourceOf(addr netip.Addr) netip.Prefix {
	addr = addr.Unmap().WithZone("")
	if !addr.IsValid() {
		return netip.Prefix{}
	}
	if addr.Is4() {
		return netip.PrefixFrom(addr, 32)
	}
	p, _ := addr.Prefix(64)
	return p
}

// sourceAtAccept is the source of a connection if it can be known without
// waiting on the peer: for a plain TCP connection, or TLS over one (whose
// RemoteAddr is the socket's). A wrapped connection's RemoteAddr may read
// from the network (a PROXY-protocol header), so its source is learned on
// its own goroutine.
func sourceAtAccept(conn net.Conn) netip.Prefix {
	var tcp *net.TCPConn
	switch c := conn.(type) {
	case *net.TCPConn:
		tcp = c
	case *tls.Conn:
		tcp, _ = c.NetConn().(*net.TCPConn)
	}
	if tcp == nil {
		return netip.Prefix{}
	}
	return sourceOf(addrPortOf(tcp.RemoteAddr()).Addr())
}
