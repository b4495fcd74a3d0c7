package tcpmux

import (
	"errors"
	"net"
	"net/netip"
)

// ErrNoMuxes is returned by the getters of a MultiTCPMuxDefault that has no
// muxes.
var ErrNoMuxes = errors.New("tcpmux: MultiTCPMuxDefault has no muxes")

// MultiTCPMuxDefault spreads ICE-TCP over several muxes, typically one per
// port: an ICE agent that sees AllConnsGetter gathers one passive candidate
// per mux. It implements TCPMux and AllConnsGetter and is safe for
// concurrent use; its set of muxes is fixed at creation.
type MultiTCPMuxDefault struct {
	muxes []TCPMux
}

var (
	_ TCPMux         = (*MultiTCPMuxDefault)(nil)
	_ AllConnsGetter = (*MultiTCPMuxDefault)(nil)
)

// NewMultiTCPMuxDefault combines muxes. The multi mux owns them: its Close
// closes them all.
func NewMultiTCPMuxDefault(muxes ...TCPMux) *MultiTCPMuxDefault {
	return &MultiTCPMuxDefault{muxes: append([]TCPMux(nil), muxes...)}
}

// GetConnByUfrag returns a handle from the first mux.
func (m *MultiTCPMuxDefault) GetConnByUfrag(ufrag string, isIPv6 bool, local net.IP) (net.PacketConn, error) {
	if len(m.muxes) == 0 {
		return nil, ErrNoMuxes
	}
	return m.muxes[0].GetConnByUfrag(ufrag, isIPv6, local)
}

// GetAllConns returns one handle per mux, in the order the muxes were
// given. It is all-or-nothing: on error it closes the handles it took.
func (m *MultiTCPMuxDefault) GetAllConns(ufrag string, isIPv6 bool, localIP net.IP) ([]net.PacketConn, error) {
	if len(m.muxes) == 0 {
		return nil, ErrNoMuxes
	}
	conns := make([]net.PacketConn, 0, len(m.muxes))
	for _, mux := range m.muxes {
		conn, err := mux.GetConnByUfrag(ufrag, isIPv6, localIP)
		if err != nil {
			for _, c := range conns {
				_ = c.Close()
			}
			return nil, err
		}
		conns = append(conns, conn)
	}
	return conns, nil
}

// RemoveConnByUfrag removes ufrag from every mux.
func (m *MultiTCPMuxDefault) RemoveConnByUfrag(ufrag string) {
	for _, mux := range m.muxes {
		mux.RemoveConnByUfrag(ufrag)
	}
}

// Stats sums the counters of the muxes that have a Stats() Stats method;
// others count nothing.
func (m *MultiTCPMuxDefault) Stats() Stats {
	var sum Stats
	for _, mux := range m.muxes {
		if s, ok := mux.(interface{ Stats() Stats }); ok {
			sum = sum.add(s.Stats())
		}
	}
	return sum
}

// Close closes every mux and returns their errors joined.
func (m *MultiTCPMuxDefault) Close() error {
	errs := make([]error, 0, len(m.muxes))
	for _, mux := range m.muxes {
		errs = append(errs, mux.Close())
	}
	return errors.Join(errs...)
}

// LocalAddr has the first mux's port and the IP every mux listens on, or
// the unspecified IP when they differ: pion's agent gathers TCP candidates
// only on the IP a mux reports. Muxes without a LocalAddr method are
// skipped. With no mux that reports an address, LocalAddr is nil.
func (m *MultiTCPMuxDefault) LocalAddr() net.Addr {
	var first netip.AddrPort
	sameIP := true
	for _, mux := range m.muxes {
		withAddr, ok := mux.(interface{ LocalAddr() net.Addr })
		if !ok {
			continue
		}
		ap := unmapAddrPort(addrPortOf(withAddr.LocalAddr()))
		if !first.IsValid() {
			first = ap
			continue
		}
		sameIP = sameIP && ap.Addr() == first.Addr()
	}
	if !first.IsValid() {
		return nil
	}
	if sameIP {
		return net.TCPAddrFromAddrPort(first)
	}
	unspecified := netip.IPv4Unspecified()
	if first.Addr().Is6() {
		unspecified = netip.IPv6Unspecified()
	}
	return &net.TCPAddr{IP: unspecified.AsSlice(), Port: int(first.Port())}
}
