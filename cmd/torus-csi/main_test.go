package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/torus-storage/torus/csi"
	"github.com/torus-storage/torus/internal/attach"
)

// TestFlags: defaults come from TORUS_ETCD, TORUS_ETCD_PREFIX,
// CSI_ENDPOINT and NODE_ID; bad endpoints and modes, and node mode
// without a node ID, are refused before anything connects.
func TestFlags(t *testing.T) {
	env := map[string]string{"TORUS_ETCD": "http://e1:2379,http://e2:2379", "TORUS_ETCD_PREFIX": "/k8s/", "CSI_ENDPOINT": "unix:///run/csi/s.sock", "NODE_ID": "n1"}
	f, err := parse(nil, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if f.etcd != env["TORUS_ETCD"] || f.prefix != "/k8s/" || f.csi.Endpoint != env["CSI_ENDPOINT"] || f.csi.NodeID != "n1" ||
		f.csi.Mode != csi.ModeAll || f.csi.DriverName != csi.DefaultDriverName || f.csi.StateDir != csi.DefaultStateDir || f.csi.DefaultFSType != "ext4" {
		t.Fatalf("parsed %+v", f)
	}
	f, err = parse([]string{"--mode", "controller", "--endpoint", "unix:///tmp/c.sock", "--etcd", "http://x:2379", "--etcd-cert", "c", "--etcd-key", "k", "--etcd-ca", "ca", "--etcd-user", "csi"},
		func(string) string { return "" }, io.Discard)
	if err != nil || f.csi.Mode != csi.ModeController || f.etcd != "http://x:2379" || f.etcdClient.CA != "ca" || f.etcdClient.User != "csi" {
		t.Fatalf("parsed %+v, %v", f, err)
	}
	if f, err := parse([]string{"--node-id", "n", "--attach-backend", "fuse"}, func(string) string { return "" }, io.Discard); err != nil || f.attachBackend != attach.BackendFUSE {
		t.Fatalf("--attach-backend fuse: %v, %q", err, f.attachBackend)
	}
	if f, err := parse([]string{"--node-id", "n"}, func(k string) string { return map[string]string{"TORUS_ATTACH_BACKEND": "nbd"}[k] }, io.Discard); err != nil || f.attachBackend != attach.BackendNBD {
		t.Fatalf("TORUS_ATTACH_BACKEND=nbd: %v, %q", err, f.attachBackend)
	}
	for _, args := range [][]string{
		{"--mode", "node", "--endpoint", "unix:///tmp/n.sock"},
		{"--mode", "sideways", "--node-id", "n"},
		{"--endpoint", "tcp://0.0.0.0:1", "--node-id", "n"},
		{"--endpoint", "unix://relative/path", "--node-id", "n"},
		{"--node-id", "n", "extra"},
		{"--node-id", "a node"},
		{"--node-id", "n", "--state-dir", "relative"},
		{"--node-id", "n", "--default-fs-type", "zfs"},
		{"--node-id", "n", "--attach-backend", "iscsi"},
	} {
		if _, err := parse(args, func(string) string { return "" }, io.Discard); err == nil {
			t.Errorf("parse(%s) accepted", strings.Join(args, " "))
		}
	}
}

// TestTorusblkPath: --torusblk is taken as given (made absolute); without
// it, torusblk on PATH is found; with neither, node mode fails naming
// --torusblk.
func TestTorusblkPath(t *testing.T) {
	if p, err := torusblkPath("bin/torusblk"); err != nil || !filepath.IsAbs(p) || !strings.HasSuffix(p, "/bin/torusblk") {
		t.Fatalf("flag: %q %v", p, err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "torusblk")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	if p, err := torusblkPath(""); err != nil || p != bin {
		t.Fatalf("PATH: %q %v, want %s", p, err, bin)
	}
	t.Setenv("PATH", t.TempDir())
	if _, err := torusblkPath(""); err == nil || !strings.Contains(err.Error(), "--torusblk") {
		t.Fatalf("none: %v", err)
	}
}

// TestTorusblkArgs: the attach processes get this process's etcd, prefix,
// TLS and authentication settings, file paths made absolute (they run in /).
func TestTorusblkArgs(t *testing.T) {
	f, err := parse([]string{"--node-id", "n", "--endpoint", "unix:///tmp/n.sock", "--etcd", "https://e:2379", "--etcd-prefix", "/k/",
		"--etcd-cert", "c.crt", "--etcd-key", "/abs/c.key", "--etcd-user", "csi", "--peer-ca", "p/ca.crt", "--log-level", "debug"},
		func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	args, err := torusblkArgs(f)
	if err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	want := []string{"--etcd", "https://e:2379", "--etcd-prefix", "/k/", "--log-level", "debug",
		"--etcd-cert", filepath.Join(wd, "c.crt"), "--etcd-key", "/abs/c.key", "--peer-ca", filepath.Join(wd, "p/ca.crt"), "--etcd-user", "csi"}
	if strings.Join(args, " ") != strings.Join(want, " ") {
		t.Fatalf("args\n%q\nwant\n%q", args, want)
	}
}
