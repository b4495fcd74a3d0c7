package interop_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/icetcp/tcpmux/interop/internal/exampleserver"
	"github.com/pion/stun/v3"
	"github.com/pion/webrtc/v4"
	"github.com/stretchr/testify/require"
)

// startExampleServer runs the example server on a loopback port, TCP only
// unless udp, and closes it at cleanup.
func startExampleServer(t *testing.T, plainHTTP, udp bool) *exampleserver.Server {
	t.Helper()
	return startExampleServerWith(t, exampleserver.Config{PlainHTTP: plainHTTP, TCPOnly: !udp})
}

// startExampleServerWith runs the example server with cfg on a loopback
// port and closes it at cleanup.
func startExampleServerWith(t *testing.T, cfg exampleserver.Config) *exampleserver.Server {
	t.Helper()
	cfg.Addr, cfg.LoggerFactory = "127.0.0.1:0", loggers
	srv, err := exampleserver.Start(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, srv.Close()) })
	return srv
}

// httpClient trusts the example server's self-signed certificate.
func httpClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the test server's own certificate
	}}
}

// signal posts the offerer's description to the server, as the page does,
// and applies the answer. It returns the session id.
func signal(t *testing.T, client *http.Client, srv *exampleserver.Server, pc *webrtc.PeerConnection, session string, opts *webrtc.OfferOptions) string {
	t.Helper()
	offer, err := pc.CreateOffer(opts)
	require.NoError(t, err)
	gathered := webrtc.GatheringCompletePromise(pc)
	require.NoError(t, pc.SetLocalDescription(offer))
	<-gathered
	body, _ := json.Marshal(map[string]string{"sdp": pc.LocalDescription().SDP, "session": session})
	resp, err := client.Post(srv.URL()+"offer", "application/json", bytes.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(raw))
	var answer struct{ SDP, Session string }
	require.NoError(t, json.Unmarshal(raw, &answer))
	require.NoError(t, pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer.SDP}))
	return answer.Session
}

// echoOver sends count messages on dc and waits for each to come back.
func echoOver(ctx context.Context, t *testing.T, dc *webrtc.DataChannel, echoes <-chan string, round, count int) {
	t.Helper()
	for i := range count {
		require.NoError(t, dc.SendText(fmt.Sprintf("round %d message %d", round, i)))
	}
	for i := range count {
		select {
		case got := <-echoes:
			require.Equal(t, fmt.Sprintf("round %d message %d", round, i), got)
		case <-ctx.Done():
			t.Fatalf("round %d: echo %d did not come back", round, i)
		}
	}
}

// The example server with a pion client in the browser's place: the page
// is served on the mux's port, signalling creates a session whose ICE runs
// over ICE-TCP through the mux (PasswordLookup on), a DataChannel echoes
// both ways, an ICE restart re-registers the session's credentials, and
// closing the client removes the session and its credentials.
func TestExampleServer(t *testing.T) {
	for _, plain := range []bool{true, false} {
		t.Run(map[bool]string{true: "http", false: "https"}[plain], func(t *testing.T) {
			leakCheck(t)
			ctx := testContext(t)
			srv := startExampleServer(t, plain, false)
			client := httpClient()
			t.Cleanup(client.CloseIdleConnections)

			resp, err := client.Get(srv.URL())
			require.NoError(t, err)
			page, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Contains(t, string(page), "DataChannel echo")

			pc, err := webrtcTCPOnly(nil).NewPeerConnection(webrtc.Configuration{})
			require.NoError(t, err)
			t.Cleanup(func() { _ = pc.Close() })
			dc, err := pc.CreateDataChannel("echo", nil)
			require.NoError(t, err)
			opened := make(chan struct{})
			dc.OnOpen(func() { close(opened) })
			echoes := make(chan string, 64)
			dc.OnMessage(func(m webrtc.DataChannelMessage) { echoes <- string(m.Data) })

			session := signal(t, client, srv, pc, "", nil)
			select {
			case <-opened:
			case <-ctx.Done():
				t.Fatal("DataChannel did not open")
			}
			before := srv.Mux().Stats()
			echoOver(ctx, t, dc, echoes, 1, 50)
			require.Equal(t, []string{"tcp"}, srv.SelectedProtocols(), "the session runs over ICE-TCP")
			after := srv.Mux().Stats()
			require.Greater(t, after.BytesReceived, before.BytesReceived, "the mux carried the echo")
			require.Equal(t, 1, after.ConnsActive)
			require.Zero(t, after.Rejected.Auth)

			// An ICE restart: new credentials, registered for PasswordLookup.
			restarted := make(chan struct{}, 1)
			pc.OnICEConnectionStateChange(func(s webrtc.ICEConnectionState) {
				if s == webrtc.ICEConnectionStateConnected {
					select {
					case restarted <- struct{}{}:
					default:
					}
				}
			})
			require.Equal(t, session, signal(t, client, srv, pc, session, &webrtc.OfferOptions{ICERestart: true}))
			select {
			case <-restarted:
			case <-ctx.Done():
				t.Fatal("ICE restart did not reconnect")
			}
			echoOver(ctx, t, dc, echoes, 2, 50)
			require.Zero(t, srv.Mux().Stats().Rejected.Auth, "the restart's credentials were registered")

			// A request for an unknown ufrag creates nothing.
			requireAuthRejected(t, srv)

			require.NoError(t, pc.Close())
			require.Eventually(t, func() bool { return srv.Sessions() == 0 }, sessionEndBound, poll, "the session ends with the client")
		})
	}
}

// sessionEndBound is how long a server may take to end a session whose
// client closed. Usually the client's closing ends it at once (in 10 to
// 400 ms here). When that does not reach the server (3 sessions in 120
// under -race, cause not found; a reset connection losing the DTLS alert
// is one candidate), pion still notices through ICE: disconnected after
// 5 s, failed 25 s later (its default timeouts), and the session ends
// 30.3 s after the client closed, as measured.
const sessionEndBound = 40 * time.Second

// requireAuthRejected sends a Binding request for a ufrag no session has.
func requireAuthRejected(t *testing.T, srv *exampleserver.Server) {
	t.Helper()
	before := srv.Mux().Stats().Rejected.Auth
	conn, err := net.Dial("tcp", srv.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	req, err := stun.Build(stun.BindingRequest, stun.TransactionID, stun.NewUsername("nobody:x"),
		stun.NewShortTermIntegrity("guess"), stun.Fingerprint)
	require.NoError(t, err)
	frame := append([]byte{byte(len(req.Raw) >> 8), byte(len(req.Raw))}, req.Raw...)
	_, err = conn.Write(frame)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return srv.Mux().Stats().Rejected.Auth == before+1 }, settle, poll)
}

// /metrics and /debug/vars are served on the same port.
func TestExampleServerMetrics(t *testing.T) {
	leakCheck(t)
	srv := startExampleServer(t, false, true)
	client := httpClient()
	t.Cleanup(client.CloseIdleConnections)
	for path, want := range map[string]string{
		"metrics":    "tcpmux_connections_accepted_total",
		"debug/vars": `"memstats"`,
	} {
		resp, err := client.Get(srv.URL() + path)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		require.True(t, strings.Contains(string(body), want), "%s lacks %s", path, want)
	}
	require.GreaterOrEqual(t, srv.Mux().Stats().FallbackConns, uint64(1))
}

// With a NAT 1:1 address, the answer's host candidates carry it instead
// of the server's own address.
func TestExampleServerNAT1To1(t *testing.T) {
	leakCheck(t)
	srv := startExampleServerWith(t, exampleserver.Config{PlainHTTP: true, TCPOnly: true, NAT1To1IP: "203.0.113.7"})
	client := httpClient()
	t.Cleanup(client.CloseIdleConnections)
	pc, err := webrtcTCPOnly(nil).NewPeerConnection(webrtc.Configuration{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = pc.Close() })
	_, err = pc.CreateDataChannel("echo", nil)
	require.NoError(t, err)
	signal(t, client, srv, pc, "", nil)
	answer := pc.RemoteDescription().SDP
	port := srv.Addr().(*net.TCPAddr).Port
	require.Contains(t, answer, fmt.Sprintf("203.0.113.7 %d typ host tcptype passive", port))
	require.NotContains(t, answer, "127.0.0.1 ", "the host's own address is replaced")
}

// Offers past MaxSessions are refused: anyone who can POST cannot make the
// server hold unbounded PeerConnections.
func TestExampleServerBoundsSessions(t *testing.T) {
	leakCheck(t)
	srv := startExampleServerWith(t, exampleserver.Config{PlainHTTP: true, TCPOnly: true, MaxSessions: 2})
	client := httpClient()
	t.Cleanup(client.CloseIdleConnections)
	offer := func() int {
		pc, err := webrtcTCPOnly(nil).NewPeerConnection(webrtc.Configuration{})
		require.NoError(t, err)
		t.Cleanup(func() { _ = pc.Close() })
		_, err = pc.CreateDataChannel("echo", nil)
		require.NoError(t, err)
		o, err := pc.CreateOffer(nil)
		require.NoError(t, err)
		body, _ := json.Marshal(map[string]string{"sdp": o.SDP})
		resp, err := client.Post(srv.URL()+"offer", "application/json", bytes.NewReader(body))
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusOK, offer())
	require.Equal(t, http.StatusOK, offer())
	require.Equal(t, http.StatusServiceUnavailable, offer())
	require.Equal(t, 2, srv.Sessions())
}

// Offers that cannot make a session leave none behind, whatever they
// contain, so that they cannot fill MaxSessions; sessions cannot be
// renegotiated by guessing their ids.
func TestExampleServerBadOffers(t *testing.T) {
	leakCheck(t)
	srv := startExampleServerWith(t, exampleserver.Config{PlainHTTP: true, TCPOnly: true, MaxSessions: 2})
	client := httpClient()
	t.Cleanup(client.CloseIdleConnections)
	post := func(body string) int {
		resp, err := client.Post(srv.URL()+"offer", "application/json", strings.NewReader(body))
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for range 5 {
		require.Equal(t, http.StatusBadRequest, post(`{"sdp":"v=0 garbage"}`))
	}
	require.Zero(t, srv.Sessions(), "a garbage offer kept its session")
	require.Equal(t, http.StatusNotFound, post(`{"sdp":"v=0","session":"1"}`), "session ids are not a counter")
}

// Bad configurations fail at start, and say why, instead of hanging or
// failing every offer later.
func TestExampleServerBadConfig(t *testing.T) {
	leakCheck(t)
	for name, cfg := range map[string]exampleserver.Config{
		"missing certificate":  {CertFile: "/nonexistent.pem", KeyFile: "/nonexistent.key"},
		"NAT 1:1 not an IP":    {NAT1To1IP: "notanip"},
		"negative MaxSessions": {MaxSessions: -1},
	} {
		t.Run(name, func(t *testing.T) {
			cfg.Addr, cfg.TCPOnly, cfg.LoggerFactory = "127.0.0.1:0", true, loggers
			done := make(chan error, 1)
			go func() {
				srv, err := exampleserver.Start(cfg)
				if err == nil {
					_ = srv.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				require.Error(t, err)
			case <-time.After(10 * time.Second):
				t.Fatal("Start hangs")
			}
		})
	}
}
