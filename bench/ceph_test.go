package main

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

func TestMissingCephPackages(t *testing.T) {
	have := map[string]bool{"ceph": true, "rbd": true, "ceph-authtool": true}
	look := func(p string) (string, error) {
		if have[p] {
			return "/usr/bin/" + p, nil
		}
		return "", exec.ErrNotFound
	}
	if got := MissingCephPackages(look); !slices.Equal(got, []string{"ceph-base", "ceph-mon", "ceph-osd"}) {
		t.Errorf("got %q", got)
	}
	all := func(p string) (string, error) { return "/usr/bin/" + p, nil }
	if got := MissingCephPackages(all); len(got) != 0 {
		t.Errorf("all there: %q", got)
	}
	none := func(string) (string, error) { return "", errors.New("no") }
	if got := MissingCephPackages(none); !slices.Equal(got, []string{"ceph-base", "ceph-common", "ceph-mon", "ceph-osd"}) {
		t.Errorf("none there: %q", got)
	}
}

func TestCephConf(t *testing.T) {
	conf := CephConf("/s/ceph-1", "f-s-i-d", 6789, 8<<30)
	for _, want := range []string{
		"[global]\nfsid = f-s-i-d\n",
		"mon_host = v1:127.0.0.1:6789\n",
		"mon_data = /s/ceph-1/mon.$id\n",
		"osd_crush_chooseleaf_type = 0\n",
		"mon_allow_pool_size_one = true\n",
		"[osd]\nosd_data = /s/ceph-1/osd.$id\n",
		"keyring = /s/ceph-1/osd.$id/keyring\n",
		"osd_objectstore = bluestore\n",
		// The block file must lie outside osd_data: BlueStore makes
		// osd_data/block a symlink to it.
		"bluestore_block_path = /s/ceph-1/block.$id\n",
		"bluestore_block_size = 8589934592\n",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("ceph.conf lacks %q:\n%s", want, conf)
		}
	}
	if strings.Contains(conf, "auth_cluster_required = none") {
		t.Error("auth none: the Pacific CLI then fails with EPERM")
	}
	if CephBlockSize(256<<20) != 8<<30 || CephBlockSize(16<<30) != 32<<30 {
		t.Errorf("block sizes %d %d", CephBlockSize(256<<20), CephBlockSize(16<<30))
	}
}

func TestOSDsUp(t *testing.T) {
	n, err := OSDsUp([]byte(`{"epoch":14,"num_osds":3,"num_up_osds":2,"osd_up_since":1764742542,"num_in_osds":3}`))
	if err != nil || n != 2 {
		t.Errorf("got %d %v", n, err)
	}
	for _, bad := range []string{`{"epoch":1}`, `nope`, ``} {
		if _, err := OSDsUp([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestRBDFioArgs(t *testing.T) {
	ep := Endpoint{RBD: "bench2/bench", CephConf: "/s/ceph.conf"}
	args := strings.Join(FioArgs(Jobs()[0], ep, Settings{Runtime: 3e9, Size: 1 << 20}, "/o.json"), " ")
	if !strings.HasSuffix(args, "--ioengine=rbd --clientname=admin --pool=bench2 --rbdname=bench") {
		t.Errorf("args %s", args)
	}
	if env := ep.Env(); !slices.Equal(env, []string{"CEPH_CONF=/s/ceph.conf"}) {
		t.Errorf("env %q", env)
	}
	if env := (Endpoint{NBD: "nbd://x"}).Env(); env != nil {
		t.Errorf("nbd env %q", env)
	}
}

func TestCephRows(t *testing.T) {
	rs := []Result{
		{Target: TargetCeph2, Job: JobDurable, Value: 400, P99Ns: 5e6},
		{Target: TargetTorus2, Job: JobDurable, Value: 1200, P99Ns: 1e6},
		{Target: TargetCeph1, Job: JobDurable, Value: 500},
		{Target: TargetTorus1, Job: JobDurable, Value: 1000},
		{Target: TargetCeph2, Job: JobSeqRead, Error: "died"},
		{Target: TargetCeph1, Job: JobSeqRead, Value: 600},
		{Target: TargetTorus2, Job: JobRandRead, Value: 600},
	}
	rows := CephRows(Jobs(), rs)
	if len(rows) != 2 {
		t.Fatalf("rows %+v", rows)
	}
	if r := rows[0]; r.Job != JobSeqRead || r.Ratio2 != 0 || r.Ceph1 != 600 || r.Ratio1 != 0 {
		t.Errorf("seq read %+v", r)
	}
	if r := rows[1]; r.Job != JobDurable || r.Ratio2 != 3 || r.Ratio1 != 2 || r.P99Ceph2 != 5e6 || r.P99Torus2 != 1e6 {
		t.Errorf("durable %+v", r)
	}
}
