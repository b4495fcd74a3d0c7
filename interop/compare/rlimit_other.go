//go:build !unix

package compare

// raiseFileLimit does nothing on this platform.
func raiseFileLimit() (soft, hard uint64, err error) { return 0, 0, nil }

// checkFileLimit does not check on this platform.
func checkFileLimit(int) error { return nil }
