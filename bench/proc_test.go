package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/testutil"
)

func gone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

func TestProcsStopAndReap(t *testing.T) {
	sh := testutil.RequireBinary(t, "sh")
	g := NewProcs(testutil.Logger(t), t.TempDir())
	polite, err := g.Start("polite", sh, "-c", "exec sleep 60")
	if err != nil {
		t.Fatal(err)
	}
	// Ignores SIGTERM, and has a child of its own in its process group.
	stubborn, err := g.Start("stubborn", sh, "-c", `trap "" TERM; sleep 60 & wait; sleep 60`)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := g.TempDir("data-*")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let the shell install its trap
	start := time.Now()
	if err := stubborn.Stop(300 * time.Millisecond); err != nil {
		t.Errorf("stop after SIGKILL: %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 5*time.Second {
		t.Errorf("stubborn stop took %v, want grace then SIGKILL", d)
	}
	if stubborn.Alive() || !gone(stubborn.PID()) {
		t.Error("stubborn not reaped")
	}
	if err := stubborn.Stop(time.Second); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if !polite.Alive() {
		t.Fatal("polite died early")
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if polite.Alive() || !gone(polite.PID()) {
		t.Error("Close left a process")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temp dir survived Close: %v", err)
	}
	if err := g.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := g.Start("late", sh, "-c", "true"); err == nil {
		t.Error("Start after Close succeeded")
	}
}

func TestProcKillAndLog(t *testing.T) {
	sh := testutil.RequireBinary(t, "sh")
	g := NewProcs(testutil.Logger(t), t.TempDir())
	defer g.Close()
	p, err := g.Start("talker", sh, "-c", "echo hello-from-child; exec sleep 60")
	if err != nil {
		t.Fatal(err)
	}
	err = WaitReady(context.Background(), p, 5*time.Second, "log", func(context.Context) error {
		if Tail(p, 100) == "hello-from-child\n" {
			return nil
		}
		return fmt.Errorf("no output yet")
	})
	if err != nil {
		t.Fatal(err)
	}
	p.Kill()
	if p.Alive() || p.Err() == nil {
		t.Errorf("after Kill: alive %v err %v", p.Alive(), p.Err())
	}
}

func TestWaitReadyExitAndTimeout(t *testing.T) {
	sh := testutil.RequireBinary(t, "sh")
	g := NewProcs(testutil.Logger(t), t.TempDir())
	defer g.Close()
	p, err := g.Start("crasher", sh, "-c", "echo cannot bind >&2; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	never := func(context.Context) error { return errors.New("not yet") }
	err = WaitReady(context.Background(), p, 10*time.Second, "crasher", never)
	if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "cannot bind") {
		t.Errorf("exited process: %v", err)
	}
	start := time.Now()
	err = WaitReady(context.Background(), nil, 300*time.Millisecond, "nothing", never)
	if !errors.Is(err, ErrNotReady) || time.Since(start) > 3*time.Second {
		t.Errorf("timeout: %v after %v", err, time.Since(start))
	}
}

func TestRunCmd(t *testing.T) {
	sh := testutil.RequireBinary(t, "sh")
	out, err := RunCmd(context.Background(), 5*time.Second, sh, "-c", "echo ok")
	if err != nil || string(out) != "ok\n" {
		t.Errorf("got %q, %v", out, err)
	}
	if _, err := RunCmd(context.Background(), 5*time.Second, sh, "-c", "echo bad >&2; exit 1"); err == nil || !strings.Contains(err.Error(), "bad") {
		t.Errorf("failure not reported with output: %v", err)
	}
	start := time.Now()
	// The grandchild holds the output pipe: the group kill must end it too.
	_, err = RunCmd(context.Background(), 300*time.Millisecond, sh, "-c", "sleep 60 & sleep 60")
	if err == nil || time.Since(start) > 4*time.Second {
		t.Errorf("timeout: %v after %v", err, time.Since(start))
	}
}

func TestFreePortsAndChecks(t *testing.T) {
	ports, err := FreePorts(5)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] || p <= 0 {
			t.Errorf("ports %v not distinct", ports)
		}
		seen[p] = true
	}
	ctx := context.Background()
	if err := TCPCheck(Addr(ports[0]))(ctx); err == nil {
		t.Error("TCPCheck on a closed port succeeded")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := TCPCheck(l.Addr().String())(ctx); err != nil {
		t.Errorf("TCPCheck on a listener: %v", err)
	}
	ready := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ready {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	check := HTTPCheck(srv.URL + "/readyz")
	if err := check(ctx); err == nil {
		t.Error("503 counted as ready")
	}
	ready = true
	if err := check(ctx); err != nil {
		t.Errorf("200: %v", err)
	}
}

func TestEvictCache(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"a", "sub/b"} {
		if err := os.WriteFile(filepath.Join(dir, p), make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/nonexistent", filepath.Join(dir, "dangling")); err != nil {
		t.Fatal(err)
	}
	if err := EvictCache([]string{dir, filepath.Join(dir, "a"), filepath.Join(dir, "missing")}); err != nil {
		t.Errorf("EvictCache: %v", err)
	}
}
