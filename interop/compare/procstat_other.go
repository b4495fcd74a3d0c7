//go:build !linux

package compare

import "time"

// childCPU is not measured on this platform: the client CPU row reads n/a.
func childCPU(int) (time.Duration, bool) { return 0, false }

// softirqCPU is not measured on this platform.
func softirqCPU() (time.Duration, bool) { return 0, false }
