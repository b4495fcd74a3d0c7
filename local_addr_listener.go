package tcpmux

import "net"

// KeepSocketLocalAddr wraps a listener whose connections report, as
// LocalAddr, another address than their socket's own, so that they report
// the socket's again; RemoteAddr and everything else are the wrapped
// connection's. Use it around a PROXY-protocol listener (such as
// github.com/pires/go-proxyproto's) when the mux sits behind a TCP load
// balancer:
//
//	mux := tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{
//		Listener: tcpmux.KeepSocketLocalAddr(&proxyproto.Listener{Listener: ln}),
//	})
//
// ReadFrom then reports each real client's address, and the eviction rule
// and MaxConnectionsPerIP count the real client's source, while
// PacketConns stay keyed by the local IP the agent gathered on.
//
// Without it, a PROXY-protocol connection reports the header's destination
// (the balancer's address) as LocalAddr. The mux keys the connection's
// PacketConn by that IP, which no agent asked for, so the connection lands
// in a second, unclaimed PacketConn and the agent's connectivity checks
// time out.
//
// The socket is found through the wrapped connection's Raw() (as
// go-proxyproto names it), NetConn() or Unwrap() method; a connection with
// none of them is returned as it is. Asking the socket its address never
// reads from the network, so Accept does not wait on the peer.
func KeepSocketLocalAddr(ln net.Listener) net.Listener {
	return socketAddrListener{ln}
}

type socketAddrListener struct{ net.Listener }

func (l socketAddrListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	var socket net.Conn
	switch wrapped := conn.(type) {
	case interface{ Raw() net.Conn }:
		socket = wrapped.Raw()
	case interface{ NetConn() net.Conn }:
		socket = wrapped.NetConn()
	case interface{ Unwrap() net.Conn }:
		socket = wrapped.Unwrap()
	}
	if socket == nil {
		return conn, nil
	}
	return &socketAddrConn{Conn: conn, local: socket.LocalAddr()}, nil
}

// socketAddrConn is a connection reporting its socket's local address.
type socketAddrConn struct {
	net.Conn
	local net.Addr
}

func (c *socketAddrConn) LocalAddr() net.Addr { return c.local }

// Unwrap returns the wrapped connection.
func (c *socketAddrConn) Unwrap() net.Conn { return c.Conn }
