// Package compare measures github.com/icetcp/tcpmux side by side with
// pion/ice v4's ice.TCPMuxDefault and with a plain framed-TCP reference (no
// mux: bufio reads in the application's goroutine, one Write per frame), on
// the same workloads in one process run, interleaved round by round (pion,
// ours, ref; the next round starts one further along), and prints the
// medians and ratios as markdown tables: every row has ours/pion and
// ours/ref, and the goal column checks issue 12's goals ("Performance to
// the floor"), against ref wherever ref does the same work.
//
// The clients run in a separate process (this executable re-executed with
// Config.ClientArgs), talking over loopback, so that the server's CPU time
// (getrusage RUSAGE_SELF), allocations (runtime.MemStats.Mallocs) and memory
// are the server's alone. Workloads:
//
//   - ingress: clients send frames as fast as they can, about 64 KiB of
//     frames per Write, one sender per connection; each agent (one ufrag,
//     one TCP connection, one goroutine in ReadFrom, like a pion/ice
//     agent's candidate) counts the packets it reads.
//   - egress: each agent writes packets to its connection with WriteTo as
//     fast as it can; clients drain. Buffered mode retries after a frame
//     dropped for a full write buffer (counted in drops/s).
//   - echo: each client sends one frame and waits for the agent to write
//     it back; the client process records the round-trip times.
//   - accept+idle, at 1,000 and 10,000 connections by default: N clients
//     connect and send their Binding request to N agents waiting in
//     ReadFrom; the server CPU time and allocations of accepting them are
//     divided by N; then, 200 ms after the last agent read its Binding
//     request (the goal's measurement), and again 2.5 s after it (past
//     tcpmux's 2 s release of idle connections' buffers; not in quick
//     runs), the growth of HeapInuse+StackInuse since before
//     GetConnByUfrag is divided by N, as is the goroutine count's at
//     200 ms (the agents' reader goroutines included, their read buffers
//     excluded). Both processes raise their soft RLIMIT_NOFILE to the hard
//     limit, and a workload fails, saying so, if that is too low for N.
//
// ref is the floor, so it must be a fast plain server, or ratios against
// it flatter the mux. It reads each frame with Peek and Discard from a
// 64 KiB bufio.Reader in the agent's goroutine (one copy, into the agent's
// buffer); a frame larger than the buffer is read through, one too large
// for the agent's buffer is skipped with io.ErrShortBuffer. Measured in
// alternating runs on a noisy machine (medians of 6), 64 KiB reads cost
// as much server CPU per packet as 16 KiB ones at 64 B and 10-25% less at
// 1200 and 8000 B, and Peek/Discard about 20% less than two io.ReadFull
// calls at 64 B (the same at 1200 B). Once attached, a
// connection's reads and writes cost one atomic load before the socket (a
// select per packet had made ref's 64 B ingress 2.5 times slower). An idle
// connection holds no bufio buffer until its next byte arrives, waiting in
// a 1-byte Read, as a frugal plain server would.
//
// So that a reader can tell whether the client or the server is the
// bottleneck, every throughput and echo workload reports the server's
// and the client process's CPU time over the window (100% is one core;
// the client's is read from /proc/<pid>/stat, Linux only), and the
// machine's softirq time (/proc/stat), where loopback runs most of TCP's
// receive path, in the sender's context but accounted to no process. A
// server near 100% beside a client with headroom is server-bound. With
// 64 B frames to ref on 2 shared cores the server ran at 85-100% (its
// socket's receive queue never drained) while the client used 15-40% and
// softirqs 15-30%: larger batches or a second sender per connection moved
// no more packets. Neither process is pinned to a CPU.
//
// Agents read with ReadFromAddrPort and write with WriteToAddrPort when the
// PacketConn offers them, as pion/ice's agent does (Config.API "addr"
// forces ReadFrom/WriteTo).
package compare

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Config is one comparison run.
type Config struct {
	Duration          time.Duration // measured window per trial
	Warmup            time.Duration // traffic before the window opens
	Rounds            int
	Quick             bool   // a small workload set, for a smoke test
	Only              string // run only workloads whose name contains one of these comma-separated strings
	Params            MuxParams
	BufferedWriteSize int   // WriteBufferSize of the buffered egress workloads
	IdleConns         []int // connections of the accept+idle workloads
	API               string
	ClientArgs        []string  // arguments that make this executable a client
	ClientEnv         []string  // extra environment of the client process
	Out               io.Writer // the report
	Log               io.Writer // progress and errors
	Verbose           bool      // log every trial

	client *clientProc
}

func (c *Config) addrPortAPI() bool { return c.API != "addr" }

// Workloads is the run's workload list.
func (c *Config) Workloads() []Workload {
	var ws []Workload
	if c.Quick {
		ws = []Workload{
			{Kind: Ingress, Conns: 1, Size: 64},
			{Kind: Ingress, Conns: 1, Size: 1200},
			{Kind: Ingress, Conns: 16, Size: 1200},
			{Kind: Egress, Conns: 1, Size: 1200},
			{Kind: Egress, Conns: 16, Size: 1200},
			{Kind: Echo, Conns: 1, Size: 1200},
		}
	} else {
		for _, kind := range []string{Ingress, Egress} {
			for _, conns := range []int{1, 16, 256} {
				for _, size := range []int{64, 1200, 8000} {
					ws = append(ws, Workload{Kind: kind, Conns: conns, Size: size})
				}
			}
		}
		for _, conns := range []int{1, 16, 256} {
			ws = append(ws, Workload{Kind: Egress, Conns: conns, Size: 1200, Buffered: true})
		}
		ws = append(ws,
			Workload{Kind: Echo, Conns: 1, Size: 1200},
			Workload{Kind: Echo, Conns: 16, Size: 1200},
		)
	}
	for _, n := range c.IdleConns {
		ws = append(ws, Workload{Kind: IdleConn, Conns: n})
	}
	if c.Only != "" {
		keep := strings.Split(c.Only, ",")
		ws = slices.DeleteFunc(ws, func(w Workload) bool {
			return !slices.ContainsFunc(keep, func(k string) bool { return strings.Contains(w.String(), k) })
		})
	}
	return ws
}

// results[workload][impl][round]; nil where the trial failed.
type results [][numImpls][]sample

const numImpls = 3 // len(Impls)

func implIndex(impl Impl) int { return slices.Index(Impls, impl) }

// Run runs the comparison and writes the report to cfg.Out.
func Run(cfg Config) error {
	if cfg.Log == nil {
		cfg.Log = os.Stderr
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if _, _, err := raiseFileLimit(); err != nil {
		fmt.Fprintf(cfg.Log, "muxbench: %v; accept+idle workloads with many connections may fail\n", err)
	}
	client, err := startClient(cfg.ClientArgs, cfg.ClientEnv)
	if err != nil {
		return fmt.Errorf("starting the client process: %w", err)
	}
	cfg.client = client
	defer func() { _ = client.close() }()

	ws := cfg.Workloads()
	res := make(results, len(ws))
	for i := range res {
		for j := range res[i] {
			res[i][j] = make([]sample, cfg.Rounds)
		}
	}
	start := time.Now()
	failures := 0
	for round := range cfg.Rounds {
		order := append(slices.Clone(Impls[round%len(Impls):]), Impls[:round%len(Impls)]...)
		for wi, w := range ws {
			for _, impl := range order {
				t0 := time.Now()
				s, err := runTrial(&cfg, client, w, impl)
				if cfg.Verbose {
					fmt.Fprintf(cfg.Log, "round %d: %-34s %-4s %6v goroutines=%d %v\n", round+1, w, impl,
						time.Since(t0).Round(time.Millisecond), runtime.NumGoroutine(), s)
				}
				if err != nil {
					failures++
					fmt.Fprintf(cfg.Log, "round %d: %s: %s: %v\n", round+1, w, impl, err)
					continue
				}
				res[wi][implIndex(impl)][round] = s
			}
		}
		fmt.Fprintf(cfg.Log, "round %d/%d done after %v\n", round+1, cfg.Rounds, time.Since(start).Round(time.Second))
	}
	report(&cfg, ws, res, time.Since(start))
	if failures > 0 {
		return fmt.Errorf("%d trials failed", failures)
	}
	return nil
}

// metricSpec says how to show and judge one metric.
type metricSpec struct {
	name   string
	format func(float64) string
	goal   string // shown in the goal column
	// vs is what the goal compares ours with: the median per-round ratio
	// ours/vs is checked; "" checks ours' median itself.
	vs    Impl
	check func(float64) bool // nil: informative only
	// noRatio: ratios say nothing (allocation counts, whose goal is 0;
	// CPU percentages): the ratio cells stay empty.
	noRatio bool
}

func atLeast(x float64) func(float64) bool { return func(v float64) bool { return v >= x } }
func atMost(x float64) func(float64) bool  { return func(v float64) bool { return v <= x } }

// specsFor is the goals and details of a workload. The goals are issue 12's
// ("Performance to the floor"): against ref, the plain server, wherever it
// does the same work; against pion where ref has nothing comparable
// (buffered egress: ref writes synchronously; memory and goroutines of
// idle connections).
func specsFor(w Workload) (goals, details []metricSpec) {
	zeroAllocs := atMost(0.01)
	cpuShares := []metricSpec{
		{name: mServerCPU, format: fmtPercent, noRatio: true},
		{name: mClientCPU, format: fmtPercent, noRatio: true},
		{name: mSoftirqCPU, format: fmtPercent, noRatio: true},
	}
	switch w.Kind {
	case Ingress:
		floor := 0.9
		if w.Size <= 64 {
			floor = 0.5
		}
		goals = []metricSpec{
			{name: mPktRate, format: fmtRate, goal: fmt.Sprintf(">= %.1fx ref", floor), vs: Ref, check: atLeast(floor)},
			{name: mAllocsPkt, format: fmtAllocs, goal: "0", check: zeroAllocs, noRatio: true},
		}
		details = append([]metricSpec{{name: mCPUPerPkt, format: fmtNanos}}, cpuShares...)
	case Egress:
		if w.Buffered {
			goals = []metricSpec{
				{name: mPktRate, format: fmtRate, goal: ">= 1.5x pion", vs: Pion, check: atLeast(1.5)},
				{name: mAllocsPkt, format: fmtAllocs, goal: "0", check: zeroAllocs, noRatio: true},
			}
			details = []metricSpec{{name: mCPUPerPkt, format: fmtNanos}, {name: mDropRate, format: fmtRate}}
		} else {
			goals = []metricSpec{
				{name: mPktRate, format: fmtRate, goal: ">= 0.9x ref", vs: Ref, check: atLeast(0.9)},
				{name: mCPUPerPkt, format: fmtNanos, goal: "<= 1.15x ref", vs: Ref, check: atMost(1.15)},
				{name: mAllocsPkt, format: fmtAllocs, goal: "0", check: zeroAllocs, noRatio: true},
			}
		}
		details = append(details, cpuShares...)
	case Echo:
		goals = []metricSpec{
			{name: mP50, format: fmtNanos, goal: "<= 1.1x ref", vs: Ref, check: atMost(1.1)},
			{name: mAllocsRT, format: fmtAllocs, goal: "0", check: zeroAllocs, noRatio: true},
		}
		details = append([]metricSpec{
			{name: mP99, format: fmtNanos},
			{name: mRTRate, format: fmtRate},
			{name: mCPUPerRT, format: fmtNanos},
		}, cpuShares...)
	case IdleConn:
		goals = []metricSpec{
			{name: mIdleBytes, format: fmtBytes, goal: "<= 0.5x pion", vs: Pion, check: atMost(0.5)},
			{name: mIdleGorout, format: fmtCount, goal: "<= 2 (1 mux + the app's reader)", check: atMost(2.05)},
			{name: mAcceptCPU, format: fmtNanos, goal: "<= 0.7x pion", vs: Pion, check: atMost(0.7)},
		}
		details = []metricSpec{
			{name: mIdleHeap, format: fmtBytes},
			{name: mIdleStack, format: fmtBytes},
			{name: mIdleLaterBytes, format: fmtBytes},
			{name: mAcceptAlloc, format: fmtCount},
		}
	}
	return goals, details
}

func report(cfg *Config, ws []Workload, res results, took time.Duration) {
	out := cfg.Out
	fmt.Fprintf(out, "## tcpmux vs pion/ice TCPMuxDefault vs plain framed TCP\n\n")
	fmt.Fprintf(out, "%s %s/%s, GOMAXPROCS %d, %d CPUs; %d rounds of %v (+%v warm-up) per trial, interleaved; run took %v.\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0), runtime.NumCPU(),
		cfg.Rounds, cfg.Duration, cfg.Warmup, took.Round(time.Second))
	api := "ReadFromAddrPort/WriteToAddrPort where offered (ours, ref), else ReadFrom/WriteTo (pion)"
	if !cfg.addrPortAPI() {
		api = "ReadFrom/WriteTo for all"
	}
	fmt.Fprintf(out, "Both muxes get TCPMuxParams{ReadBufferSize: %d, WriteBufferSize: 0, or %d in buffered mode}; agents use %s.\n",
		cfg.Params.ReadBufferSize, cfg.BufferedWriteSize, api)
	fmt.Fprintf(out, "Values are medians over rounds; a ratio is the median of the per-round ours/pion (or ours/ref) ratios, with their range.\n")
	fmt.Fprintf(out, "The clients run in a separate process; CPU and allocations are the server process's. Neither process is pinned to a CPU%s.\n",
		fileLimitNote())
	fmt.Fprintf(out, "Goals are issue 12's: against ref (the floor) where it does the same work, against pion for buffered egress and idle memory.\n\n")

	header := "| workload | metric | pion | ours | ref | ours/pion | ours/ref |"
	fmt.Fprintln(out, "### Goals")
	fmt.Fprintln(out)
	fmt.Fprintln(out, header+" goal | met |")
	fmt.Fprintln(out, "|---|---|---:|---:|---:|---:|---:|---|---|")
	for wi, w := range ws {
		goals, _ := specsFor(w)
		for k, spec := range goals {
			row, v, ok := tableRow(res[wi], w, k, spec)
			met := "?"
			if ok && spec.check != nil {
				met = "no"
				if spec.check(v) {
					met = "yes"
				}
			}
			fmt.Fprintf(out, "%s %s | %s |\n", row, spec.goal, met)
		}
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "### Details")
	fmt.Fprintln(out)
	fmt.Fprintln(out, header)
	fmt.Fprintln(out, "|---|---|---:|---:|---:|---:|---:|")
	for wi, w := range ws {
		_, details := specsFor(w)
		details = slices.DeleteFunc(details, func(spec metricSpec) bool { return !measured(res[wi], spec.name) })
		for k, spec := range details {
			row, _, _ := tableRow(res[wi], w, k, spec)
			fmt.Fprintln(out, row)
		}
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "ref is the floor, not a competitor: it has no mux (no ufrag routing, no queue, no hand-off between goroutines) and")
	fmt.Fprintln(out, "no write buffer (its buffered egress rows write synchronously). Per-packet CPU is the server process's CPU time in")
	fmt.Fprintln(out, "the window divided by the packets moved, the agents' own loop included. server CPU % and client CPU % are each process's")
	fmt.Fprintln(out, "CPU time in the window over its length (100% = one core; the client's from /proc/<pid>/stat, 10 ms resolution).")
	fmt.Fprintln(out, "Linux accounts softirqs, where loopback runs most of TCP's receive path in the sender's context, to no process:")
	fmt.Fprintln(out, "softirq % is every CPU's, whoever caused it. A server near 100% (one busy reader) beside a client with headroom")
	fmt.Fprintln(out, "is server-bound; on a shared machine, other processes' CPU keeps either below 100%.")
}

// fileLimitNote describes RLIMIT_NOFILE for the report's header, where it
// is known.
func fileLimitNote() string {
	soft, hard, _ := raiseFileLimit()
	if soft == 0 {
		return ""
	}
	return fmt.Sprintf("; RLIMIT_NOFILE %d (hard %d)", soft, hard)
}

// tableRow formats one metric of one workload; it returns the value its
// goal checks (the median ratio ours/spec.vs, or ours' median) and whether
// it exists.
func tableRow(byImpl [numImpls][]sample, w Workload, k int, spec metricSpec) (string, float64, bool) {
	name := ""
	if k == 0 {
		name = w.String()
	}
	var medians [numImpls]float64
	var have [numImpls]bool
	cells := make([]string, numImpls)
	for i := range Impls {
		vals := values(byImpl[i], spec.name)
		if len(vals) == 0 {
			cells[i] = "n/a"
			continue
		}
		medians[i], have[i] = median(vals), true
		cells[i] = spec.format(medians[i])
	}
	pi, oi, ri := implIndex(Pion), implIndex(Ours), implIndex(Ref)
	vsPion, rPion, okPion := ratioCell(byImpl[oi], byImpl[pi], spec.name)
	vsRef, rRef, okRef := ratioCell(byImpl[oi], byImpl[ri], spec.name)
	if spec.noRatio {
		vsPion, vsRef = "", ""
	}
	row := fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s |", name, spec.name, cells[pi], cells[oi], cells[ri], vsPion, vsRef)
	switch spec.vs {
	case Pion:
		return row, rPion, okPion
	case Ref:
		return row, rRef, okRef
	}
	return row, medians[oi], have[oi]
}

// measured tells whether any trial of a workload has the metric (the
// client CPU, on Linux only; the late idle memory, not in quick runs).
func measured(byImpl [numImpls][]sample, metric string) bool {
	for _, ss := range byImpl {
		if len(values(ss, metric)) > 0 {
			return true
		}
	}
	return false
}

func values(ss []sample, metric string) []float64 {
	var vals []float64
	for _, s := range ss {
		if v, ok := s[metric]; ok {
			vals = append(vals, v)
		}
	}
	return vals
}

// ratioCell is the median of per-round num/den ratios, with their range.
func ratioCell(num, den []sample, metric string) (string, float64, bool) {
	var rs []float64
	for r := range num {
		if num[r] == nil || den[r] == nil {
			continue
		}
		n, d := num[r][metric], den[r][metric]
		if d <= 0 {
			continue
		}
		rs = append(rs, n/d)
	}
	if len(rs) == 0 {
		return "n/a", 0, false
	}
	m := median(rs)
	if len(rs) == 1 {
		return fmt.Sprintf("%.2fx", m), m, true
	}
	return fmt.Sprintf("%.2fx (%.2f-%.2f)", m, slices.Min(rs), slices.Max(rs)), m, true
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fmtRate(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

func fmtNanos(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2f ms", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.0f µs", v/1e3)
	case v >= 1e3:
		return fmt.Sprintf("%.1f µs", v/1e3)
	}
	return fmt.Sprintf("%.0f ns", v)
}

func fmtBytes(v float64) string {
	if v >= 1024 || v <= -1024 {
		return fmt.Sprintf("%.1f KiB", v/1024)
	}
	return fmt.Sprintf("%.0f B", v)
}

func fmtPercent(v float64) string { return fmt.Sprintf("%.0f%%", v) }

func fmtAllocs(v float64) string { return fmt.Sprintf("%.3f", v) }

func fmtCount(v float64) string { return fmt.Sprintf("%.2f", v) }
