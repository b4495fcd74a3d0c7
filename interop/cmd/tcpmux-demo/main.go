// Command tcpmux-demo shows github.com/icetcp/tcpmux at work with real
// pion/ice agents: it starts one mux on a loopback port, connects several
// ICE-TCP sessions through it (server agents whose only candidate is the
// mux's passive one, clients dialling with active ICE-TCP), moves checked
// data both ways on every session at once, measures round-trip times,
// prints a short report with the mux's counters, and exits 0, or 1 on any
// failure. It only uses 127.0.0.1.
//
//	cd interop && go run ./cmd/tcpmux-demo [-sessions 4] [-messages 2000] [-timeout 15s]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/icetcp/tcpmux"
	"github.com/icetcp/tcpmux/interop/internal/harness"
	"github.com/pion/ice/v4"
	"github.com/pion/logging"
)

type config struct {
	sessions int
	messages int
	probes   int
	timeout  time.Duration
	logLevel logging.LogLevel
}

func main() {
	cfg := config{probes: 200, logLevel: logging.LogLevelError}
	flag.IntVar(&cfg.sessions, "sessions", 4, "ICE sessions sharing the mux's port")
	flag.IntVar(&cfg.messages, "messages", 2000, "messages of 1 to 1200 bytes sent each way per session")
	flag.DurationVar(&cfg.timeout, "timeout", 15*time.Second, "give up after this long")
	verbose := flag.Bool("v", false, "show pion's and the mux's warnings")
	flag.Parse()
	if *verbose {
		cfg.logLevel = logging.LogLevelWarn
	}
	if err := run(context.Background(), os.Stdout, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "tcpmux-demo: FAILED:", err)
		os.Exit(1)
	}
}

type sessionReport struct {
	ufrag      string
	client     string
	exchange   harness.ExchangeResult
	rtts       []time.Duration
	connectDur time.Duration
}

func run(ctx context.Context, out io.Writer, cfg config) (err error) {
	if cfg.sessions < 1 || cfg.messages < 1 || cfg.probes < 1 {
		return errors.New("sessions, messages and probes must be positive")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	start := time.Now()
	lf := harness.Loggers(cfg.logLevel)

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	mux := tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{
		Listener:             ln,
		Logger:               lf.NewLogger("tcpmux"),
		FirstStunBindTimeout: 5 * time.Second,
	})
	defer func() {
		if cerr := mux.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("closing the mux: %w", cerr)
		}
	}()
	port := mux.LocalAddr().(*net.TCPAddr).Port //nolint:forcetypeassert // a TCP listener's address
	fmt.Fprintf(out, "tcpmux demo: %d ICE-TCP sessions (pion/ice agents) share one mux on %s\n\n",
		cfg.sessions, mux.LocalAddr())

	// Connect every session at once.
	sessions := make([]*harness.Session, cfg.sessions)
	reports := make([]sessionReport, cfg.sessions)
	errs := make([]error, cfg.sessions)
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Go(func() {
			t0 := time.Now()
			sessions[i], errs[i] = harness.Connect(ctx, mux, lf, harness.Options{
				NetworkTypes: []ice.NetworkType{ice.NetworkTypeTCP4},
			})
			reports[i].connectDur = time.Since(t0)
		})
	}
	wg.Wait()
	defer func() {
		for _, s := range sessions {
			if s != nil {
				_ = s.Close()
			}
		}
	}()
	for i, s := range sessions {
		if errs[i] != nil {
			return fmt.Errorf("session %d: connecting: %w", i+1, errs[i])
		}
		if err := s.CheckServerPair(port); err != nil {
			return fmt.Errorf("session %d: %w", i+1, err)
		}
		p, _ := s.ServerPair()
		reports[i].ufrag = s.ServerUfrag
		reports[i].client = net.JoinHostPort(p.Remote.Address(), fmt.Sprint(p.Remote.Port()))
	}

	// Move data on every session at once, then measure round trips.
	exchangeStart := time.Now()
	for i, s := range sessions {
		wg.Go(func() {
			reports[i].exchange, errs[i] = harness.Exchange(ctx, s.ClientConn, s.ServerConn, harness.ExchangeConfig{
				Messages: cfg.messages,
				Seed:     uint64(i + 1), //nolint:gosec // small
			})
		})
	}
	wg.Wait()
	exchangeDur := time.Since(exchangeStart)
	for i := range sessions {
		if errs[i] != nil {
			return fmt.Errorf("session %d: exchange: %w", i+1, errs[i])
		}
	}
	for i, s := range sessions {
		if reports[i].rtts, err = harness.RTT(ctx, s.ClientConn, s.ServerConn, cfg.probes, 100); err != nil {
			return fmt.Errorf("session %d: %w", i+1, err)
		}
	}
	open := mux.Stats()

	// Close the sessions: the mux must be left with nothing.
	for i, s := range sessions {
		if err := s.Close(); err != nil {
			return fmt.Errorf("session %d: close: %w", i+1, err)
		}
	}
	closed, err := waitIdle(ctx, mux)
	if err != nil {
		return err
	}

	printReport(out, cfg, reports, exchangeDur, open, closed)
	if open.ConnsRejected != 0 || open.WriteDrops != 0 {
		return fmt.Errorf("the mux rejected %d connections and dropped %d writes", open.ConnsRejected, open.WriteDrops)
	}
	fmt.Fprintf(out, "\nOK in %v\n", time.Since(start).Round(time.Millisecond))

	return nil
}

// waitIdle polls the mux's counters until it holds no state for any ufrag.
func waitIdle(ctx context.Context, mux *tcpmux.TCPMuxDefault) (tcpmux.Stats, error) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		st := mux.Stats()
		if st.PacketConns == 0 && st.ConnsActive == 0 && st.ConnsPending == 0 {
			return st, nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return st, fmt.Errorf("the mux still holds %d PacketConns and %d connections after every session closed: %w",
				st.PacketConns, st.ConnsActive, ctx.Err())
		}
	}
}

func printReport(
	out io.Writer, cfg config, reports []sessionReport, exchangeDur time.Duration, open, closed tcpmux.Stats,
) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "session\tserver ufrag\tclient (active)\tconnect\tclient->server\tserver->client\tRTT p50\tRTT p99\t")
	var total uint64
	for i, r := range reports {
		total += r.exchange.BytesAToB + r.exchange.BytesBToA
		fmt.Fprintf(tw, "%d\t%s\t%s\t%v\t%s\t%s\t%v\t%v\t\n", i+1, r.ufrag, r.client,
			r.connectDur.Round(time.Millisecond), size(r.exchange.BytesAToB), size(r.exchange.BytesBToA),
			harness.Percentile(r.rtts, 50).Round(time.Microsecond), harness.Percentile(r.rtts, 99).Round(time.Microsecond))
	}
	_ = tw.Flush()
	fmt.Fprintf(out, "\n%d messages of 1-%d bytes each way per session, every byte and the order checked:\n",
		cfg.messages, harness.MaxMessage)
	fmt.Fprintf(out, "%s in %v (%s/s); RTT measured with %d probes of 100 bytes per session\n",
		size(total), exchangeDur.Round(time.Millisecond), size(uint64(float64(total)/exchangeDur.Seconds())), cfg.probes)

	fmt.Fprintf(out, "\nmux counters (Stats) with every session open:\n")
	fmt.Fprintf(out, "  connections   accepted %d, rejected %d, active %d, pending %d, PacketConns %d\n",
		open.ConnsAccepted, open.ConnsRejected, open.ConnsActive, open.ConnsPending, open.PacketConns)
	fmt.Fprintf(out, "  received      %d packets, %s (STUN checks included)\n", open.PacketsReceived, size(open.BytesReceived))
	fmt.Fprintf(out, "  sent          %d packets, %s; write drops %d\n", open.PacketsSent, size(open.BytesSent), open.WriteDrops)
	fmt.Fprintf(out, "after every session closed: PacketConns %d, active %d, pending %d, rejected %d\n",
		closed.PacketConns, closed.ConnsActive, closed.ConnsPending, closed.ConnsRejected)
}

func size(b uint64) string {
	switch {
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	default:
		return fmt.Sprintf("%d B", b)
	}
}
