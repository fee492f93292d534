//go:build !linux

package nbd

import (
	"context"
	"fmt"
	"net"

	"github.com/torus-storage/torus"
)

// AttachKernel is only available on Linux.
func AttachKernel(ctx context.Context, dev string, conn net.Conn, export string) error {
	return fmt.Errorf("%w: kernel NBD driver not available on this platform", torus.ErrUnavailable)
}
