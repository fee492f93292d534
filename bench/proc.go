package main

// Process management: every child the benchmark starts goes through a
// Procs group, which stops (SIGTERM, then SIGKILL after a grace period) and
// reaps all of them, and removes the temporary directories it created.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// ErrNotReady is returned when a started service did not become ready in
// time or exited while we waited.
var ErrNotReady = errors.New("bench: service not ready")

// Proc is one running child process. Its Wait runs in one goroutine owned by
// the Proc, which ends when the process is reaped.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed when reaped
	err  error         // exit status, valid after done
	stop sync.Once
}

// PID returns the process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err returns the exit status once Done is closed.
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// Alive reports whether the process has not exited yet.
func (p *Proc) Alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// LogPath is where the process's stdout and stderr go.
func (p *Proc) LogPath() string { return p.log.Name() }

// Kill sends SIGKILL to the process's group and waits until it is reaped.
func (p *Proc) Kill() {
	p.signal(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM, waits up to grace, then SIGKILL, and waits until the
// process is reaped. It is idempotent and returns the exit status (nil also
// when the process ended through our SIGTERM).
func (p *Proc) Stop(grace time.Duration) error {
	p.stop.Do(func() {
		p.signal(syscall.SIGTERM)
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-p.done:
		case <-t.C:
			p.signal(syscall.SIGKILL)
			<-p.done
		}
	})
	<-p.done
	var ee *exec.ExitError
	if errors.As(p.err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled() {
		return nil // ended by our signal
	}
	return p.err
}

func (p *Proc) signal(sig syscall.Signal) {
	if !p.Alive() {
		return
	}
	// The child leads its own process group: signal the group, so helpers
	// it forked go too.
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
}

// Procs owns every child process and temporary directory of one target (or
// of the whole run). Close stops and reaps all processes, newest first, and
// removes the directories.
type Procs struct {
	logger *slog.Logger
	dir    string // parent of temp dirs and logs
	mu     sync.Mutex
	procs  []*Proc
	dirs   []string
	closed bool
}

// NewProcs returns a group that creates its temporary directories and
// child logs under dir (which must exist).
func NewProcs(logger *slog.Logger, dir string) *Procs {
	return &Procs{logger: logger, dir: dir}
}

// TempDir creates a temporary directory that Close removes.
func (g *Procs) TempDir(pattern string) (string, error) {
	d, err := os.MkdirTemp(g.dir, pattern)
	if err != nil {
		return "", err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dirs = append(g.dirs, d)
	return d, nil
}

// Start starts argv[0] with argv[1:] in its own process group, output to a
// log file named after name. The child gets SIGKILL if the benchmark dies.
func (g *Procs) Start(name string, argv ...string) (*Proc, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, fmt.Errorf("bench: start %s: process group closed", name)
	}
	logf, err := os.CreateTemp(g.dir, name+"-*.log")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		os.Remove(logf.Name())
		return nil, fmt.Errorf("bench: start %s: %w", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, log: logf, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	g.procs = append(g.procs, p)
	g.logger.Debug("started", "name", name, "pid", p.PID(), "argv", argv, "log", logf.Name())
	return p, nil
}

// Close stops every process (newest first) with a grace period, reaps them
// and removes the temporary directories. It is idempotent.
func (g *Procs) Close() error {
	g.mu.Lock()
	procs, dirs := g.procs, g.dirs
	g.procs, g.dirs, g.closed = nil, nil, true
	g.mu.Unlock()
	var errs []error
	for _, p := range slices.Backward(procs) {
		if err := p.Stop(5 * time.Second); err != nil {
			g.logger.Debug("stopped with error", "name", p.Name, "err", err, "log", p.LogPath())
		}
	}
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Tail returns the last n bytes of a process's log, for error messages.
func Tail(p *Proc, n int64) string {
	f, err := os.Open(p.LogPath())
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	if st.Size() > n {
		if _, err := f.Seek(st.Size()-n, io.SeekStart); err != nil {
			return ""
		}
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// RunCmd runs a short command to completion under ctx (SIGKILL when ctx
// ends; the process is always reaped) and returns its combined output.
func RunCmd(ctx context.Context, timeout time.Duration, argv ...string) ([]byte, error) {
	return RunCmdEnv(ctx, timeout, nil, argv...)
}

// RunCmdEnv is RunCmd with env ("K=V") added to the benchmark's
// environment.
func RunCmdEnv(ctx context.Context, timeout time.Duration, env []string, argv ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return out, fmt.Errorf("bench: %s: %w: %s", argv[0], err, oneLine(string(out), 300))
	}
	return out, nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// FreePorts returns n distinct free ports, all held open until every one is
// chosen so that they differ.
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Addr formats 127.0.0.1:port.
func Addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// WaitReady polls check every 100 ms until it returns nil, the process
// exits (if p is not nil), or timeout passes.
func WaitReady(ctx context.Context, p *Proc, timeout time.Duration, what string, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		var exited <-chan struct{}
		if p != nil {
			exited = p.Done()
		}
		select {
		case <-exited:
			return fmt.Errorf("%w: %s: process exited (%v): %s", ErrNotReady, what, p.err, oneLine(Tail(p, 600), 600))
		case <-ctx.Done():
			return fmt.Errorf("%w: %s after %v: %v", ErrNotReady, what, timeout, last)
		case <-tick.C:
		}
	}
}

// TCPCheck returns a readiness check that succeeds once addr accepts a
// connection.
func TCPCheck(addr string) func(context.Context) error {
	return func(ctx context.Context) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
}

// HTTPCheck returns a readiness check that succeeds once url answers 200.
func HTTPCheck(url string) func(context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	}
}
