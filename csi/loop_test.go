package csi_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/csi"
)

// loopAttacher is the node tests' csi.Attacher: a real loop device (direct
// I/O) over a sparse file per volume in a temporary directory, sized as
// the volume's record says, and a real writer lock on the volume (a
// session of the metadata store), so fencing and takeover behave as with
// the production attacher. The data does not go through Torus.
type loopAttacher struct {
	t    testing.TB
	dir  string
	meta torus.Metadata
	node string

	mu   sync.Mutex
	atts map[string]*loopAtt
}

type loopAtt struct {
	csi.Attachment
	file  string
	ses   torus.Session
	stop  context.CancelFunc
	epoch uint64
}

func newLoopAttacher(t testing.TB, meta torus.Metadata, node string) *loopAttacher {
	l := &loopAttacher{t: t, dir: t.TempDir(), meta: meta, node: node, atts: make(map[string]*loopAtt)}
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, a := range l.atts {
			_ = exec.Command("losetup", "-d", a.Device).Run()
			a.stop()
		}
	})
	return l
}

func (l *loopAttacher) Attach(ctx context.Context, volume string, readOnly bool) (csi.Attachment, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if a, ok := l.atts[volume]; ok {
		return a.Attachment, nil
	}
	v, err := l.meta.Volume(ctx, volume)
	if err != nil {
		return csi.Attachment{}, err
	}
	file := filepath.Join(l.dir, volume+".img")
	if err := growFile(file, v.Size); err != nil {
		return csi.Attachment{}, err
	}
	a := &loopAtt{file: file, stop: func() {}}
	if !readOnly {
		sctx, stop := context.WithCancel(context.Background()) // the session outlives the call
		ses, err := l.meta.NewSession(sctx, 10*time.Second)
		if err != nil {
			stop()
			return csi.Attachment{}, err
		}
		epoch, err := l.meta.Lock(ctx, ses, volume, torus.WriterInfo{Owner: "loop-test@" + l.node})
		if err != nil {
			_ = ses.Close(ctx)
			stop()
			return csi.Attachment{}, err
		}
		a.ses, a.stop, a.epoch = ses, stop, epoch
	}
	args := []string{"--find", "--show", "--direct-io=on"}
	if readOnly {
		args = append(args, "--read-only")
	}
	out, err := exec.CommandContext(ctx, "losetup", append(args, file)...).CombinedOutput()
	if err != nil {
		a.stop()
		return csi.Attachment{}, fmt.Errorf("losetup: %w: %s", err, out)
	}
	a.Attachment = csi.Attachment{Volume: volume, Device: strings.TrimSpace(string(out)), ReadOnly: readOnly}
	l.atts[volume] = a
	return a.Attachment, nil
}

func (l *loopAttacher) Detach(ctx context.Context, volume string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.atts[volume]
	if !ok {
		return nil
	}
	if out, err := exec.CommandContext(ctx, "losetup", "-d", a.Device).CombinedOutput(); err != nil {
		return fmt.Errorf("losetup -d: %w: %s", err, out)
	}
	if a.ses != nil {
		_ = l.meta.Unlock(ctx, volume, a.epoch)
		_ = a.ses.Close(ctx)
	}
	a.stop()
	delete(l.atts, volume)
	return nil
}

func (l *loopAttacher) Get(volume string) (csi.Attachment, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.atts[volume]
	if !ok {
		return csi.Attachment{}, false, nil
	}
	return a.Attachment, true, nil
}

func (l *loopAttacher) Resize(ctx context.Context, volume string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.atts[volume]
	if !ok {
		return fmt.Errorf("resize %s: %w: not attached", volume, torus.ErrNotExist)
	}
	v, err := l.meta.Volume(ctx, volume)
	if err != nil {
		return err
	}
	if err := growFile(a.file, v.Size); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "losetup", "-c", a.Device).CombinedOutput(); err != nil {
		return fmt.Errorf("losetup -c: %w: %s", err, out)
	}
	return nil
}

// device is the loop device of an attached volume ("" when none).
func (l *loopAttacher) device(volume string) string {
	a, _, _ := l.Get(volume)
	return a.Device
}

func growFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() < size {
		return f.Truncate(size)
	}
	return nil
}
