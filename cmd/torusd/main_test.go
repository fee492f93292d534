package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// TestConfigFile: --config sets flags the command line did not; the
// command line wins; unknown names and bad lines are errors naming the
// line.
func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, fmt.Sprintf("c%d.conf", len(s)))
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("# a daemon\netcd = http://e1:2379,http://e2:2379\nsize: 20GiB\n\nlocation = \"zone=z1,host=h1\"\nauto-join = true\ndown-grace = 5m\n")
	f, err := parse([]string{"--config", good, "--size", "30GiB"})
	if err != nil {
		t.Fatal(err)
	}
	if f.etcd != "http://e1:2379,http://e2:2379" || f.size != "30GiB" || !f.autoJoin || f.downGrace != 5*time.Minute ||
		f.loc != (torus.Location{Zone: "z1", Host: "h1"}) || f.prefix != "/torus/" {
		t.Errorf("parsed %+v", f)
	}
	for content, want := range map[string]string{
		"colour = blue\n":       `:1: unknown setting "colour"`,
		"auto-join\n":           ":1: want `name = value`",
		"\ndown-grace = soon\n": ":2: down-grace",
		"config = other.conf\n": `unknown setting "config"`,
	} {
		if _, err := parse([]string{"--config", write(content), "--etcd", "http://e:2379"}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config %q: %v, want an error containing %q", content, err, want)
		}
	}
	if _, err := parse([]string{"--config", filepath.Join(dir, "missing"), "--etcd", "x"}); err == nil {
		t.Error("a missing config file was accepted")
	}
	if _, err := parse([]string{"-etcd", "x"}); err == nil {
		t.Error("single-dash long flags are accepted; torusd takes --flags like torusctl and torusblk")
	}
}
