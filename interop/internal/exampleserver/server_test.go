package exampleserver

import (
	"testing"

	"github.com/pion/webrtc/v4"
)

func TestICECredentials(t *testing.T) {
	answer := "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n" +
		"m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n" +
		"a=ice-ufrag:AbCd\r\na=ice-pwd:s3cr3tpasswordofsomelength\r\na=mid:0\r\n" +
		"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:other\r\na=ice-pwd:other\r\na=mid:1\r\n"
	ufrag, pwd, err := iceCredentials(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer})
	if err != nil || ufrag != "AbCd" || pwd != "s3cr3tpasswordofsomelength" {
		t.Fatalf("got %q %q %v, want the first section's credentials", ufrag, pwd, err)
	}
	noPwd := "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n" +
		"m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:x\r\n"
	if _, _, err := iceCredentials(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: noPwd}); err == nil {
		t.Fatal("a description without ice-pwd gave no error")
	}
}
