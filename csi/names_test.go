package csi

import (
	"strings"
	"testing"

	"github.com/torus-storage/torus"
)

// TestTorusName: every CSI name maps to a valid Torus name, the same one
// each time; names differing in case, in characters mapped to "-", or only
// past the readable part map to different names.
func TestTorusName(t *testing.T) {
	long := strings.Repeat("A", 128)
	cases := map[string]string{
		"pvc-0a1b2c3d-1111-2222-3333-444455556666": "csi-pvc-0a1b2c3d-1111-2222-3333-444455556666-",
		"Sanity-Controller-Create":                 "csi-sanity-controller-create-",
		"a/b c@d":                                  "csi-a-b-c-d-",
		"ünï":                                      "csi--n--",
		"-":                                        "csi---",
	}
	for in, prefix := range cases {
		got := TorusName(in)
		if !strings.HasPrefix(got, prefix) || len(got) != len(prefix)+16 {
			t.Errorf("TorusName(%q) = %q, want %q + 16 hex digits", in, got, prefix)
		}
	}
	seen := map[string]string{}
	for _, in := range []string{"a", "A", "a/b", "a-b", "a b", long, long[:127] + "B", long[:127] + "b", "ünï", "-", "x.y", "x_y"} {
		got := TorusName(in)
		if err := torus.ValidName(got); err != nil {
			t.Errorf("TorusName(%q) = %q: %v", in, got, err)
		}
		if got != TorusName(in) {
			t.Errorf("TorusName(%q) is not deterministic", in)
		}
		if prev, ok := seen[got]; ok {
			t.Errorf("TorusName(%q) = TorusName(%q) = %q", in, prev, got)
		}
		seen[got] = in
	}
	if n := TorusName(long); len(n) != 63 {
		t.Errorf("TorusName of 128 characters has %d, want 63", len(n))
	}
}

func TestSnapshotIDAndTokens(t *testing.T) {
	if v, s, ok := ParseSnapshotID(SnapshotID("vol", "snap")); !ok || v != "vol" || s != "snap" {
		t.Fatalf("ParseSnapshotID round trip: %q %q %v", v, s, ok)
	}
	for _, bad := range []string{"", "vol", "@snap", "vol@", "Vol@snap", "none-exist-id", "a@b@c"} {
		if _, _, ok := ParseSnapshotID(bad); ok {
			t.Errorf("ParseSnapshotID(%q) accepted", bad)
		}
	}
	if k, ok := parseToken(pageToken("csi-x")); !ok || k != "csi-x" {
		t.Fatalf("token round trip: %q %v", k, ok)
	}
	for _, bad := range []string{"invalid-token", "next:", "csi-x"} {
		if _, ok := parseToken(bad); ok {
			t.Errorf("parseToken(%q) accepted", bad)
		}
	}
	if k, ok := parseToken(""); !ok || k != "" {
		t.Errorf("empty token: %q %v", k, ok)
	}
}
