package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/torus-storage/torus"
)

// ImportOffsetLabel is the volume label an import in progress keeps: the
// offset of the source up to which the volume holds the source's data,
// flushed. It is set when an import starts, advanced after a FLUSH every
// --checkpoint-every bytes, and removed when the import completes; a volume
// that still has it had an import interrupted.
const ImportOffsetLabel = "torus.io/import-offset"

// blockSize is the unit of zero detection: an all-zero 4 KiB block of the
// source is not written.
const blockSize = 4096

// copyChunk is how much import and export move per request.
const copyChunk = 1 << 20

// noVolumes is the default Deps.OpenVolume: this package's own tests run
// without daemons.
func noVolumes(context.Context, torus.Metadata, Global, string, VolumeOptions) (torus.Device, func(), error) {
	return nil, nil, errors.New("opening volumes is not wired in (main injects Deps.OpenVolume)")
}

func owner(what string) string {
	host, _ := os.Hostname()
	return fmt.Sprintf("torusctl %s@%s pid %d", what, host, os.Getpid())
}

// importResult is what `volume import -o json` prints.
type importResult struct {
	Volume       string  `json:"volume"`
	Start        int64   `json:"start"`         // source offset the import began at (>0 with --resume)
	Read         int64   `json:"read"`          // source bytes read, from Start
	DataWritten  int64   `json:"data_written"`  // bytes written as data
	ZeroedBytes  int64   `json:"zeroed_bytes"`  // bytes of old data cleared (zero runs, --zero-rest)
	SkippedZeros int64   `json:"skipped_zeros"` // all-zero bytes that needed no request
	Seconds      float64 `json:"seconds"`
}

func (a *app) volumeImportCmd() *cobra.Command {
	var resume, force, zeroRest bool
	var checkpointStr string
	var interval time.Duration
	cmd := &cobra.Command{
		Use:     "import NAME FILE|-",
		Aliases: []string{"load"},
		Short:   "Copy a raw image (a file, or - for stdin) into a volume, sparsely",
		Long: `import copies a raw disk image into the volume, from its start. All-zero
4 KiB blocks are not written: where the volume held data they are cleared
(WriteZeroes), elsewhere nothing is sent, so a sparse image costs only its
data. An image smaller than the volume leaves the rest of the volume as it
was, unless --zero-rest; an image larger than the volume is refused before
anything is written (grow the volume first with ` + "`torusctl volume resize`" + `).
From a pipe the size is not known in advance: the import fails when the
input passes the volume's end.

The volume is FLUSHed at the end, and every --checkpoint-every bytes, when
the offset reached is recorded in the label ` + ImportOffsetLabel + `. If an
import is interrupted, that label stays: a new import is refused until it
is continued with --resume (same source; the source is read from the
recorded offset) or restarted from the beginning with --force.

For qcow2, vmdk and other formats, convert to a raw file first
(qemu-img convert -O raw disk.qcow2 disk.raw; qemu-img cannot write to a
pipe), or stream through qemu-nbd:
  nbdcopy -- [ qemu-nbd -r -f qcow2 disk.qcow2 ] - | torusctl volume import NAME -`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, file := args[0], args[1]
			if err := checkName("volume", name); err != nil {
				return err
			}
			if resume && force {
				return errors.New("give --resume or --force, not both")
			}
			every, err := ParseSize(checkpointStr)
			if err != nil || every < copyChunk {
				return fmt.Errorf("--checkpoint-every %q: want a size of at least 1MiB", checkpointStr)
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				return a.doImport(ctx, md, name, file, importFlags{resume: resume, force: force, zeroRest: zeroRest, every: every, interval: interval})
			})
		},
	}
	cmd.Flags().BoolVar(&resume, "resume", false, "continue an interrupted import from the offset recorded in the volume's label")
	cmd.Flags().BoolVar(&force, "force", false, "start over although an earlier import was interrupted")
	cmd.Flags().BoolVar(&zeroRest, "zero-rest", false, "clear the volume past the end of the image")
	cmd.Flags().StringVar(&checkpointStr, "checkpoint-every", "64MiB", "FLUSH and record the offset reached (for --resume) this often")
	cmd.Flags().DurationVar(&interval, "progress-interval", 5*time.Second, "time between progress lines when stderr is not a terminal")
	return cmd
}

type importFlags struct {
	resume, force, zeroRest bool
	every                   int64
	interval                time.Duration
}

func (a *app) doImport(ctx context.Context, md torus.Metadata, name, file string, f importFlags) (err error) {
	info, err := md.Volume(ctx, name)
	if err != nil {
		return err
	}
	var start int64
	recorded, interrupted := info.Labels[ImportOffsetLabel]
	switch {
	case interrupted && !f.resume && !f.force:
		return fmt.Errorf("volume %q has an interrupted import (label %s=%s): continue it with `torusctl volume import %s FILE --resume` from the same source, or start over with --force",
			name, ImportOffsetLabel, recorded, name)
	case f.resume && !interrupted:
		return fmt.Errorf("volume %q has no interrupted import to resume (no label %s)", name, ImportOffsetLabel)
	case f.resume:
		start, err = strconv.ParseInt(recorded, 10, 64)
		if err != nil || start < 0 || start%blockSize != 0 {
			return fmt.Errorf("volume %q: label %s=%q is not an offset; start over with --force", name, ImportOffsetLabel, recorded)
		}
	}

	// The source, and its size when known (a regular file or device).
	var src io.Reader
	size := int64(-1)
	if file == "-" {
		src = a.deps.Stdin
	} else {
		fh, err := os.Open(file)
		if err != nil {
			return err
		}
		defer fh.Close()
		src = fh
		if st, err := fh.Stat(); err == nil && st.Mode().IsRegular() {
			size = st.Size()
		} else if n, err := fh.Seek(0, io.SeekEnd); err == nil && n > 0 { // a block device
			size = n
			if _, err := fh.Seek(0, io.SeekStart); err != nil {
				return err
			}
		}
	}
	if size > info.Size {
		return fmt.Errorf("%w: %s is %s (%d bytes), larger than volume %q (%s): nothing written; grow the volume first: `torusctl volume resize %s %s`",
			torus.ErrInvalid, file, HumanSize(size), size, name, FormatSize(info.Size), name, FormatSize(roundUp(size, blockSize)))
	}
	if size >= 0 && start > size {
		return fmt.Errorf("%w: the recorded offset %d is past the end of %s (%d bytes): not the same source? start over with --force", torus.ErrInvalid, start, file, size)
	}

	dev, done, err := a.deps.OpenVolume(ctx, md, a.g, name, VolumeOptions{Owner: owner("volume import")})
	if err != nil {
		return err
	}
	defer done()
	defer func() {
		if cerr := dev.Close(context.WithoutCancel(ctx)); err == nil {
			err = cerr
		}
	}()
	volSize := dev.Size()
	old, err := dataExtents(ctx, dev, 0, volSize)
	if err != nil {
		return err
	}
	setOffset := func(off int64) error {
		_, err := md.SetVolumeLabels(ctx, name, map[string]string{ImportOffsetLabel: strconv.FormatInt(off, 10)}, nil)
		return err
	}
	if err := setOffset(start); err != nil {
		return err
	}
	if start > 0 {
		if s, ok := src.(io.Seeker); ok && size >= 0 {
			_, err = s.Seek(start, io.SeekStart)
		} else {
			_, err = io.CopyN(io.Discard, src, start)
		}
		if err != nil {
			return fmt.Errorf("skipping to the recorded offset %d of %s: %w", start, file, err)
		}
	}

	res := importResult{Volume: name, Start: start}
	began := a.deps.Now()
	prog := newProgress(a.errOut, a.deps.IsTerminal(a.errOut), a.deps.Now, f.interval, "import "+name, start, max(size, 0))
	zeroRun := func(off, n int64) error {
		for _, e := range intersect(old, off, n) {
			if err := dev.WriteZeroes(ctx, e.Offset, e.Length, false); err != nil {
				return err
			}
			res.ZeroedBytes += e.Length
			n -= e.Length
		}
		res.SkippedZeros += n
		return nil
	}
	buf := make([]byte, copyChunk)
	pos, lastMark := start, start
	for {
		n, rerr := io.ReadFull(src, buf)
		if n > 0 {
			if pos+int64(n) > volSize {
				return fmt.Errorf("%w: the input is larger than volume %q (%s): stopped at offset %d; grow the volume (`torusctl volume resize`) and import again with --force",
					torus.ErrInvalid, name, FormatSize(volSize), pos)
			}
			if err := writeChunk(ctx, dev, buf[:n], pos, zeroRun, &res); err != nil {
				return fmt.Errorf("writing at offset %d: %w", pos, err)
			}
			pos += int64(n)
			res.Read = pos - start
			prog.update(pos)
			if pos-lastMark >= f.every {
				if err := dev.Flush(ctx); err != nil {
					return fmt.Errorf("flush at offset %d: %w", pos, err)
				}
				if err := setOffset(pos); err != nil {
					return err
				}
				lastMark = pos
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("reading %s at offset %d: %w (the volume holds the source up to offset %d: continue with --resume)", file, pos, rerr, lastMark)
		}
	}
	if f.zeroRest && pos < volSize {
		skipped := res.SkippedZeros
		if err := zeroRun(pos, volSize-pos); err != nil {
			return err
		}
		res.SkippedZeros = skipped // the rest is not part of the image
	}
	if err := dev.Flush(ctx); err != nil {
		return fmt.Errorf("final flush: %w", err)
	}
	if _, err := md.SetVolumeLabels(ctx, name, nil, []string{ImportOffsetLabel}); err != nil {
		return err
	}
	prog.finish()
	res.Seconds = a.deps.Now().Sub(began).Seconds()
	return a.say(res, "imported %s into %s: %s data written, %s of old data cleared, %s of zeros skipped",
		HumanSize(res.Read), name, HumanSize(res.DataWritten), HumanSize(res.ZeroedBytes), HumanSize(res.SkippedZeros))
}

var zeroBlock [blockSize]byte

// writeChunk writes p at off: runs of data blocks with WriteAt, runs of
// all-zero blocks through zeroRun.
func writeChunk(ctx context.Context, dev torus.Device, p []byte, off int64, zeroRun func(off, n int64) error, res *importResult) error {
	runStart, runZero := 0, false
	flush := func(end int) error {
		if end == runStart {
			return nil
		}
		if runZero {
			return zeroRun(off+int64(runStart), int64(end-runStart))
		}
		res.DataWritten += int64(end - runStart)
		return dev.WriteAt(ctx, p[runStart:end], off+int64(runStart), false)
	}
	for i := 0; i < len(p); i += blockSize {
		j := min(i+blockSize, len(p))
		z := bytes.Equal(p[i:j], zeroBlock[:j-i])
		if i > runStart && z != runZero {
			if err := flush(i); err != nil {
				return err
			}
			runStart = i
		}
		runZero = z
	}
	return flush(len(p))
}

// dataExtents lists the ranges of [off, off+n) of dev that hold data.
func dataExtents(ctx context.Context, dev torus.Device, off, n int64) ([]torus.Extent, error) {
	const window = 1 << 30
	var out []torus.Extent
	for o := off; o < off+n; o += window {
		es, err := dev.Extents(ctx, o, min(window, off+n-o))
		if err != nil {
			return nil, err
		}
		for _, e := range es {
			if e.Zero || e.Length == 0 {
				continue
			}
			if k := len(out); k > 0 && out[k-1].Offset+out[k-1].Length == e.Offset {
				out[k-1].Length += e.Length
				continue
			}
			out = append(out, e)
		}
	}
	return out, nil
}

// intersect returns the parts of the sorted data extents inside [off, off+n).
func intersect(data []torus.Extent, off, n int64) []torus.Extent {
	var out []torus.Extent
	end := off + n
	for _, e := range data {
		s, t := max(e.Offset, off), min(e.Offset+e.Length, end)
		if s < t {
			out = append(out, torus.Extent{Offset: s, Length: t - s})
		}
	}
	return out
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// exportResult is what `volume export -o json` prints (to stderr when the
// image goes to stdout).
type exportResult struct {
	Volume   string  `json:"volume"`
	Snapshot string  `json:"snapshot,omitempty"`
	Size     int64   `json:"size"`
	DataRead int64   `json:"data_read"` // bytes read from the volume
	Holes    int64   `json:"holes"`     // bytes of holes (skipped, or written as zeros to a pipe)
	Sparse   bool    `json:"sparse"`    // holes were skipped in a regular file
	Seconds  float64 `json:"seconds"`
}

func (a *app) volumeExportCmd() *cobra.Command {
	var interval time.Duration
	cmd := &cobra.Command{
		Use:     "export NAME[@SNAP] FILE|-",
		Aliases: []string{"dump"},
		Short:   "Copy a volume or snapshot to a raw image (a file, or - for stdout), sparsely",
		Long: `export writes the volume (or the snapshot NAME@SNAP) as a raw image. Only the
volume's data is read: holes (never written, trimmed or zeroed ranges) are
skipped in a regular file, which stays sparse, and written as zeros to a
pipe or device. A volume with a writer is exported as of the moment export
opens it (a point-in-time view of its last FLUSH); for a consistent image
of a volume in use, export a snapshot.

To get qcow2, export to a file, then
qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			vol, snap, _ := strings.Cut(args[0], "@")
			if err := checkName("volume", vol); err != nil {
				return err
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				return a.doExport(ctx, md, vol, snap, args[1], interval)
			})
		},
	}
	cmd.Flags().DurationVar(&interval, "progress-interval", 5*time.Second, "time between progress lines when stderr is not a terminal")
	return cmd
}

func (a *app) doExport(ctx context.Context, md torus.Metadata, vol, snap, file string, interval time.Duration) (err error) {
	dev, done, err := a.deps.OpenVolume(ctx, md, a.g, vol, VolumeOptions{ReadOnly: true, Snapshot: snap})
	if err != nil {
		return err
	}
	defer done()
	defer dev.Close(context.WithoutCancel(ctx))

	var w io.Writer = a.out
	var fh *os.File
	if file != "-" {
		fh, err = os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		defer func() {
			if cerr := fh.Close(); err == nil {
				err = cerr
			}
		}()
		w = fh
	}
	sparse := false
	if fh != nil {
		if st, err := fh.Stat(); err == nil && st.Mode().IsRegular() {
			sparse = true
		}
	}
	size := dev.Size()
	what := vol
	if snap != "" {
		what += "@" + snap
	}
	res := exportResult{Volume: vol, Snapshot: snap, Size: size, Sparse: sparse}
	began := a.deps.Now()
	prog := newProgress(a.errOut, a.deps.IsTerminal(a.errOut), a.deps.Now, interval, "export "+what, 0, size)
	buf := make([]byte, copyChunk)
	const window = 1 << 30
	for o := int64(0); o < size; o += window {
		es, err := dev.Extents(ctx, o, min(window, size-o))
		if err != nil {
			return err
		}
		for _, e := range es {
			for p := e.Offset; p < e.Offset+e.Length; {
				n := min(int64(len(buf)), e.Offset+e.Length-p)
				b := buf[:n]
				switch {
				case e.Zero && sparse:
					p += n
					res.Holes += n
					continue
				case e.Zero:
					clear(b)
					res.Holes += n
				default:
					if err := dev.ReadAt(ctx, b, p); err != nil {
						return fmt.Errorf("reading %s at offset %d: %w", vol, p, err)
					}
					res.DataRead += n
				}
				if sparse {
					_, err = fh.WriteAt(b, p)
				} else {
					_, err = w.Write(b)
				}
				if err != nil {
					return fmt.Errorf("writing %s at offset %d: %w", file, p, err)
				}
				p += n
				prog.update(p)
			}
		}
	}
	if sparse {
		if err := fh.Truncate(size); err != nil {
			return err
		}
		if err := fh.Sync(); err != nil {
			return err
		}
	}
	prog.finish()
	res.Seconds = a.deps.Now().Sub(began).Seconds()
	if file == "-" {
		// stdout carries the image: the summary goes to stderr.
		fmt.Fprintf(a.errOut, "exported %s: %s data read, %s of holes\n", what, HumanSize(res.DataRead), HumanSize(res.Holes))
		return nil
	}
	return a.say(res, "exported %s to %s: %s data read, %s of holes skipped", what, file, HumanSize(res.DataRead), HumanSize(res.Holes))
}
