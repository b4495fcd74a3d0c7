// Package exampleserver is the example server of tcpmux: the shape an SFU
// operator would copy. One port carries everything: pion/webrtc sessions
// over ICE-TCP (through the mux) and ICE-UDP (same port number), and, on
// the TCP side through the mux's FallbackListener, the HTTPS signalling
// page, Prometheus metrics and expvar. PasswordLookup is wired to the
// live sessions, so only ICE requests with a live ufrag and a valid
// MESSAGE-INTEGRITY create any state.
//
// cmd/tcpmux-server runs it; the interop tests drive it with pion and with
// real browsers.
package exampleserver

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"expvar"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/icetcp/tcpmux"
	"github.com/icetcp/tcpmux/metrics"
	"github.com/pion/ice/v4"
	"github.com/pion/logging"
	"github.com/pion/webrtc/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config is the server's configuration; the zero value of each field is a
// sane default.
type Config struct {
	// Addr is the TCP address (and, with UDP, the UDP port) to serve.
	// "": ":8443".
	Addr string
	// CertFile and KeyFile are the HTTPS certificate. "": a self-signed
	// one is generated at start, for localhost and the loopback addresses.
	CertFile, KeyFile string
	// PlainHTTP serves the page over HTTP instead of HTTPS (browsers treat
	// http://127.0.0.1 as a secure context, so WebRTC works on loopback).
	PlainHTTP bool
	// TCPOnly leaves ICE-UDP out: every session then runs over ICE-TCP.
	TCPOnly bool
	// NAT1To1IP, when set, is the public address advertised in the ICE
	// candidates instead of the host's (a server behind 1:1 NAT).
	NAT1To1IP string
	// Loopback includes loopback candidates (a server tried on one
	// machine). It is on automatically when Addr is a loopback address.
	Loopback bool
	// MaxSessions bounds the live WebRTC sessions: an offer past it gets
	// 503, so that anyone who can POST cannot exhaust the server. A session
	// that never connects ends when pion's ICE gives up on it.
	// 0: 1000.
	MaxSessions int
	// LoggerFactory is pion's logger factory; nil: errors only.
	LoggerFactory logging.LoggerFactory
}

// Report is what the echo page posts when it is done, for tests.
type Report struct {
	OK             bool   `json:"ok"`
	Echoed         int    `json:"echoed"`
	LocalProtocol  string `json:"localProtocol"`
	RemoteProtocol string `json:"remoteProtocol"`
	Error          string `json:"error"`
	UserAgent      string `json:"userAgent"`
}

// Server runs the mux, the WebRTC sessions and the HTTP side.
type Server struct {
	cfg      Config
	mux      *tcpmux.TCPMuxDefault
	udp      net.PacketConn // nil with TCPOnly
	udpMux   ice.UDPMux
	api      *webrtc.API
	http     *http.Server
	served   chan struct{}
	reports  chan Report
	registry *prometheus.Registry

	mu       sync.Mutex
	sessions map[string]*session
	creds    map[string]string // server ufrag -> password, for PasswordLookup
	closed   bool
}

// Start listens on cfg.Addr and serves until Close.
func Start(cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = ":8443"
	}
	if cfg.MaxSessions == 0 {
		cfg.MaxSessions = 1000
	}
	if cfg.MaxSessions < 0 {
		return nil, fmt.Errorf("MaxSessions %d is negative", cfg.MaxSessions)
	}
	if cfg.NAT1To1IP != "" && net.ParseIP(cfg.NAT1To1IP) == nil {
		return nil, fmt.Errorf("NAT 1:1 address %q is not an IP address", cfg.NAT1To1IP)
	}
	if cfg.LoggerFactory == nil {
		f := logging.NewDefaultLoggerFactory()
		f.DefaultLogLevel = logging.LogLevelError
		cfg.LoggerFactory = f
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		served:   make(chan struct{}),
		reports:  make(chan Report, 16),
		registry: prometheus.NewRegistry(),
		sessions: make(map[string]*session),
		creds:    make(map[string]string),
	}
	s.mux = tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{
		Listener:             ln,
		Logger:               cfg.LoggerFactory.NewLogger("tcpmux"),
		WriteBufferSize:      256 << 10, // writes never block a session
		FirstStunBindTimeout: 10 * time.Second,
		PasswordLookup:       s.password,
		Fallback:             true, // HTTPS on the same port
	})
	if !cfg.TCPOnly {
		if err := s.listenUDP(ln.Addr()); err != nil {
			_ = s.mux.Close()
			return nil, err
		}
	}
	se, err := s.settingEngine(ln.Addr())
	if err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("NAT 1:1 address: %w", err)
	}
	s.api = webrtc.NewAPI(webrtc.WithSettingEngine(se))
	s.registry.MustRegister(metrics.NewCollector(s.mux, nil))
	if err := s.serveHTTP(); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Server) listenUDP(tcpAddr net.Addr) error {
	udp, err := net.ListenPacket("udp", tcpAddr.String())
	if err != nil {
		return fmt.Errorf("ICE-UDP on the same port: %w", err)
	}
	s.udp = udp
	s.udpMux = webrtc.NewICEUDPMux(s.cfg.LoggerFactory.NewLogger("udpmux"), udp)
	return nil
}

func (s *Server) settingEngine(addr net.Addr) (webrtc.SettingEngine, error) {
	var se webrtc.SettingEngine
	se.LoggerFactory = s.cfg.LoggerFactory
	se.SetICETCPMux(s.mux)
	types := []webrtc.NetworkType{webrtc.NetworkTypeTCP4, webrtc.NetworkTypeTCP6}
	if s.udpMux != nil {
		se.SetICEUDPMux(s.udpMux)
		types = append(types, webrtc.NetworkTypeUDP4, webrtc.NetworkTypeUDP6)
	}
	se.SetNetworkTypes(types)
	if s.cfg.Loopback || addr.(*net.TCPAddr).IP.IsLoopback() {
		se.SetIncludeLoopbackCandidate(true)
	}
	if s.cfg.NAT1To1IP != "" {
		// Host candidates carry the public address instead of the host's.
		err := se.SetICEAddressRewriteRules(webrtc.ICEAddressRewriteRule{
			External:        []string{s.cfg.NAT1To1IP},
			AsCandidateType: webrtc.ICECandidateTypeHost,
			Mode:            webrtc.ICEAddressRewriteReplace,
		})
		if err != nil {
			return se, err
		}
	}
	return se, nil
}

func (s *Server) serveHTTP() error {
	handler := http.NewServeMux()
	handler.HandleFunc("GET /{$}", s.page)
	handler.HandleFunc("POST /offer", s.offer)
	handler.HandleFunc("POST /report", s.report)
	handler.Handle("GET /metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{}))
	handler.Handle("GET /debug/vars", expvar.Handler())
	srv := &http.Server{
		Handler: handler,
		// Connections handed over by the mux leave its limits: these bound
		// what a slow or idle HTTP client holds.
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	fallback := s.mux.FallbackListener()
	if !s.cfg.PlainHTTP {
		cert, err := s.certificate()
		if err != nil {
			return fmt.Errorf("HTTPS certificate: %w", err)
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		fallback = tls.NewListener(fallback, srv.TLSConfig)
	}
	s.http = srv // from here on, Close waits for Serve
	go func() {
		defer close(s.served)
		_ = s.http.Serve(fallback)
	}()
	return nil
}

func (s *Server) certificate() (tls.Certificate, error) {
	if s.cfg.CertFile != "" || s.cfg.KeyFile != "" {
		return tls.LoadX509KeyPair(s.cfg.CertFile, s.cfg.KeyFile)
	}
	return selfSigned()
}

// Addr is the address the server listens on (TCP; UDP has the same port).
func (s *Server) Addr() net.Addr { return s.mux.LocalAddr() }

// URL is the page's address (on localhost when the server listens on
// every address).
func (s *Server) URL() string {
	scheme := "https"
	if s.cfg.PlainHTTP {
		scheme = "http"
	}
	addr := s.Addr().(*net.TCPAddr)
	host := addr.IP.String()
	if addr.IP.IsUnspecified() {
		host = "localhost"
	}
	return scheme + "://" + net.JoinHostPort(host, fmt.Sprint(addr.Port)) + "/"
}

// Mux is the server's TCP mux.
func (s *Server) Mux() *tcpmux.TCPMuxDefault { return s.mux }

// Reports yields what echo pages report when they are done.
func (s *Server) Reports() <-chan Report { return s.reports }

// Sessions is the number of live WebRTC sessions.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// SelectedProtocols lists the protocol ("tcp" or "udp") of every live
// session's selected ICE candidate pair, from the server's side.
func (s *Server) SelectedProtocols() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var protocols []string
	for _, sess := range s.sessions {
		if p := sess.selectedProtocol(); p != "" {
			protocols = append(protocols, p)
		}
	}
	return protocols
}

// Close stops the HTTP side, closes every session, then the muxes. It
// waits for the HTTP server's goroutine.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	sessions := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	errs := []error{}
	if s.http != nil {
		errs = append(errs, s.http.Shutdown(ctx))
	}
	for _, sess := range sessions {
		sess.close()
	}
	errs = append(errs, s.mux.Close())
	if s.udpMux != nil {
		errs = append(errs, s.udpMux.Close())
		_ = s.udp.Close() // if the mux did not
	}
	if s.http != nil {
		<-s.served
	}
	return errors.Join(errs...)
}

// password is the mux's PasswordLookup: the live sessions' credentials.
func (s *Server) password(ufrag string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pwd, ok := s.creds[ufrag]
	return pwd, ok
}

//go:embed page.html
var page []byte

func (s *Server) page(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(page)
}

// offerRequest is the page's POST /offer: an SDP offer, and the session it
// renegotiates (an ICE restart), if any.
type offerRequest struct {
	SDP     string `json:"sdp"`
	Session string `json:"session,omitempty"`
}

type offerResponse struct {
	SDP     string `json:"sdp"`
	Session string `json:"session"`
}

func (s *Server) offer(w http.ResponseWriter, r *http.Request) {
	var req offerRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		http.Error(w, "bad offer: "+err.Error(), http.StatusBadRequest)
		return
	}
	sess, err := s.sessionFor(req.Session)
	switch {
	case errors.Is(err, errTooManySessions):
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	case err != nil:
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	answer, err := sess.answer(r.Context(), req.SDP)
	if err != nil {
		if req.Session == "" {
			sess.close() // a bad first offer leaves nothing behind
		}
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(offerResponse{SDP: answer, Session: sess.id})
}

func (s *Server) report(w http.ResponseWriter, r *http.Request) {
	var rep Report
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<10)).Decode(&rep); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	select {
	case s.reports <- rep:
	default: // nobody is collecting
	}
	w.WriteHeader(http.StatusNoContent)
}

var errTooManySessions = errors.New("too many sessions")

// sessionFor returns the session id names, or a new one for "".
func (s *Server) sessionFor(id string) (*session, error) {
	if id != "" {
		s.mu.Lock()
		defer s.mu.Unlock()
		sess := s.sessions[id]
		if sess == nil {
			return nil, fmt.Errorf("no session %q", id)
		}
		return sess, nil
	}
	if s.Sessions() >= s.cfg.MaxSessions {
		return nil, errTooManySessions // early, before the costly part
	}
	// Made outside the lock: it generates a DTLS certificate, and
	// PasswordLookup takes the lock.
	pc, err := s.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, err
	}
	sess := &session{server: s, id: randomID(), pc: pc}
	sess.watch()
	s.mu.Lock()
	switch {
	case s.closed:
		err = errors.New("server closing")
	case len(s.sessions) >= s.cfg.MaxSessions:
		err = errTooManySessions
	default:
		s.sessions[sess.id] = sess
	}
	s.mu.Unlock()
	if err != nil {
		sess.close()
		return nil, err
	}
	return sess, nil
}

// randomID names a session: it is the capability to renegotiate it, so it
// must not be guessable.
func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// register makes ufrag's password known to PasswordLookup, for a session
// still live. Only its current and previous credentials stay known (the
// previous ones until the restart completes), so restarts cannot grow the
// table.
func (s *Server) register(sess *session, ufrag, pwd string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessions[sess.id] != sess {
		return // closed meanwhile
	}
	if n := len(sess.ufrags); n > 0 && sess.ufrags[n-1] == ufrag {
		return
	}
	s.creds[ufrag] = pwd
	sess.ufrags = append(sess.ufrags, ufrag)
	if len(sess.ufrags) > 2 {
		delete(s.creds, sess.ufrags[0])
		sess.ufrags = sess.ufrags[1:]
	}
}

// forget removes a closed session and its credentials.
func (s *Server) forget(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sessions, sess.id)
	for _, ufrag := range sess.ufrags {
		delete(s.creds, ufrag)
	}
}

// session is one browser's PeerConnection.
type session struct {
	server *Server
	id     string
	pc     *webrtc.PeerConnection
	ufrags []string // guarded by server.mu
	timer  *time.Timer
	once   sync.Once
}

// watch echoes every DataChannel message and ends the session when the
// connection closes or fails.
func (sess *session) watch() {
	sess.pc.OnDataChannel(func(dc *webrtc.DataChannel) {
		dc.OnMessage(func(msg webrtc.DataChannelMessage) {
			if msg.IsString {
				_ = dc.SendText(string(msg.Data))
			} else {
				_ = dc.Send(msg.Data)
			}
		})
	})
	connected := make(chan struct{})
	var once sync.Once
	sess.pc.OnConnectionStateChange(func(state webrtc.PeerConnectionState) {
		switch state {
		case webrtc.PeerConnectionStateConnected:
			once.Do(func() { close(connected) })
		case webrtc.PeerConnectionStateFailed, webrtc.PeerConnectionStateClosed:
			go sess.close() // not on pion's callback goroutine
		}
	})
	// An offer that never leads to a connection (abandoned, or made to
	// hold a slot) does not keep its session.
	sess.timer = time.AfterFunc(connectTimeout, func() {
		select {
		case <-connected:
		default:
			sess.close()
		}
	})
}

// connectTimeout is how long a new session may take to connect.
const connectTimeout = 30 * time.Second

// answer applies an offer (a new session's, or an ICE restart's) and
// returns the answer with every candidate, having registered the
// session's current credentials for PasswordLookup.
func (sess *session) answer(ctx context.Context, offer string) (string, error) {
	pc := sess.pc
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return "", err
	}
	answer, err := pc.CreateAnswer(nil)
	if err != nil {
		return "", err
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(answer); err != nil {
		return "", err
	}
	// The credentials come from the answer, not from the ICE transport:
	// pion starts that transport on a goroutine of its own after
	// SetRemoteDescription, and reading it meanwhile is a data race.
	ufrag, pwd, err := iceCredentials(answer)
	if err != nil {
		return "", err
	}
	sess.server.register(sess, ufrag, pwd)
	select {
	case <-gathered:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	return pc.LocalDescription().SDP, nil
}

// iceCredentials returns the ICE ufrag and password of a description:
// those of its first media section, which BUNDLE makes the session's.
func iceCredentials(d webrtc.SessionDescription) (ufrag, pwd string, err error) {
	parsed, err := d.Unmarshal()
	if err != nil {
		return "", "", err
	}
	if len(parsed.MediaDescriptions) > 0 {
		media := parsed.MediaDescriptions[0]
		ufrag, _ = media.Attribute("ice-ufrag")
		pwd, _ = media.Attribute("ice-pwd")
	}
	if ufrag == "" || pwd == "" {
		return "", "", errors.New("description without ICE credentials")
	}
	return ufrag, pwd, nil
}

func (sess *session) close() {
	sess.once.Do(func() {
		if sess.timer != nil {
			sess.timer.Stop()
		}
		sess.server.forget(sess)
		_ = sess.pc.Close()
	})
}

// selectedProtocol is the protocol of the selected candidate pair, or "".
func (sess *session) selectedProtocol() string {
	sctp := sess.pc.SCTP()
	if sctp == nil {
		return ""
	}
	pair, err := sctp.Transport().ICETransport().GetSelectedCandidatePair()
	if err != nil || pair == nil {
		return ""
	}
	return pair.Local.Protocol.String()
}
