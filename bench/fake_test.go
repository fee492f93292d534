package main

// Fake Torus binaries for the end-to-end test: bin/torusd, bin/torusctl and
// bin/torusblk are shell scripts that re-execute the test binary, which
// acts as the program named in BENCH_FAKE (see TestMain). They follow the
// command lines the launcher uses, so the test checks those too.
//
//   - torusd serves /readyz and /metrics on --http and records its PID;
//   - torusblk execs nbdkit's memory plugin on --listen;
//   - torusctl accepts init and volume create, and answers status -o json:
//     degraded for one second after it first sees a recorded torusd dead,
//     then healthy, with a heal counter the survivors export.

import (
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
	for _, f := range []string{"--data-dir", "--size", "--peer-address", "--http"} {
		if flagValue(args, f) == "" {
			fmt.Fprintln(os.Stderr, "torusd: missing", f)
			return 2
		}
	}
	if err := os.WriteFile(filepath.Join(flagValue(args, "--data-dir"), "segment"), make([]byte, 4096), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pid := strconv.Itoa(os.Getpid())
	if err := os.WriteFile(filepath.Join(state, "pids", pid), nil, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		var healed int
		if _, err := os.Stat(filepath.Join(state, "healed")); err == nil {
			healed = fakeHealBytes / 2 // two survivors share the copying
		}
		fmt.Fprintf(w, "# TYPE torus_heal_bytes_total counter\ntorus_heal_bytes_total{volume=\"bench\"} %d\n", healed)
	})
	err := http.ListenAndServe(flagValue(args, "--http"), mux)
	fmt.Fprintln(os.Stderr, err)
	return 1
}

func fakeTorusctl(state string, args []string) int {
	cmd := strings.Join(args, " ")
	switch {
	case strings.HasPrefix(cmd, "init --replication "), strings.HasPrefix(cmd, "volume create bench "):
		return 0
	case cmd == "status -o json":
	default:
		fmt.Fprintln(os.Stderr, "torusctl: unexpected", cmd)
		return 2
	}
	pids, _ := os.ReadDir(filepath.Join(state, "pids"))
	dead := false
	for _, e := range pids {
		pid, _ := strconv.Atoi(e.Name())
		if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			dead = true
		}
	}
	since := filepath.Join(state, "degraded-since")
	if dead {
		if _, err := os.Stat(since); err != nil {
			os.WriteFile(since, []byte(time.Now().Format(time.RFC3339Nano)), 0o644)
		}
		b, _ := os.ReadFile(since)
		t0, _ := time.Parse(time.RFC3339Nano, string(b))
		if time.Since(t0) < time.Second {
			fmt.Printf(`{"volumes":[{"name":"bench","under_replicated_bytes":%d,"healthy":false}]}`+"\n", fakeHealBytes)
			return 0
		}
		os.WriteFile(filepath.Join(state, "healed"), nil, 0o644)
	}
	fmt.Println(`{"volumes":[{"name":"bench","under_replicated_bytes":0,"healthy":true}]}`)
	return 0
}
