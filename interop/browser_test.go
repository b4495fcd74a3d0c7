package interop_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Real browsers against the example server, TCP only: the echo page opens
// a DataChannel whose ICE runs through the mux over ICE-TCP on 127.0.0.1,
// echoes 20 messages both ways and reports the selected candidate pair.
// .ci/run installs Chromium and Firefox ESR (Debian's chromium and
// firefox-esr) when they are missing; where one is not installed, its test
// fails and says so.

// browser knows how to start one browser, headless, on a URL.
type browser struct {
	name    string
	path    string // the binary
	pkg     string // the Debian package that brings it
	command func(t *testing.T, path, url string) *exec.Cmd
}

var browsers = []browser{
	// The real binary, not Debian's /usr/bin/chromium wrapper, which adds
	// API keys and remote extensions.
	{name: "Chromium", path: "/usr/lib/chromium/chromium", pkg: "chromium", command: chromiumCommand},
	{name: "Firefox", path: "/usr/bin/firefox-esr", pkg: "firefox-esr", command: firefoxCommand},
}

// chromiumCommand: headless, no sandbox (CI runs as root), a fresh profile,
// no background networking, and ICE on loopback with real addresses
// (Chromium hides host candidates behind mDNS names and skips loopback by
// default).
func chromiumCommand(t *testing.T, path, url string) *exec.Cmd {
	return exec.Command(path,
		"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--user-data-dir="+t.TempDir(),
		"--no-first-run", "--no-default-browser-check", "--disable-default-apps",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-client-side-phishing-detection", "--disable-domain-reliability",
		"--disable-breakpad", "--disable-crash-reporter", "--metrics-recording-only",
		"--safebrowsing-disable-auto-update", "--disable-extensions", "--no-pings",
		"--no-proxy-server", "--password-store=basic", "--use-mock-keychain",
		"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
		"--disable-features=WebRtcHideLocalIpsWithMdns,MediaRouter,OptimizationHints,Translate,"+
			"AutofillServerCommunication,CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions",
		"--allow-loopback-in-peer-connection",
		"--enable-logging=stderr", "--v=0",
		url)
}

// firefoxCommand: headless with a fresh profile whose prefs allow ICE on
// loopback and ICE-TCP and turn background networking off. Firefox gathers
// only on the default-route interface unless the page may capture, so the
// profile grants the test origin camera and microphone.
func firefoxCommand(t *testing.T, path, url string) *exec.Cmd {
	profile := t.TempDir()
	prefs, err := os.ReadFile(filepath.Join("testdata", "firefox-user.js"))
	require.NoError(t, err)
	origin := strings.TrimSuffix(url, "/")
	grants := fmt.Sprintf("origin\tcamera\t1\t%s\norigin\tmicrophone\t1\t%s\n", origin, origin)
	grantsFile := filepath.Join(profile, "default-permissions")
	require.NoError(t, os.WriteFile(grantsFile, []byte(grants), 0o600))
	prefs = fmt.Appendf(prefs, "user_pref(\"permissions.manager.defaultsUrl\", \"file://%s\");\n", grantsFile)
	require.NoError(t, os.WriteFile(filepath.Join(profile, "user.js"), prefs, 0o600))
	cmd := exec.Command(path, "--headless", "--no-remote", "--profile", profile, url)
	cmd.Env = append(os.Environ(), "HOME="+profile, "MOZ_HEADLESS=1",
		"MOZ_CRASHREPORTER_DISABLE=1", "MOZ_DISABLE_NONLOCAL_CONNECTIONS=1")
	return cmd
}

func TestBrowsers(t *testing.T) {
	for _, b := range browsers {
		t.Run(b.name, func(t *testing.T) {
			if _, err := os.Stat(b.path); err != nil {
				t.Fatalf("%s is not installed (%v): install Debian's %s (bash .ci/run does)", b.name, err, b.pkg)
			}
			leakCheck(t)
			srv := startExampleServer(t, true, false) // plain HTTP on 127.0.0.1, ICE-TCP only
			output := startBrowser(t, b.command(t, b.path, srv.URL()))

			select {
			case r := <-srv.Reports():
				t.Logf("%s reports %+v", b.name, r)
				require.True(t, r.OK, "the page failed: %s", r.Error)
				require.Equal(t, 20, r.Echoed)
				require.Equal(t, "tcp", r.LocalProtocol, "the browser's selected candidate")
				require.Equal(t, "tcp", r.RemoteProtocol, "the server's candidate, as the browser saw it")
			case <-time.After(60 * time.Second):
				t.Fatalf("%s sent no report within 60 s; its output:\n%s", b.name, output.String())
			}
			require.Equal(t, []string{"tcp"}, srv.SelectedProtocols(), "the server's selected pair is ICE-TCP")
			s := srv.Mux().Stats()
			require.Equal(t, 1, s.ConnsActive, "one ICE-TCP connection through the mux: %+v", s)
			require.Positive(t, s.BytesReceived)
			require.Zero(t, s.Rejected.Auth, "PasswordLookup knew the session")
		})
	}
}

// startBrowser starts cmd in a process group of its own and, at cleanup,
// ends the whole group: SIGTERM, then SIGKILL after 5 s. It returns the
// browser's output, for failure messages.
func startBrowser(t *testing.T, cmd *exec.Cmd) *syncBuffer {
	t.Helper()
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		pgid := cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-exited
		}
		// Children that outlived the leader belong to the group still.
		for range 50 {
			if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	})
	return out
}

// syncBuffer is a bytes.Buffer safe for the browser's two output streams.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
