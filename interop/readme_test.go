package interop_test

import (
	"expvar"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/icetcp/tcpmux"
	"github.com/icetcp/tcpmux/metrics"
	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"
	proxyproto "github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

// The README's Go snippets, each in a function that the compiler and the
// linters check. TestREADMESnippetsCompile makes sure that every ```go
// block of the README is one of them, line for line, so no snippet can
// rot.

func readmeQuickStartICE() error {
	ln, err := net.Listen("tcp", ":3478")
	if err != nil {
		return err
	}
	mux := tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{
		Listener:        ln,
		WriteBufferSize: 256 << 10, // writes never block the agent; see "Writes"
	})
	defer mux.Close()

	agent, err := ice.NewAgentWithOptions(
		ice.WithNetworkTypes([]ice.NetworkType{ice.NetworkTypeTCP4, ice.NetworkTypeTCP6}),
		ice.WithTCPMux(mux),
	)
	if err != nil {
		return err
	}
	defer agent.Close()
	return nil
}

func readmeQuickStartWebRTC(mux *tcpmux.TCPMuxDefault) *webrtc.API {
	var se webrtc.SettingEngine
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeTCP4, webrtc.NetworkTypeTCP6})
	se.SetICETCPMux(mux)
	api := webrtc.NewAPI(webrtc.WithSettingEngine(se))
	return api
}

func readmeProxyProtocol(raw net.Listener) *tcpmux.TCPMuxDefault {
	ln := tcpmux.KeepSocketLocalAddr(&proxyproto.Listener{Listener: raw, ReadHeaderTimeout: 5 * time.Second})
	mux := tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{Listener: ln})
	return mux
}

func readmeExpvar(mux *tcpmux.TCPMuxDefault) {
	expvar.Publish("tcpmux", expvar.Func(func() any { return mux.Stats() }))
}

func readmePrometheus(mux *tcpmux.TCPMuxDefault) {
	prometheus.MustRegister(metrics.NewCollector(mux, nil)) // or prometheus.Labels{"port": "443"}
}

func readmePortSharing(ln net.Listener, h http.Handler) {
	mux := tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{Listener: ln, Fallback: true})
	srv := &http.Server{Handler: h}
	go srv.ServeTLS(mux.FallbackListener(), "cert.pem", "key.pem")
}

func readmePasswordLookup(ln net.Listener, pc *webrtc.PeerConnection) error {
	var creds sync.Map // the live sessions' ufrag -> password
	mux := tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{
		Listener: ln,
		PasswordLookup: func(ufrag string) (string, bool) {
			pwd, ok := creds.Load(ufrag)
			if !ok {
				return "", false
			}
			return pwd.(string), true
		},
	})
	defer mux.Close()

	// After each pc.SetLocalDescription: the first answer, and every ICE
	// restart's. Read them from the description: pion starts the ICE
	// transport on a goroutine of its own, and reading it meanwhile races.
	local, err := pc.LocalDescription().Unmarshal()
	if err != nil {
		return err
	}
	ufrag, _ := local.MediaDescriptions[0].Attribute("ice-ufrag")
	pwd, _ := local.MediaDescriptions[0].Attribute("ice-pwd")
	creds.Store(ufrag, pwd)
	// When the session ends, creds.Delete each ufrag it had.
	return nil
}

// readmeSnippets lists the functions above, so that none is unused.
var readmeSnippets = []any{readmeQuickStartICE, readmeQuickStartWebRTC, readmeProxyProtocol,
	readmeExpvar, readmePrometheus, readmePortSharing, readmePasswordLookup}

func TestREADMESnippetsCompile(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	source, err := os.ReadFile("readme_test.go")
	require.NoError(t, err)
	compiled := "\n" + strings.Join(significantLines(string(source)), "\n") + "\n"
	blocks := regexp.MustCompile("(?s)```go\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	require.Len(t, blocks, len(readmeSnippets), "one function here per ```go block of the README")
	for _, block := range blocks {
		snippet := "\n" + strings.Join(significantLines(block[1]), "\n") + "\n"
		require.Contains(t, compiled, snippet, "a README snippet that no compiled function holds")
	}
}

// significantLines drops indentation and blank lines.
func significantLines(s string) []string {
	var lines []string
	for _, line := range strings.Split(s, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			lines = append(lines, line)
		}
	}
	return lines
}
