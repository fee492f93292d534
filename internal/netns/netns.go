//go:build linux

package netns

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrUnsupported is returned by New when the process may not create network
// namespaces (not root, or a sandbox forbids unshare(CLONE_NEWNET)).
var ErrUnsupported = errors.New("netns: cannot create network namespaces")

// NS is a network namespace of its own, held open by a file descriptor.
// Its loopback interface is up; it has no other interface, so nothing in it
// reaches anything outside except through listeners the test opened inside
// it (see Listen and Proxy).
type NS struct {
	mu     sync.Mutex
	fd     int
	closed bool
}

// New creates a fresh network namespace with its loopback up.
func New() (*NS, error) {
	var fd int
	err := onThread(func(orig int) (bool, error) {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return true, fmt.Errorf("%w: unshare: %v", ErrUnsupported, err)
		}
		var err error
		fd, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			err = loopbackUp()
			if err != nil {
				unix.Close(fd)
			}
		}
		// Always try to go back to the original namespace.
		if serr := unix.Setns(orig, unix.CLONE_NEWNET); serr != nil {
			return false, fmt.Errorf("netns: returning to the original namespace: %v", serr)
		}
		return true, err
	})
	if err != nil {
		return nil, err
	}
	return &NS{fd: fd}, nil
}

// onThread runs f on a locked OS thread, passing an fd of the thread's
// original network namespace. f reports whether the thread is still in its
// original namespace; if not, the thread is never unlocked, so the runtime
// discards it when the goroutine ends instead of reusing a tainted thread.
func onThread(f func(orig int) (clean bool, err error)) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: %w", err)
			return
		}
		clean, err := f(orig)
		unix.Close(orig)
		if clean {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func loopbackUp() error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns: socket: %w", err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("netns: %w", err)
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("netns: SIOCGIFFLAGS lo: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("netns: SIOCSIFFLAGS lo: %w", err)
	}
	return nil
}

// Do runs f on an OS thread switched into the namespace. Sockets f creates
// (net.Listen, net.Dial) and processes it starts (exec.Cmd.Start) belong to
// the namespace; goroutines f starts do not run inside it.
func (ns *NS) Do(f func() error) error {
	ns.mu.Lock()
	if ns.closed {
		ns.mu.Unlock()
		return fmt.Errorf("netns: namespace closed")
	}
	fd := ns.fd
	ns.mu.Unlock()
	var ferr error
	err := onThread(func(orig int) (bool, error) {
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return true, fmt.Errorf("netns: setns: %w", err)
		}
		ferr = f()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			return false, fmt.Errorf("netns: returning to the original namespace: %v", err)
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	return ferr
}

// Listen opens a TCP listener inside the namespace.
func (ns *NS) Listen(addr string) (net.Listener, error) {
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

// Dial connects from inside the namespace.
func (ns *NS) Dial(addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = net.Dial("tcp", addr)
		return err
	})
	return c, err
}

// Start starts cmd inside the namespace.
func (ns *NS) Start(cmd *exec.Cmd) error {
	return ns.Do(cmd.Start)
}

// Close releases the namespace's descriptor. The namespace itself lives on
// while processes or sockets use it. Idempotent.
func (ns *NS) Close() error {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.closed {
		return nil
	}
	ns.closed = true
	return unix.Close(ns.fd)
}
