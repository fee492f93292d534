package proccluster

import "testing"

// TestFreePortNeverRepeats: ports handed out for one test binary's
// processes are distinct. Before, FreePort returned whatever port the
// kernel picked for a listener it then closed, and the kernel may pick it
// again: CI once started a torusd with its peer and HTTP addresses on the
// same port (tests/life TestSecureRotationUnderFio, "bind: address already
// in use").
func TestFreePortNeverRepeats(t *testing.T) {
	seen := make(map[int]bool)
	for i := range 2000 {
		p := FreePort(t, "127.0.0.1")
		if seen[p] {
			t.Fatalf("call %d: port %d handed out twice", i, p)
		}
		seen[p] = true
	}
}
