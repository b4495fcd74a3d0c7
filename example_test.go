package tcpmux_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"expvar"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/icetcp/tcpmux"
	"github.com/pion/stun/v3"
)

// clientHello plays the remote ICE agent: it connects, sends its Binding
// request (USERNAME "server-ufrag:client-ufrag") and then one packet.
func clientHello(addr net.Addr, serverUfrag string, packet []byte) (net.Conn, error) {
	conn, err := net.Dial("tcp", addr.String())
	if err != nil {
		return nil, err
	}
	req, err := stun.Build(stun.BindingRequest, stun.TransactionID,
		stun.NewUsername(serverUfrag+":client"), stun.NewShortTermIntegrity("password"), stun.Fingerprint)
	if err != nil {
		return nil, err
	}
	var out []byte
	out, _ = tcpmux.AppendFrame(out, req.Raw)
	out, _ = tcpmux.AppendFrame(out, packet)
	_, err = conn.Write(out)
	return conn, err
}

// A mux serving one client: the agent's PacketConn receives the client's
// Binding request, then its packets, and answers over the same connection.
func ExampleNewTCPMuxDefault() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	mux := tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{Listener: ln})
	defer mux.Close()

	// What ice.WithTCPMux(mux) makes the agent do for its local ufrag.
	pc, err := mux.GetConnByUfrag("server-ufrag", false, net.IPv4(127, 0, 0, 1))
	if err != nil {
		panic(err)
	}
	defer pc.Close()

	client, err := clientHello(mux.LocalAddr(), "server-ufrag", []byte("ping"))
	if err != nil {
		panic(err)
	}
	defer client.Close()

	buf := make([]byte, 1500)
	n, from, _ := pc.ReadFrom(buf)
	msg := &stun.Message{Raw: buf[:n]}
	_ = msg.Decode()
	fmt.Println("first packet:", msg.Type)
	n, _, _ = pc.ReadFrom(buf)
	fmt.Println("then:", string(buf[:n]))

	_, _ = pc.WriteTo([]byte("pong"), from)
	reply := make([]byte, 2+4)
	_, _ = io.ReadFull(client, reply)
	fmt.Println("client got:", string(reply[2:2+binary.BigEndian.Uint16(reply)]))
	fmt.Println("active connections:", mux.Stats().ConnsActive)
	// Output:
	// first packet: Binding request
	// then: ping
	// client got: pong
	// active connections: 1
}

// A multi mux over two ports: an agent that sees AllConnsGetter gathers one
// passive candidate per port, and each port carries its own connections.
func ExampleNewMultiTCPMuxDefault() {
	var muxes []tcpmux.TCPMux
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		muxes = append(muxes, tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{Listener: ln}))
	}
	multi := tcpmux.NewMultiTCPMuxDefault(muxes...)
	defer multi.Close()

	conns, err := multi.GetAllConns("server-ufrag", false, net.IPv4(127, 0, 0, 1))
	if err != nil {
		panic(err)
	}
	for i, pc := range conns {
		defer pc.Close()
		mux := muxes[i].(*tcpmux.TCPMuxDefault)
		client, err := clientHello(mux.LocalAddr(), "server-ufrag", []byte(fmt.Sprintf("via port %d", i)))
		if err != nil {
			panic(err)
		}
		defer client.Close()
		buf := make([]byte, 1500)
		_, _, _ = pc.ReadFrom(buf) // the Binding request
		n, _, _ := pc.ReadFrom(buf)
		fmt.Println(string(buf[:n]))
	}
	fmt.Println("candidates:", len(conns))
	// Output:
	// via port 0
	// via port 1
	// candidates: 2
}

// A listener with Multipath TCP explicitly on (Go's default on Linux since
// Go 1.24); connections that negotiate MPTCP are counted in
// Stats().MultipathConns. Any net.Listener works the same way.
func ExampleTCPMuxParams_multipathTCP() {
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	mux := tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{
		Listener:             ln,
		FirstStunBindTimeout: 10 * time.Second,
		WriteBufferSize:      256 << 10,
	})
	defer mux.Close()
	fmt.Println("serving:", mux.LocalAddr() != nil)
	// Output:
	// serving: true
}

// Behind a TCP load balancer that sends the PROXY protocol, wrap the
// PROXY-protocol listener (e.g. &proxyproto.Listener{Listener: ln} from
// github.com/pires/go-proxyproto) so that connections keep their socket's
// local address, which PacketConns are keyed by, while reporting the real
// client as remote.
func ExampleKeepSocketLocalAddr() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	proxied := ln // here: &proxyproto.Listener{Listener: ln, ReadHeaderTimeout: 5 * time.Second}
	mux := tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{Listener: tcpmux.KeepSocketLocalAddr(proxied)})
	defer mux.Close()
	fmt.Println(mux.LocalAddr().(*net.TCPAddr).IP)
	// Output: 127.0.0.1
}

// ICE-TCP and a web server share one port: connections that do not start
// with a framed STUN Binding request go to FallbackListener, with the
// bytes the mux read replayed. (Serve HTTPS with srv.ServeTLS the same
// way.)
func ExampleTCPMuxDefault_FallbackListener() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	mux := tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{Listener: ln, Fallback: true})
	defer mux.Close()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "hello from the shared port")
	})}
	go srv.Serve(mux.FallbackListener())
	defer srv.Close()

	resp, err := http.Get("http://" + mux.LocalAddr().String())
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	fmt.Println(string(body))
	fmt.Println("handed over:", mux.Stats().FallbackConns)
	// Output:
	// hello from the shared port
	// handed over: 1
}

// Stats as an expvar variable: expvar.Publish("tcpmux", stats) serves it,
// as JSON, at /debug/vars with the rest of the process's variables.
func ExampleTCPMuxDefault_Stats() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	mux := tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{Listener: ln})
	defer mux.Close()

	stats := expvar.Func(func() any { return mux.Stats() })
	var snapshot tcpmux.Stats
	if err := json.Unmarshal([]byte(stats.String()), &snapshot); err != nil {
		panic(err)
	}
	fmt.Println("accepted:", snapshot.ConnsAccepted, "evicted:", snapshot.Rejected.Evicted)
	// Output: accepted: 0 evicted: 0
}
