// Command tcpmux-server is an example WebRTC server built on
// github.com/icetcp/tcpmux: one port carries ICE-TCP (through the mux),
// ICE-UDP (same port number), and HTTPS for the signalling page, metrics
// and expvar (through the mux's FallbackListener). Open the page, and a
// DataChannel echoes what it sends.
//
//	cd interop && go run ./cmd/tcpmux-server [-addr :8443] [-cert c.pem -key k.pem] [-nat1to1 203.0.113.7] [-tcp-only]
//
// Then https://localhost:8443/ (a self-signed certificate is generated at
// start unless -cert and -key are given), /metrics (Prometheus) and
// /debug/vars (expvar). Ctrl-C, SIGINT or SIGTERM shut it down gracefully.
package main

import (
	"context"
	"expvar"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/icetcp/tcpmux/interop/internal/exampleserver"
	"github.com/pion/logging"
)

func main() {
	var cfg exampleserver.Config
	flag.StringVar(&cfg.Addr, "addr", ":8443", "TCP address to serve (ICE-UDP uses the same port)")
	flag.StringVar(&cfg.CertFile, "cert", "", "HTTPS certificate file (default: a self-signed one)")
	flag.StringVar(&cfg.KeyFile, "key", "", "HTTPS key file")
	flag.BoolVar(&cfg.PlainHTTP, "http", false, "serve the page over plain HTTP (fine on loopback; -cert and -key are then unused)")
	flag.BoolVar(&cfg.TCPOnly, "tcp-only", false, "no ICE-UDP: every session goes through the TCP mux")
	flag.StringVar(&cfg.NAT1To1IP, "nat1to1", "", "public IP to advertise in ICE candidates (server behind 1:1 NAT)")
	flag.BoolVar(&cfg.Loopback, "loopback", false, "include loopback candidates (automatic when -addr is a loopback address)")
	flag.IntVar(&cfg.MaxSessions, "max-sessions", 1000, "live WebRTC sessions at most (> 0); offers past it get 503")
	verbose := flag.Bool("v", false, "log pion's and the mux's warnings")
	flag.Parse()

	loggers := logging.NewDefaultLoggerFactory()
	loggers.DefaultLogLevel = logging.LogLevelError
	if *verbose {
		loggers.DefaultLogLevel = logging.LogLevelWarn
	}
	cfg.LoggerFactory = loggers

	srv, err := exampleserver.Start(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tcpmux-server:", err)
		os.Exit(1)
	}
	expvar.Publish("tcpmux", expvar.Func(func() any { return srv.Mux().Stats() }))
	fmt.Printf("tcpmux-server: serving %s (ICE-TCP%s, page, /metrics, /debug/vars on one port)\n",
		srv.URL(), map[bool]string{false: " and ICE-UDP", true: ""}[cfg.TCPOnly])

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	fmt.Println("tcpmux-server: shutting down")
	if err := srv.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "tcpmux-server: close:", err)
		os.Exit(1)
	}
}
