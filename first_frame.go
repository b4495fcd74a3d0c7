package tcpmux

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"

	"github.com/pion/stun/v3"
)

// maxUsernameSize bounds USERNAME. ICE ufrags may have 256 characters
// (RFC 8445), so "local:remote" may take 513 bytes; pion/stun allows as much.
const maxUsernameSize = 513

const (
	stunHeaderSize        = 20
	stunAttrHeaderSize    = 4
	stunMagicCookie       = 0x2112A442
	stunBindingRequest    = 0x0001
	stunAttrUsername      = 0x0006
	stunAttrFingerprint   = 0x8028
	stunFingerprintXOR    = 0x5354554e
	stunFingerprintLength = 4
)

// rejectReason says why a connection was closed before it was admitted.
type rejectReason uint8

const (
	rejectNone     rejectReason = iota
	rejectTimeout               // the first frame did not arrive in time
	rejectNotSTUN               // the first frame is not a valid Binding request
	rejectUsername              // USERNAME missing, empty ufrag or oversized
	rejectTooLarge              // the first frame is over MaxFirstFrameSize
	rejectLimit                 // a connection limit was reached
	rejectAuth                  // PasswordLookup refused the ufrag or its integrity
	rejectEvicted               // closed to make room for a newcomer (SPEC 8)
	rejectOther                 // duplicates, early EOF, read errors, mux closing
)

// rejectNames are the RejectedStats field names, so that logs and metrics
// say the same thing.
var rejectNames = [...]string{"none", "Timeout", "NotSTUN", "Username", "TooLarge", "Limit", "Auth", "Evicted", "Other"}

func (r rejectReason) String() string {
	if int(r) < len(rejectNames) {
		return rejectNames[r]
	}
	return "handed over"
}

// parseBindingRequest validates frame as the first frame of an ICE-TCP
// connection (SPEC 1) and returns the ufrag, aliasing frame. It allocates
// nothing: it runs for every accepted connection, hostile ones included.
func parseBindingRequest(frame []byte) (ufrag []byte, reason rejectReason) {
	if len(frame) < stunHeaderSize ||
		binary.BigEndian.Uint16(frame[0:2]) != stunBindingRequest ||
		int(binary.BigEndian.Uint16(frame[2:4])) != len(frame)-stunHeaderSize ||
		binary.BigEndian.Uint32(frame[4:8]) != stunMagicCookie {
		return nil, rejectNotSTUN
	}
	var username []byte
	haveUsername := false
	for off := stunHeaderSize; off < len(frame); {
		if len(frame)-off < stunAttrHeaderSize {
			return nil, rejectNotSTUN
		}
		typ := binary.BigEndian.Uint16(frame[off:])
		n := int(binary.BigEndian.Uint16(frame[off+2:]))
		valueStart := off + stunAttrHeaderSize
		next := valueStart + (n+3)&^3
		if next > len(frame) {
			return nil, rejectNotSTUN
		}
		value := frame[valueStart : valueStart+n]
		switch typ {
		case stunAttrUsername:
			if !haveUsername {
				username, haveUsername = value, true
			}
		case stunAttrFingerprint:
			if next != len(frame) || !validFingerprint(frame[:off], value) {
				return nil, rejectNotSTUN
			}
		}
		off = next
	}
	if !haveUsername || len(username) > maxUsernameSize {
		return nil, rejectUsername
	}
	if i := bytes.IndexByte(username, ':'); i >= 0 {
		username = username[:i]
	}
	if len(username) == 0 {
		return nil, rejectUsername
	}
	return username, rejectNone
}

// validFingerprint checks RFC 8489's FINGERPRINT: the CRC-32 of the message
// before the attribute (whose header length already counts it), XOR'ed.
func validFingerprint(before, value []byte) bool {
	if len(value) != stunFingerprintLength {
		return false
	}
	want := crc32.ChecksumIEEE(before) ^ stunFingerprintXOR
	return binary.BigEndian.Uint32(value) == want
}

// verifyIntegrity checks MESSAGE-INTEGRITY with ICE short-term credentials.
// Only muxes with a PasswordLookup pay for decoding the message.
func verifyIntegrity(frame []byte, password string) bool {
	msg := &stun.Message{Raw: append([]byte(nil), frame...)}
	if err := msg.Decode(); err != nil {
		return false
	}
	return stun.NewShortTermIntegrity(password).Check(msg) == nil
}
