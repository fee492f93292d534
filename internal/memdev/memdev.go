// Package memdev is an in-memory, sparse torus.Device for tests.
//
// A Device stores data in 4 KiB blocks allocated on first write; blocks never
// written, trimmed or zeroed whole are holes and read as zeros. Extents
// reports allocated blocks as data and holes as zero ranges, so tests can
// observe what a client's TRIM and WRITE_ZEROES did. Partly trimmed or zeroed
// blocks stay allocated, with the range cleared.
//
// Fault hooks (SetFault) let tests make any operation fail or stall; counters
// (Flushes, Closed) let them check what a server did with the device.
package memdev

import (
	"context"
	"fmt"
	"sync"

	"github.com/torus-storage/torus"
)

const blockSize = torus.BlockSize

// Op names a Device operation, passed to the fault hook.
type Op string

// The operations a fault hook sees.
const (
	OpRead        Op = "read"
	OpWrite       Op = "write"
	OpFlush       Op = "flush"
	OpTrim        Op = "trim"
	OpWriteZeroes Op = "write-zeroes"
	OpExtents     Op = "extents"
	OpClose       Op = "close"
)

// FaultFunc is called at the start of every operation with its range (zero
// for flush and close). A non-nil error fails the operation before it does
// anything. It may block (to hold a request in flight).
type FaultFunc func(ctx context.Context, op Op, off, length int64) error

// Device is an in-memory torus.Device. The zero value is not usable; call New.
type Device struct {
	size     int64
	readOnly bool

	mu      sync.RWMutex
	blocks  map[int64]*[blockSize]byte
	closed  bool
	fault   FaultFunc
	flushes int
	closes  int
	writes  int
}

var _ torus.Device = (*Device)(nil)

// New returns an empty (all holes) device of size bytes.
func New(size int64, readOnly bool) *Device {
	return &Device{size: size, readOnly: readOnly, blocks: make(map[int64]*[blockSize]byte)}
}

// SetFault installs f as the fault hook (nil removes it).
func (d *Device) SetFault(f FaultFunc) {
	d.mu.Lock()
	d.fault = f
	d.mu.Unlock()
}

// Flushes reports how many Flush calls (including FUA writes and the flush
// done by Close) succeeded.
func (d *Device) Flushes() int {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.flushes
}

// Closes reports how many times Close was called successfully.
func (d *Device) Closes() int {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.closes
}

// Writes reports how many successful WriteAt calls there were.
func (d *Device) Writes() int {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.writes
}

// IsClosed reports whether the device is closed.
func (d *Device) IsClosed() bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.closed
}

// Reopen makes a closed device usable again, keeping its contents, as a
// volume reopened after Close would be.
func (d *Device) Reopen() {
	d.mu.Lock()
	d.closed = false
	d.mu.Unlock()
}

// Allocated reports how many bytes of blocks are allocated.
func (d *Device) Allocated() int64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return int64(len(d.blocks)) * blockSize
}

// Size implements torus.Device.
func (d *Device) Size() int64 { return d.size }

// ReadOnly implements torus.Device.
func (d *Device) ReadOnly() bool { return d.readOnly }

func (d *Device) check(ctx context.Context, op Op, off, length int64, write bool) error {
	d.mu.RLock()
	f, closed := d.fault, d.closed
	d.mu.RUnlock()
	if closed {
		return fmt.Errorf("memdev %s: %w", op, torus.ErrClosed)
	}
	if f != nil {
		if err := f(ctx, op, off, length); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if write && d.readOnly {
		return fmt.Errorf("memdev %s: %w", op, torus.ErrReadOnly)
	}
	if off < 0 || length < 0 || off > d.size || length > d.size-off {
		return fmt.Errorf("memdev %s [%d,+%d) of %d: %w", op, off, length, d.size, torus.ErrOutOfRange)
	}
	return nil
}

// ReadAt implements torus.Device.
func (d *Device) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := d.check(ctx, OpRead, off, int64(len(p)), false); err != nil {
		return err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	for done := 0; done < len(p); {
		pos := off + int64(done)
		bi, bo := pos/blockSize, int(pos%blockSize)
		n := min(blockSize-bo, len(p)-done)
		if b := d.blocks[bi]; b != nil {
			copy(p[done:done+n], b[bo:bo+n])
		} else {
			clear(p[done : done+n])
		}
		done += n
	}
	return nil
}

// WriteAt implements torus.Device.
func (d *Device) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := d.check(ctx, OpWrite, off, int64(len(p)), true); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for done := 0; done < len(p); {
		pos := off + int64(done)
		bi, bo := pos/blockSize, int(pos%blockSize)
		n := min(blockSize-bo, len(p)-done)
		b := d.blocks[bi]
		if b == nil {
			b = new([blockSize]byte)
			d.blocks[bi] = b
		}
		copy(b[bo:bo+n], p[done:done+n])
		done += n
	}
	d.writes++
	if fua {
		d.flushes++
	}
	return nil
}

// Flush implements torus.Device.
func (d *Device) Flush(ctx context.Context) error {
	if err := d.check(ctx, OpFlush, 0, 0, false); err != nil {
		return err
	}
	d.mu.Lock()
	d.flushes++
	d.mu.Unlock()
	return nil
}

// zero clears [off, off+length): whole blocks become holes, partial blocks
// stay allocated with the range cleared. Called with d.mu held.
func (d *Device) zero(off, length int64) {
	end := off + length
	for pos := off; pos < end; {
		bi, bo := pos/blockSize, pos%blockSize
		n := min(blockSize-bo, end-pos)
		if n == blockSize {
			delete(d.blocks, bi)
		} else if b := d.blocks[bi]; b != nil {
			clear(b[bo : bo+n])
		}
		pos += n
	}
}

// Trim implements torus.Device.
func (d *Device) Trim(ctx context.Context, off, length int64) error {
	if err := d.check(ctx, OpTrim, off, length, true); err != nil {
		return err
	}
	d.mu.Lock()
	d.zero(off, length)
	d.mu.Unlock()
	return nil
}

// WriteZeroes implements torus.Device.
func (d *Device) WriteZeroes(ctx context.Context, off, length int64, fua bool) error {
	if err := d.check(ctx, OpWriteZeroes, off, length, true); err != nil {
		return err
	}
	d.mu.Lock()
	d.zero(off, length)
	if fua {
		d.flushes++
	}
	d.mu.Unlock()
	return nil
}

// Extents implements torus.Device: allocated blocks are data, the rest zero.
// Adjacent extents of the same kind are merged.
func (d *Device) Extents(ctx context.Context, off, length int64) ([]torus.Extent, error) {
	if err := d.check(ctx, OpExtents, off, length, false); err != nil {
		return nil, err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	var out []torus.Extent
	end := off + length
	for pos := off; pos < end; {
		bi, bo := pos/blockSize, pos%blockSize
		n := min(blockSize-bo, end-pos)
		zero := d.blocks[bi] == nil
		if k := len(out); k > 0 && out[k-1].Zero == zero {
			out[k-1].Length += n
		} else {
			out = append(out, torus.Extent{Offset: pos, Length: n, Zero: zero})
		}
		pos += n
	}
	return out, nil
}

// Close implements torus.Device: it flushes and marks the device closed;
// further calls fail with torus.ErrClosed until Reopen.
func (d *Device) Close(ctx context.Context) error {
	if err := d.check(ctx, OpClose, 0, 0, false); err != nil {
		return err
	}
	d.mu.Lock()
	d.closed = true
	d.flushes++
	d.closes++
	d.mu.Unlock()
	return nil
}
