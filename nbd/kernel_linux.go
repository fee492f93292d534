package nbd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
)

// Linux NBD ioctls (include/uapi/linux/nbd.h): _IO(0xab, n).
const (
	nbdSetSock       = 0xab00
	nbdSetBlksize    = 0xab01
	nbdDoIt          = 0xab03
	nbdClearSock     = 0xab04
	nbdClearQue      = 0xab05
	nbdSetSizeBlocks = 0xab07
	nbdDisconnect    = 0xab08
	nbdSetTimeout    = 0xab09
	nbdSetFlags      = 0xab0a
)

// kernelBlockSize is the logical block size given to the kernel device.
const kernelBlockSize = 4096

// AttachKernel connects the Linux NBD device dev (e.g. /dev/nbd0) to
// export: it negotiates over conn as a client (ClientHandshake), hands the
// socket to the kernel and blocks in NBD_DO_IT until the device is
// disconnected (nbd-client -d, or the server closing the connection) or ctx
// ends, which disconnects it. conn must be a socket (*net.TCPConn or
// *net.UnixConn, e.g. one end of a socketpair served by Server.ServeConn).
//
// Without the kernel's nbd module it fails with an error wrapping
// torus.ErrUnavailable: "kernel NBD driver not available: modprobe nbd".
func AttachKernel(ctx context.Context, dev string, conn net.Conn, export string) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENXIO) || errors.Is(err, syscall.ENODEV) {
			return fmt.Errorf("%w: kernel NBD driver not available: modprobe nbd (%s: %v)", torus.ErrUnavailable, dev, err)
		}
		return fmt.Errorf("nbd: open %s: %w", dev, err)
	}
	defer f.Close()
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return fmt.Errorf("%w: nbd: %T is not a socket", torus.ErrInvalid, conn)
	}
	e, err := ClientHandshake(ctx, conn, export)
	if err != nil {
		return err
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return fmt.Errorf("nbd: socket: %w", err)
	}
	fd := int(f.Fd())
	var sockErr error
	if err := raw.Control(func(sock uintptr) {
		sockErr = kernelSetup(fd, int(sock), e)
	}); err != nil {
		return fmt.Errorf("nbd: socket: %w", err)
	}
	if sockErr != nil {
		return sockErr
	}
	stop := context.AfterFunc(ctx, func() {
		unix.IoctlSetInt(fd, nbdDisconnect, 0)
	})
	defer stop()
	// NBD_DO_IT blocks until the device is disconnected.
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nbdDoIt, 0)
	unix.IoctlSetInt(fd, nbdClearQue, 0)
	unix.IoctlSetInt(fd, nbdClearSock, 0)
	if ctx.Err() != nil {
		return nil // disconnected on request
	}
	if errno != 0 && errno != unix.EPIPE {
		return fmt.Errorf("nbd: %s: NBD_DO_IT: %w", dev, errno)
	}
	return nil
}

// kernelSetup passes the negotiated parameters and the socket to the
// kernel.
func kernelSetup(fd, sock int, e ClientExport) error {
	steps := []struct {
		name string
		req  uint
		arg  int
	}{
		{"NBD_CLEAR_SOCK", nbdClearSock, 0},
		{"NBD_SET_BLKSIZE", nbdSetBlksize, kernelBlockSize},
		{"NBD_SET_SIZE_BLOCKS", nbdSetSizeBlocks, int(e.Size / kernelBlockSize)},
		{"NBD_SET_TIMEOUT", nbdSetTimeout, 0},
		{"NBD_SET_FLAGS", nbdSetFlags, int(e.Flags)},
		{"NBD_SET_SOCK", nbdSetSock, sock},
	}
	for _, s := range steps {
		if err := unix.IoctlSetInt(fd, s.req, s.arg); err != nil {
			return fmt.Errorf("nbd: %s: %w", s.name, err)
		}
	}
	return nil
}
