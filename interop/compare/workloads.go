package compare

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Kinds of workload.
const (
	Ingress  = "ingress" // clients send, agents ReadFrom
	Egress   = "egress"  // agents WriteTo, clients drain
	Echo     = "echo"    // client sends, agent reads and writes back, client waits
	IdleConn = "idle"    // accept N connections, then hold them idle
)

// Workload is one row group of the report.
type Workload struct {
	Kind     string
	Conns    int // TCP connections, one per agent (ufrag)
	Size     int // packet payload bytes
	Buffered bool
}

func (w Workload) String() string {
	switch w.Kind {
	case IdleConn:
		return fmt.Sprintf("accept+idle %d conns", w.Conns)
	case Echo:
		return fmt.Sprintf("echo %s %d B", plural(w.Conns, "conn"), w.Size)
	}
	mode := ""
	if w.Kind == Egress {
		mode = " sync"
		if w.Buffered {
			mode = " buffered"
		}
	}
	return fmt.Sprintf("%s%s %s %d B", w.Kind, mode, plural(w.Conns, "conn"), w.Size)
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// sample is one trial's metrics.
type sample map[string]float64

// Metric names.
const (
	mPktRate        = "pkts/s"
	mCPUPerPkt      = "server CPU/pkt"
	mServerCPU      = "server CPU %"
	mClientCPU      = "client CPU %"
	mSoftirqCPU     = "softirq % (machine)"
	mAllocsPkt      = "allocs/pkt"
	mDropRate       = "drops/s"
	mP50            = "RTT p50"
	mP99            = "RTT p99"
	mRTRate         = "round trips/s"
	mAllocsRT       = "allocs/round trip"
	mCPUPerRT       = "server CPU/round trip"
	mIdleBytes      = "heap+stack/conn at 200 ms"
	mIdleGorout     = "goroutines/conn"
	mIdleHeap       = "heap/conn at 200 ms"
	mIdleStack      = "stacks/conn at 200 ms"
	mIdleLaterBytes = "heap+stack/conn at 2.5 s"
	mAcceptCPU      = "server CPU/accept"
	mAcceptAlloc    = "allocs/accept"
)

// readBufferSize is the agent's read buffer: pion/ice's receiveMTU.
const readBufferSize = 8192

type paddedCounter struct {
	atomic.Int64
	_ [56]byte
}

// agents is one trial's server side: a mux (or the reference) with one
// handle and one reader goroutine per ufrag, as pion's agents hold them.
type agents struct {
	cfg     *Config
	srv     server
	addr    string
	ufrags  []string
	pcs     []net.PacketConn
	bufs    [][]byte
	remotes []net.Addr
	aps     []netip.AddrPort
	counts  []paddedCounter
	drops   []paddedCounter

	first    sync.WaitGroup // one Done per reader, at its first packet
	readers  sync.WaitGroup
	writers  sync.WaitGroup
	stopping atomic.Bool
	stopW    atomic.Bool
	errOnce  sync.Once
	err      error
}

var trialSeq atomic.Int64

func newAgents(cfg *Config, impl Impl, n int, params MuxParams) (*agents, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	a := &agents{
		cfg:     cfg,
		srv:     newServer(impl, ln, params),
		addr:    ln.Addr().String(),
		ufrags:  make([]string, n),
		bufs:    make([][]byte, n),
		remotes: make([]net.Addr, n),
		aps:     make([]netip.AddrPort, n),
		counts:  make([]paddedCounter, n),
		drops:   make([]paddedCounter, n),
	}
	trial := trialSeq.Add(1)
	for i := range a.ufrags {
		a.ufrags[i] = fmt.Sprintf("t%d-%d", trial, i)
		a.bufs[i] = make([]byte, readBufferSize)
	}
	return a, nil
}

// phase logs how long a phase of the trial takes, in verbose mode.
func (a *agents) phase(name string) func() {
	if !a.cfg.Verbose {
		return func() {}
	}
	t0 := time.Now()
	return func() {
		if d := time.Since(t0); d > phaseLogThreshold {
			fmt.Fprintf(a.cfg.Log, "  %s took %v\n", name, d.Round(time.Millisecond))
		}
	}
}

func (a *agents) fail(err error) {
	if a.stopping.Load() {
		return
	}
	a.errOnce.Do(func() { a.err = err })
}

// open claims every ufrag with GetConnByUfrag.
func (a *agents) open() error {
	for _, u := range a.ufrags {
		pc, err := a.srv.Get(u)
		if err != nil {
			return err
		}
		a.pcs = append(a.pcs, pc)
	}
	return nil
}

type addrPortReader interface {
	ReadFromAddrPort(b []byte) (int, netip.AddrPort, error)
}

type addrPortWriter interface {
	WriteToAddrPort(b []byte, addr netip.AddrPort) (int, error)
}

// startReaders starts one reader per handle. The first packet (the
// Binding request) gives the remote address; later ones are counted, and
// echoed back if echo is set.
func (a *agents) startReaders(echo bool) {
	for i, pc := range a.pcs {
		a.first.Add(1)
		a.readers.Add(1)
		go a.read(i, pc, echo)
	}
}

func (a *agents) read(i int, pc net.PacketConn, echo bool) {
	defer a.readers.Done()
	buf := a.bufs[i]
	apr, _ := pc.(addrPortReader)
	apw, _ := pc.(addrPortWriter)
	if !a.cfg.addrPortAPI() {
		apr, apw = nil, nil
	}
	gotFirst := false
	defer func() {
		if !gotFirst {
			a.first.Done()
		}
	}()
	for {
		var n int
		var from net.Addr
		var ap netip.AddrPort
		var err error
		if apr != nil {
			n, ap, err = apr.ReadFromAddrPort(buf)
		} else {
			n, from, err = pc.ReadFrom(buf)
		}
		if err != nil {
			if !gotFirst {
				a.fail(fmt.Errorf("agent %d: first read: %w", i, err))
			}
			return
		}
		if !gotFirst {
			if from == nil {
				from = net.TCPAddrFromAddrPort(ap)
			} else if ta, ok := from.(*net.TCPAddr); ok {
				ap = ta.AddrPort()
			}
			a.remotes[i], a.aps[i] = from, ap
			gotFirst = true
			a.first.Done()
			continue
		}
		a.counts[i].Add(1)
		if echo {
			if apw != nil {
				_, err = apw.WriteToAddrPort(buf[:n], ap)
			} else {
				_, err = pc.WriteTo(buf[:n], from)
			}
			if err != nil {
				a.fail(fmt.Errorf("agent %d: echo: %w", i, err))
				return
			}
		}
	}
}

// startWriters starts one writer per handle, writing size-byte packets to
// its remote until stopWriters. In buffered mode a frame dropped because
// the write buffer is full is counted and the writer yields.
func (a *agents) startWriters(size int, buffered bool) {
	payload := make([]byte, size)
	for i, pc := range a.pcs {
		a.writers.Add(1)
		go func() {
			defer a.writers.Done()
			apw, _ := pc.(addrPortWriter)
			if !a.cfg.addrPortAPI() {
				apw = nil
			}
			addr, ap := a.remotes[i], a.aps[i]
			for !a.stopW.Load() {
				var err error
				if apw != nil {
					_, err = apw.WriteToAddrPort(payload, ap)
				} else {
					_, err = pc.WriteTo(payload, addr)
				}
				switch {
				case err == nil:
					a.counts[i].Add(1)
				case buffered && isDrop(err):
					a.drops[i].Add(1)
					runtime.Gosched()
				default:
					a.fail(fmt.Errorf("agent %d: write: %w", i, err))
					return
				}
			}
		}()
	}
}

func (a *agents) total(cs []paddedCounter) int64 {
	var n int64
	for i := range cs {
		n += cs[i].Load()
	}
	return n
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// teardown stops the writers, closes every handle at once and the server,
// then the client's connections, and waits for every goroutine of the
// trial. The server goes first: its sockets may hold megabytes of unread
// frames, and a mux whose other readers keep draining them while the
// handles close one by one takes minutes to close.
func (a *agents) teardown(client *clientProc) error {
	defer a.phase("teardown")()
	a.stopping.Store(true)
	a.stopW.Store(true)
	var errs []error
	if !waitTimeout(&a.writers, 10*time.Second) {
		errs = append(errs, errors.New("writers did not stop"))
	}
	done := a.phase("close handles")
	var closers sync.WaitGroup
	for _, pc := range a.pcs {
		closers.Add(1)
		go func() {
			defer closers.Done()
			_ = pc.Close()
		}()
	}
	closers.Wait()
	done()
	done = a.phase("close server")
	if err := a.srv.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		errs = append(errs, fmt.Errorf("server close: %w", err))
	}
	done()
	done = a.phase("client stop")
	if _, err := client.do(command{Op: "stop"}); err != nil {
		errs = append(errs, err)
	}
	done()
	defer a.phase("wait readers")()
	if !waitTimeout(&a.readers, 10*time.Second) {
		errs = append(errs, errors.New("readers did not exit"))
	}
	return errors.Join(errs...)
}

// snapshot is the server process's counters at one instant.
type snapshot struct {
	at        time.Time
	cpu       time.Duration
	clientCPU time.Duration // the client process's, if clientOK
	clientOK  bool
	softirq   time.Duration // every CPU's, if softirqOK
	softirqOK bool
	mallocs   uint64
	count     int64
	drops     int64
}

func (a *agents) snap() snapshot {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := snapshot{at: time.Now(), cpu: processCPU(), mallocs: ms.Mallocs, count: a.total(a.counts), drops: a.total(a.drops)}
	s.softirq, s.softirqOK = softirqCPU()
	if a.cfg.client != nil {
		s.clientCPU, s.clientOK = childCPU(a.cfg.client.pid())
	}
	return s
}

// connect makes the client dial one connection per ufrag in mode and waits
// until every agent has read its Binding request.
func (a *agents) connect(client *clientProc, mode string, size int) error {
	defer a.phase("connect")()
	if _, err := client.do(command{Op: "dial", Addr: a.addr, Ufrags: a.ufrags, Mode: mode, Size: size, Parallel: 16}); err != nil {
		return err
	}
	if !waitTimeout(&a.first, 30*time.Second) {
		return errors.New("agents did not receive their Binding requests")
	}
	return a.err
}

// runTrial runs one workload on one implementation.
func runTrial(cfg *Config, client *clientProc, w Workload, impl Impl) (s sample, err error) {
	params := cfg.Params
	if w.Buffered {
		params.WriteBufferSize = cfg.BufferedWriteSize
	}
	a, err := newAgents(cfg, impl, w.Conns, params)
	if err != nil {
		return nil, err
	}
	defer func() {
		if terr := a.teardown(client); terr != nil && err == nil {
			err = terr
		}
		if err == nil {
			err = a.err
		}
	}()
	if w.Kind == IdleConn {
		return a.acceptIdle()
	}
	done := a.phase("open")
	if err := a.open(); err != nil {
		return nil, err
	}
	done()
	a.startReaders(w.Kind == Echo)
	mode := map[string]string{Ingress: modeBlast, Egress: modeDrain, Echo: modeEcho}[w.Kind]
	if err := a.connect(client, mode, w.Size); err != nil {
		return nil, err
	}
	if w.Kind == Egress {
		a.startWriters(w.Size, w.Buffered)
	} else {
		done := a.phase("go")
		if _, err := client.do(command{Op: "go"}); err != nil {
			return nil, err
		}
		done()
	}
	time.Sleep(cfg.Warmup)
	if w.Kind == Echo {
		if _, err := client.do(command{Op: "mark"}); err != nil {
			return nil, err
		}
	}
	done = a.phase("snap")
	s0 := a.snap()
	done()
	time.Sleep(cfg.Duration)
	done = a.phase("snap")
	s1 := a.snap()
	done()
	s = sample{}
	packets := float64(s1.count - s0.count)
	secs := s1.at.Sub(s0.at).Seconds()
	perPacket := func(v float64) float64 {
		if packets == 0 {
			return 0
		}
		return v / packets
	}
	cpuNs := float64(s1.cpu - s0.cpu)
	allocs := float64(s1.mallocs - s0.mallocs)
	s[mServerCPU] = 100 * cpuNs / float64(s1.at.Sub(s0.at))
	if s0.clientOK && s1.clientOK {
		s[mClientCPU] = 100 * float64(s1.clientCPU-s0.clientCPU) / float64(s1.at.Sub(s0.at))
	}
	if s0.softirqOK && s1.softirqOK {
		s[mSoftirqCPU] = 100 * float64(s1.softirq-s0.softirq) / float64(s1.at.Sub(s0.at))
	}
	if w.Kind == Echo {
		a.stopping.Store(true)
		rep, err := client.do(command{Op: "stop"})
		if err != nil {
			return nil, err
		}
		s[mRTRate] = packets / secs
		s[mCPUPerRT] = perPacket(cpuNs)
		s[mAllocsRT] = perPacket(allocs)
		s[mP50] = float64(rep.P50)
		s[mP99] = float64(rep.P99)
		return s, nil
	}
	s[mPktRate] = packets / secs
	s[mCPUPerPkt] = perPacket(cpuNs)
	s[mAllocsPkt] = perPacket(allocs)
	if w.Buffered {
		s[mDropRate] = float64(s1.drops-s0.drops) / secs
	}
	if packets == 0 {
		return s, errors.New("no packets moved in the window")
	}
	return s, nil
}

// Idle connections are measured idleSoon after the last one is attached
// (every connection's Binding request read by its agent), quiet but not
// yet past tcpmux's 2 s release of idle connections' buffers, and again
// idleLater after it, past that release (not in quick runs).
const (
	idleSoon  = 200 * time.Millisecond
	idleLater = 2500 * time.Millisecond
)

// fileLimitMargin is the descriptors a process needs besides its
// connections.
const fileLimitMargin = 256

// acceptIdle measures the server CPU and allocations of accepting
// w.Conns connections (first frame read, routed, delivered to the agent's
// reader), then the heap and stack that they hold once idle, each with its
// GetConnByUfrag handle and a reader goroutine blocked in ReadFrom. The
// agents' read buffers are allocated before the baseline: they are the
// application's, the same for every implementation.
func (a *agents) acceptIdle() (sample, error) {
	if err := checkFileLimit(len(a.ufrags)); err != nil {
		return nil, err
	}
	n := float64(len(a.ufrags))
	m0, g0 := idleMemory()
	if err := a.open(); err != nil {
		return nil, err
	}
	a.startReaders(false)
	time.Sleep(20 * time.Millisecond) // let the readers block
	runtime.GC()
	s0 := a.snap()
	if err := a.connect(a.cfg.client, modeHold, 0); err != nil {
		return nil, err
	}
	attached := time.Now()
	s1 := a.snap()
	time.Sleep(time.Until(attached.Add(idleSoon)))
	m1, g1 := idleMemory()
	delta := func(a, b uint64) float64 { return float64(int64(b)-int64(a)) / n }
	s := sample{
		mAcceptCPU:   float64(s1.cpu-s0.cpu) / n,
		mAcceptAlloc: float64(s1.mallocs-s0.mallocs) / n,
		mIdleBytes:   delta(m0.HeapInuse+m0.StackInuse, m1.HeapInuse+m1.StackInuse),
		mIdleHeap:    delta(m0.HeapInuse, m1.HeapInuse),
		mIdleStack:   delta(m0.StackInuse, m1.StackInuse),
		mIdleGorout:  float64(g1-g0) / n,
	}
	if !a.cfg.Quick {
		time.Sleep(time.Until(attached.Add(idleLater)))
		m2, _ := idleMemory()
		s[mIdleLaterBytes] = delta(m0.HeapInuse+m0.StackInuse, m2.HeapInuse+m2.StackInuse)
	}
	return s, nil
}

// idleMemory is the memory statistics and the goroutine count after
// collecting garbage.
func idleMemory() (runtime.MemStats, int) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms, runtime.NumGoroutine()
}

var phaseLogThreshold = 100 * time.Millisecond
