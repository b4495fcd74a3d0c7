// Command muxbench compares github.com/icetcp/tcpmux with pion/ice v4's
// ice.TCPMuxDefault and with plain framed TCP (no mux) on the same
// workloads (ingress, egress, echo, accept and idle memory), interleaved in
// one run, and prints medians and ratios as markdown tables. Clients run in
// a child process (this command re-executed with -client) over loopback, so
// the server's CPU time, allocations and memory are measured alone; the
// details table shows both processes' CPU, to tell which was the
// bottleneck. See package github.com/icetcp/tcpmux/interop/compare for the
// method.
//
//	cd interop && go run ./cmd/muxbench            # full run (3 rounds), about 4 minutes on 2 cores
//	cd interop && go run ./cmd/muxbench -quick     # smoke test, under 30 s
//	cd interop && go run ./cmd/muxbench -only ingress -rounds 5
//	cd interop && go run ./cmd/muxbench -only accept -idle-conns 100,1000,10000 -rounds 5
//	cd interop && go run ./cmd/muxbench -only "256 conns 8000" -memprofile mem.out -cpuprofile cpu.out
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/icetcp/tcpmux/interop/compare"
)

func main() {
	var cfg compare.Config
	client := flag.Bool("client", false, "run as the client process (internal)")
	flag.DurationVar(&cfg.Duration, "duration", 400*time.Millisecond, "measured window per trial")
	flag.DurationVar(&cfg.Warmup, "warmup", 100*time.Millisecond, "traffic before each window opens")
	flag.IntVar(&cfg.Rounds, "rounds", 3, "rounds; each runs every workload on pion, ours and ref")
	flag.BoolVar(&cfg.Quick, "quick", false, "few workloads, 1 round, short windows (smoke test)")
	flag.StringVar(&cfg.Only, "only", "", "run only workloads whose name contains one of these comma-separated strings (e.g. \"ingress,echo\", \"16 conns\")")
	flag.IntVar(&cfg.Params.ReadBufferSize, "readbuf", 8, "TCPMuxParams.ReadBufferSize for both muxes (pion/webrtc's examples use 8)")
	flag.IntVar(&cfg.BufferedWriteSize, "writebuf", 1<<20, "TCPMuxParams.WriteBufferSize of the buffered egress workloads")
	idleConns := flag.String("idle-conns", "1000,10000", "comma-separated connection counts of the accept+idle workloads")
	flag.StringVar(&cfg.API, "api", "auto", "auto: AddrPort methods where offered, as pion/ice's agent; addr: ReadFrom/WriteTo only")
	flag.BoolVar(&cfg.Verbose, "v", false, "log every trial")
	cpuProfile := flag.String("cpuprofile", "", "write the server process's CPU profile to this file")
	memProfile := flag.String("memprofile", "", "write the server process's allocation profile to this file (sampling every 4 KiB)")
	flag.Parse()

	if *client {
		if err := compare.RunClient(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "muxbench client:", err)
			os.Exit(1)
		}
		return
	}
	if cfg.Quick {
		setIfDefault := func(name string, set func()) {
			explicit := false
			flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == name })
			if !explicit {
				set()
			}
		}
		setIfDefault("rounds", func() { cfg.Rounds = 1 })
		setIfDefault("duration", func() { cfg.Duration = 200 * time.Millisecond })
		setIfDefault("warmup", func() { cfg.Warmup = 50 * time.Millisecond })
		setIfDefault("idle-conns", func() { *idleConns = "200" })
	}
	for _, f := range strings.Split(*idleConns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "muxbench: -idle-conns: %q is not a positive count\n", f)
			os.Exit(2)
		}
		cfg.IdleConns = append(cfg.IdleConns, n)
	}
	if cfg.Rounds < 1 || cfg.Duration <= 0 {
		fmt.Fprintln(os.Stderr, "muxbench: -rounds and -duration must be positive")
		os.Exit(2)
	}
	if *memProfile != "" {
		runtime.MemProfileRate = 4096
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "muxbench:", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	cfg.ClientArgs = []string{"-client"}
	cfg.Out, cfg.Log = os.Stdout, os.Stderr
	err := compare.Run(cfg)
	if *memProfile != "" {
		if f, ferr := os.Create(*memProfile); ferr == nil {
			_ = pprof.Lookup("allocs").WriteTo(f, 0)
			_ = f.Close()
		}
	}
	if err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "muxbench:", err)
		os.Exit(1)
	}
}
