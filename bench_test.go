package tcpmux

// Benchmarks of the PacketConn data path over loopback TCP.
//
//	go test -run '^$' -bench . -benchmem
//
// Every sub-benchmark reports packets/s ("pkts/s"), and -benchmem shows
// allocs/op, one op being one packet (one round trip for BenchmarkEcho).
// The goal is 0 allocs/op in steady state.
//
// The shape follows what pion/ice's agent does with a mux: one ufrag per
// agent, one TCP connection per ufrag, and one goroutine per agent looping
// on ReadFrom (ReadFromAddrPort when available). "conns=64" is 64 such
// agents side by side, as in an SFU. Clients run in this process: they
// send pre-generated frames or drain with pre-allocated buffers, so they
// allocate nothing, but they do share the CPU with the mux; the
// interop/cmd/muxbench command runs clients in a separate process and
// compares with pion/ice's mux.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	benchConnCounts  = []int{1, 64}
	benchPacketSizes = []int{64, 1200, 8000}
)

// benchReadBuffer is the ReadFrom buffer: pion/ice's receiveMTU.
const benchReadBuffer = 8192

// benchWriteBuffer is TCPMuxParams.WriteBufferSize in buffered mode.
const benchWriteBuffer = 1 << 20

type addrPortReader interface {
	ReadFromAddrPort(b []byte) (int, netip.AddrPort, error)
}

type addrPortWriter interface {
	WriteToAddrPort(b []byte, addr netip.AddrPort) (int, error)
}

// benchAgents is n agents, each with its own ufrag, PacketConn handle and
// one client TCP connection whose first frame has already been read.
type benchAgents struct {
	mux     *TCPMuxDefault
	pcs     []net.PacketConn
	clients []net.Conn
	remotes []net.Addr       // the clients' addresses as ReadFrom returned them
	aps     []netip.AddrPort // the same as netip.AddrPort
}

func newBenchAgents(b *testing.B, n int, params TCPMuxParams) *benchAgents {
	b.Helper()
	env := &benchAgents{mux: newTestMux(b, params)}
	for i := range n {
		ufrag := fmt.Sprintf("bench%04d", i)
		pc := getConn(b, env.mux, ufrag)
		client := dialUfrag(b, env.mux, ufrag)
		_, from := readPacket(b, pc) // the Binding request
		if err := pc.SetReadDeadline(time.Time{}); err != nil {
			b.Fatal(err)
		}
		env.pcs = append(env.pcs, pc)
		env.clients = append(env.clients, client)
		env.remotes = append(env.remotes, from)
		env.aps = append(env.aps, from.(*net.TCPAddr).AddrPort())
	}
	return env
}

// abort unblocks the clients and agents of a failed benchmark.
func (env *benchAgents) abort() {
	for _, c := range env.clients {
		_ = c.Close()
	}
	for _, pc := range env.pcs {
		_ = pc.Close()
	}
}

// benchShares splits total packets over n agents.
func benchShares(total, n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = total / n
		if i < total%n {
			s[i]++
		}
	}
	return s
}

// benchBatch returns about 64 KiB of identical frames of size bytes, so a
// client sends many frames per Write.
func benchBatch(size int) []byte {
	frameLen := FrameHeaderSize + size
	count := max(1, (64<<10)/frameLen)
	batch := make([]byte, 0, count*frameLen)
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i)
	}
	for range count {
		batch, _ = AppendFrame(batch, payload)
	}
	return batch
}

// benchSend writes exactly count frames of frameLen bytes from batch.
func benchSend(c net.Conn, batch []byte, frameLen, count int) error {
	perBatch := len(batch) / frameLen
	for count > 0 {
		k := min(count, perBatch)
		if _, err := c.Write(batch[:k*frameLen]); err != nil {
			return err
		}
		count -= k
	}
	return nil
}

// benchDrain reads and discards exactly want bytes.
func benchDrain(c net.Conn, buf []byte, want int64) error {
	for want > 0 {
		n, err := c.Read(buf[:min(int64(len(buf)), want)])
		want -= int64(n)
		if err != nil && want > 0 {
			return err
		}
	}
	return nil
}

type benchErrs struct {
	once sync.Once
	err  error
}

func (e *benchErrs) set(err error) { e.once.Do(func() { e.err = err }) }

// benchWarmup is how many packets each agent moves before the timer
// starts, so that buffers have grown and allocs/op shows the steady state
// even at small b.N.
const benchWarmup = 256

// benchWorkers is one goroutine per agent that runs fn(i, count) for every
// count sent to it, so that timed phases start no goroutine (starting one
// allocates).
type benchWorkers struct {
	work   []chan int
	phase  sync.WaitGroup
	exited sync.WaitGroup
}

func startBenchWorkers(n int, errs *benchErrs, abort func(), fn func(i, count int) error) *benchWorkers {
	w := &benchWorkers{work: make([]chan int, n)}
	for i := range w.work {
		ch := make(chan int, 1)
		w.work[i] = ch
		w.exited.Add(1)
		go func() {
			defer w.exited.Done()
			for count := range ch {
				if err := fn(i, count); err != nil {
					errs.set(err)
					abort()
				}
				w.phase.Done()
			}
		}()
	}
	return w
}

// start hands every worker its count; wait waits until all are done.
func (w *benchWorkers) start(counts []int) {
	w.phase.Add(len(w.work))
	for i, ch := range w.work {
		ch <- counts[i]
	}
}

func (w *benchWorkers) wait() { w.phase.Wait() }

func (w *benchWorkers) stop() {
	for _, ch := range w.work {
		close(ch)
	}
	w.exited.Wait()
}

func uniformShares(count, n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = count
	}
	return s
}

func mallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

// reportPacketRate reports packets/s and, unrounded, allocations per
// packet since mallocs0 (-benchmem's allocs/op rounds down to an integer,
// hiding a buffer reallocated every few hundred packets).
func reportPacketRate(b *testing.B, packets int, mallocs0 uint64) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(packets)/s, "pkts/s")
	}
	b.ReportMetric(float64(mallocs()-mallocs0)/float64(packets), "allocs/pkt")
}

// BenchmarkReadFrom measures ingress: clients send frames, each agent reads
// its share of b.N packets with ReadFrom.
func BenchmarkReadFrom(b *testing.B) { benchIngressMatrix(b, false) }

// BenchmarkReadFromAddrPort is BenchmarkReadFrom through ReadFromAddrPort,
// the path pion/ice's agent takes when the conn offers it.
func BenchmarkReadFromAddrPort(b *testing.B) { benchIngressMatrix(b, true) }

func benchIngressMatrix(b *testing.B, addrPort bool) {
	for _, conns := range benchConnCounts {
		for _, size := range benchPacketSizes {
			b.Run(fmt.Sprintf("conns=%d/size=%d", conns, size), func(b *testing.B) {
				benchIngress(b, conns, size, addrPort)
			})
		}
	}
}

func benchIngress(b *testing.B, conns, size int, addrPort bool) {
	env := newBenchAgents(b, conns, TCPMuxParams{})
	batch := benchBatch(size)
	frameLen := FrameHeaderSize + size
	var errs benchErrs
	clients := startBenchWorkers(conns, &errs, env.abort, func(i, count int) error {
		if err := benchSend(env.clients[i], batch, frameLen, count); err != nil {
			return fmt.Errorf("client %d: %w", i, err)
		}
		return nil
	})
	bufs := make([][]byte, conns)
	aprs := make([]addrPortReader, conns)
	for i, pc := range env.pcs {
		bufs[i] = make([]byte, benchReadBuffer)
		aprs[i], _ = pc.(addrPortReader)
		if addrPort && aprs[i] == nil {
			b.Fatal("PacketConn has no ReadFromAddrPort")
		}
	}
	readers := startBenchWorkers(conns, &errs, env.abort, func(i, count int) error {
		pc, apr, buf := env.pcs[i], aprs[i], bufs[i]
		for range count {
			var n int
			var err error
			if addrPort {
				n, _, err = apr.ReadFromAddrPort(buf)
			} else {
				n, _, err = pc.ReadFrom(buf)
			}
			if err == nil && n != size {
				err = fmt.Errorf("read %d bytes, want %d", n, size)
			}
			if err != nil {
				return fmt.Errorf("agent %d: %w", i, err)
			}
		}
		return nil
	})
	defer clients.stop()
	defer readers.stop()
	runBenchPhases(b, size, clients, readers, &errs, false, nil)
}

// runBenchPhases runs benchWarmup packets, then b.N timed ones, spread
// over the connections of clients and agents, and reports the packet rate.
// The timer stops when the agents are done, or with untilClients when the
// clients are too (egress: every byte has arrived). afterWarmup, if set,
// resets counters before the timed phase.
func runBenchPhases(b *testing.B, size int, clients, agents *benchWorkers, errs *benchErrs, untilClients bool, afterWarmup func()) {
	b.Helper()
	conns := len(clients.work)
	warm := uniformShares(benchWarmup, conns)
	clients.start(warm)
	agents.start(warm)
	agents.wait()
	clients.wait()
	if errs.err != nil {
		b.Fatal(errs.err)
	}
	if afterWarmup != nil {
		afterWarmup()
	}

	shares := benchShares(b.N, conns)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	mallocs0 := mallocs()
	b.ResetTimer()
	clients.start(shares)
	agents.start(shares)
	agents.wait()
	if !untilClients {
		b.StopTimer()
	}
	clients.wait()
	b.StopTimer()
	if errs.err != nil {
		b.Fatal(errs.err)
	}
	reportPacketRate(b, b.N, mallocs0)
}

// BenchmarkWriteTo measures egress: each agent writes its share of b.N
// packets with WriteTo while its client drains. mode=sync is
// WriteBufferSize 0; mode=buffered is a 1 MiB write buffer, where a frame
// dropped because the buffer is full is retried after runtime.Gosched and
// counted in drops/pkt. The timer stops when the clients have every byte.
func BenchmarkWriteTo(b *testing.B) { benchEgressMatrix(b, false) }

// BenchmarkWriteToAddrPort is BenchmarkWriteTo through WriteToAddrPort.
func BenchmarkWriteToAddrPort(b *testing.B) { benchEgressMatrix(b, true) }

func benchEgressMatrix(b *testing.B, addrPort bool) {
	for _, buffered := range []bool{false, true} {
		mode := "sync"
		if buffered {
			mode = "buffered"
		}
		for _, conns := range benchConnCounts {
			for _, size := range benchPacketSizes {
				b.Run(fmt.Sprintf("mode=%s/conns=%d/size=%d", mode, conns, size), func(b *testing.B) {
					benchEgress(b, conns, size, addrPort, buffered)
				})
			}
		}
	}
}

func benchEgress(b *testing.B, conns, size int, addrPort, buffered bool) {
	params := TCPMuxParams{}
	if buffered {
		params.WriteBufferSize = benchWriteBuffer
	}
	env := newBenchAgents(b, conns, params)
	payload := make([]byte, size)
	var errs benchErrs
	var drops atomic.Int64
	bufs := make([][]byte, conns)
	apws := make([]addrPortWriter, conns)
	for i, pc := range env.pcs {
		bufs[i] = make([]byte, 64<<10)
		apws[i], _ = pc.(addrPortWriter)
		if addrPort && apws[i] == nil {
			b.Fatal("PacketConn has no WriteToAddrPort")
		}
	}
	clients := startBenchWorkers(conns, &errs, env.abort, func(i, count int) error {
		if err := benchDrain(env.clients[i], bufs[i], int64(count)*int64(FrameHeaderSize+size)); err != nil {
			return fmt.Errorf("client %d: %w", i, err)
		}
		return nil
	})
	writers := startBenchWorkers(conns, &errs, env.abort, func(i, count int) error {
		pc, apw, addr, ap := env.pcs[i], apws[i], env.remotes[i], env.aps[i]
		var dropped int64
		defer func() { drops.Add(dropped) }()
		for k := 0; k < count; {
			var err error
			if addrPort {
				_, err = apw.WriteToAddrPort(payload, ap)
			} else {
				_, err = pc.WriteTo(payload, addr)
			}
			switch {
			case err == nil:
				k++
			case buffered && errors.Is(err, ErrWriteBufferFull):
				dropped++
				runtime.Gosched()
			default:
				return fmt.Errorf("agent %d: %w", i, err)
			}
		}
		return nil
	})
	defer clients.stop()
	defer writers.stop()
	runBenchPhases(b, size, clients, writers, &errs, true, func() { drops.Store(0) })
	if buffered {
		b.ReportMetric(float64(drops.Load())/float64(b.N), "drops/pkt")
	}
}

// BenchmarkEcho measures one round trip through one agent: the client
// sends a frame, the agent reads it and writes it back, the client reads
// the echo. ns/op is the round-trip time; allocs/op must be 0.
func BenchmarkEcho(b *testing.B) {
	for _, api := range []string{"Addr", "AddrPort"} {
		for _, size := range benchPacketSizes {
			b.Run(fmt.Sprintf("api=%s/size=%d", api, size), func(b *testing.B) {
				benchEcho(b, size, api == "AddrPort")
			})
		}
	}
}

func benchEcho(b *testing.B, size int, addrPort bool) {
	env := newBenchAgents(b, 1, TCPMuxParams{})
	pc, client := env.pcs[0], env.clients[0]
	apr, _ := pc.(addrPortReader)
	apw, _ := pc.(addrPortWriter)
	if addrPort && (apr == nil || apw == nil) {
		b.Fatal("PacketConn has no AddrPort methods")
	}
	var errs benchErrs
	rbuf := make([]byte, benchReadBuffer)
	agent := startBenchWorkers(1, &errs, env.abort, func(_, count int) error {
		for range count {
			var err error
			if addrPort {
				var n int
				var from netip.AddrPort
				if n, from, err = apr.ReadFromAddrPort(rbuf); err == nil {
					_, err = apw.WriteToAddrPort(rbuf[:n], from)
				}
			} else {
				var n int
				var from net.Addr
				if n, from, err = pc.ReadFrom(rbuf); err == nil {
					_, err = pc.WriteTo(rbuf[:n], from)
				}
			}
			if err != nil {
				return fmt.Errorf("agent: %w", err)
			}
		}
		return nil
	})
	defer agent.stop()
	out := frame(make([]byte, size))
	in := make([]byte, len(out))
	roundTrips := func(count int) error {
		for range count {
			if _, err := client.Write(out); err != nil {
				return fmt.Errorf("client write: %w", err)
			}
			if _, err := io.ReadFull(client, in); err != nil {
				return fmt.Errorf("client read: %w", err)
			}
			if got := int(binary.BigEndian.Uint16(in)); got != size {
				return fmt.Errorf("echo of %d bytes, want %d", got, size)
			}
		}
		return nil
	}
	run := func(count int) {
		agent.start([]int{count})
		if err := roundTrips(count); err != nil {
			errs.set(err)
			env.abort()
		}
		agent.wait()
	}

	run(benchWarmup)
	if errs.err != nil {
		b.Fatal(errs.err)
	}
	counts := []int{b.N}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	mallocs0 := mallocs()
	b.ResetTimer()
	agent.phase.Add(1)
	agent.work[0] <- counts[0]
	if err := roundTrips(b.N); err != nil {
		errs.set(err)
		env.abort()
	}
	agent.wait()
	b.StopTimer()
	if errs.err != nil {
		b.Fatal(errs.err)
	}
	reportPacketRate(b, b.N, mallocs0)
}

// BenchmarkAccept measures one connection's life: the agent's
// GetConnByUfrag, the client's connect and Binding request, the mux's
// accept, first-frame validation and attach, the agent reading the
// request, then both ends closing. allocs/op is per connection and
// includes the client's net.Dial, which runs in this process too.
func BenchmarkAccept(b *testing.B) {
	m := newTestMux(b, TCPMuxParams{})
	addr := m.LocalAddr().String()
	ufrags := make([]string, 16)
	requests := make([][]byte, len(ufrags))
	for i := range requests {
		ufrags[i] = fmt.Sprintf("accept%02d", i)
		requests[i] = frame(bindingRequest(b, ufrags[i]))
	}
	buf := make([]byte, benchReadBuffer)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		pc, err := m.GetConnByUfrag(ufrags[i%len(ufrags)], false, net.IPv4(127, 0, 0, 1))
		if err != nil {
			b.Fatal(err)
		}
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Write(requests[i%len(requests)]); err != nil {
			b.Fatal(err)
		}
		if _, _, err := pc.ReadFrom(buf); err != nil {
			b.Fatal(err)
		}
		_ = conn.(*net.TCPConn).SetLinger(0) // no TIME_WAIT pile-up
		_ = conn.Close()
		_ = pc.Close()
	}
}
