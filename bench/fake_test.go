package main

// Fake Torus binaries for the end-to-end test: bin/torusd, bin/torusctl and
// bin/torusblk are shell scripts that re-execute the test binary, which
// acts as the program named in BENCH_FAKE (see TestMain). They follow the
// command lines the launcher uses, so the test checks those too.
//
//   - torusd writes a 4 KiB file into --data-dir, serves /readyz and
//     /metrics on --http and records its PID and peer address;
//   - torusblk execs nbdkit's memory plugin on --listen;
//   - torusctl accepts init and volume create; peer list -o json shows a
//     recorded torusd whose process is gone as "down" (and notes when it
//     first did); status and volume list -o json print the real torusctl's
//     shapes, which carry no redundancy fields.
//
// Healing, as the survivors' metrics show it: for one second after the
// first "down", torus_rebalance_pending_bytes is non-zero; after that it is
// 0 and torus_heal_copied_bytes_total has grown by fakeHealBytes in all.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const fakeHealBytes = 64 << 20

// fakeSegmentBytes is what each fake torusd stores in its data dir and
// reports as torus_store_used_bytes.
const fakeSegmentBytes = 4096

func TestMain(m *testing.M) {
	if name := os.Getenv("BENCH_FAKE"); name != "" {
		os.Exit(fakeMain(name, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// writeFakeBin writes the three scripts into dir and returns dir.
func writeFakeBin(t *testing.T, state string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "bin")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range TorusBinaries {
		script := fmt.Sprintf("#!/bin/sh\nBENCH_FAKE=%s BENCH_FAKE_STATE=%q exec %q \"$@\"\n", b, state, self)
		if err := os.WriteFile(filepath.Join(dir, b), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// flagValue returns the value after name in args.
func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

func fakeMain(name string, args []string) int {
	state := os.Getenv("BENCH_FAKE_STATE")
	if err := os.MkdirAll(filepath.Join(state, "pids"), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if name == "torusd" && len(args) == 1 && args[0] == "--help" {
		fmt.Println("Usage of torusd:\n  --down-grace duration   how long a peer stays down before healing")
		return 0
	}
	if flagValue(args, "--etcd") == "" {
		fmt.Fprintln(os.Stderr, name+": --etcd missing")
		return 2
	}
	switch name {
	case "torusd":
		return fakeTorusd(state, args)
	case "torusblk":
		addr := flagValue(args, "--listen")
		host, port, ok := strings.Cut(addr, ":")
		if len(args) < 3 || args[2] != "nbdserve" || !ok {
			fmt.Fprintln(os.Stderr, "torusblk: want --etcd URL nbdserve --listen ADDR")
			return 2
		}
		nbdkit, err := exec.LookPath("nbdkit")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		err = syscall.Exec(nbdkit, []string{"nbdkit", "-f", "-i", host, "-p", port, "memory", "1G"}, os.Environ())
		fmt.Fprintln(os.Stderr, err)
		return 1
	case "torusctl":
		return fakeTorusctl(state, args[2:])
	}
	return 2
}

func fakeTorusd(state string, args []string) int {
	if flagValue(args, "--down-grace") != "5s" {
		fmt.Fprintln(os.Stderr, "torusd: want --down-grace 5s (it has the flag)")
		return 2
	}
	for _, f := range []string{"--data-dir", "--size", "--peer-address", "--http"} {
		if flagValue(args, f) == "" {
			fmt.Fprintln(os.Stderr, "torusd: missing", f)
			return 2
		}
	}
	if err := os.WriteFile(filepath.Join(flagValue(args, "--data-dir"), "segment"), make([]byte, fakeSegmentBytes), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pid := strconv.Itoa(os.Getpid())
	if err := os.WriteFile(filepath.Join(state, "pids", pid), []byte(flagValue(args, "--peer-address")), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		var pending, copied int
		if b, err := os.ReadFile(filepath.Join(state, "down-since")); err == nil {
			t0, _ := time.Parse(time.RFC3339Nano, string(b))
			if time.Since(t0) < time.Second {
				pending = fakeHealBytes / 2 // two survivors share the copying
			} else {
				copied = fakeHealBytes / 2
			}
		}
		fmt.Fprintf(w, "# TYPE torus_heal_copied_bytes_total counter\ntorus_heal_copied_bytes_total{peer=\"x\"} %d\n", copied)
		fmt.Fprintf(w, "# TYPE torus_rebalance_pending_bytes gauge\ntorus_rebalance_pending_bytes{peer=\"x\"} %d\n", pending)
		fmt.Fprintf(w, "# TYPE torus_store_used_bytes gauge\ntorus_store_used_bytes{peer=\"x\"} %d\n", fakeSegmentBytes)
	})
	err := http.ListenAndServe(flagValue(args, "--http"), mux)
	fmt.Fprintln(os.Stderr, err)
	return 1
}

func fakeTorusctl(state string, args []string) int {
	switch cmd := strings.Join(args, " "); {
	case strings.HasPrefix(cmd, "init --replication "), strings.HasPrefix(cmd, "volume create bench "):
		return 0
	case cmd == "status -o json":
		pids, _ := os.ReadDir(filepath.Join(state, "pids"))
		fmt.Printf(`{"cluster":{"replication":2},"ring_version":3,"replication":2,"ring_members":%d,"peers":{"up":3},"volumes":1,"open_volumes":0,"default_export":""}`+"\n", len(pids))
		return 0
	case cmd == "volume list -o json":
		fmt.Println(`[{"name":"bench","id":1,"size":16777216,"min_replicas":0,"writer":"","used":null,"health":null}]`)
		return 0
	case cmd == "peer list -o json":
	default:
		fmt.Fprintln(os.Stderr, "torusctl: unexpected", cmd)
		return 2
	}
	pids, _ := os.ReadDir(filepath.Join(state, "pids"))
	var peers []map[string]string
	for _, e := range pids {
		pid, _ := strconv.Atoi(e.Name())
		addr, _ := os.ReadFile(filepath.Join(state, "pids", e.Name()))
		st := "up"
		if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			st = "down"
			since := filepath.Join(state, "down-since")
			if _, err := os.Stat(since); err != nil {
				os.WriteFile(since, []byte(time.Now().Format(time.RFC3339Nano)), 0o644)
			}
		}
		peers = append(peers, map[string]string{"id": e.Name(), "address": string(addr), "state": st})
	}
	b, _ := json.Marshal(peers)
	fmt.Println(string(b))
	return 0
}
