package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/torus-storage/torus"
)

func TestLocationFlag(t *testing.T) {
	host := func() (string, error) { return "node7.example.com", nil }
	noHost := func() (string, error) { return "", errors.New("no name") }
	cases := []struct {
		flag, zone string
		hostname   func() (string, error)
		want       torus.Location
		bad        bool
	}{
		{"zone=z1,rack=r3,host=h7", "", host, torus.Location{Zone: "z1", Rack: "r3", Host: "h7"}, false},
		{"", "", host, torus.Location{Host: "node7"}, false},
		{"rack=r1", "east", host, torus.Location{Zone: "east", Rack: "r1", Host: "node7"}, false},
		{"zone=east", "east", host, torus.Location{Zone: "east", Host: "node7"}, false},
		{"zone=west", "east", host, torus.Location{}, true},
		{"room=1", "", host, torus.Location{}, true},
		{"zone=a b", "", host, torus.Location{}, true},
		{"host=h,host=i", "", host, torus.Location{}, true},
		{"zone=z", "", noHost, torus.Location{}, true},
		{"host=x", "", noHost, torus.Location{Host: "x"}, false},
		{"", "", func() (string, error) { return "-bad-", nil }, torus.Location{}, true},
	}
	for _, c := range cases {
		got, err := location(c.flag, c.zone, c.hostname)
		if c.bad != (err != nil) || (!c.bad && got != c.want) {
			t.Errorf("location(%q, %q) = %+v, %v; want %+v, bad %v", c.flag, c.zone, got, err, c.want, c.bad)
		}
	}
}

// TestNBDExportsNeedsSecure: --nbd-exports names clients by their
// certificates, so it is refused without --dev --secure.
func TestNBDExportsNeedsSecure(t *testing.T) {
	if _, err := parse([]string{"--dev", "--nbd-exports", "x"}); err == nil || !strings.Contains(err.Error(), "--secure") {
		t.Fatalf("--nbd-exports without --secure: %v", err)
	}
	f, err := parse([]string{"--dev", "--secure", "--nbd-exports", "x"})
	if err != nil || f.nbdExports != "x" {
		t.Fatalf("--dev --secure --nbd-exports x: %+v %v", f, err)
	}
}
