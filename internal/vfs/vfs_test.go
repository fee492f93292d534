package vfs_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/torus-storage/torus/internal/vfs"
)

// TestFS runs the same checks on the real filesystem and on MemFS, so the
// fake behaves like the real thing where the store relies on it.
func TestFS(t *testing.T) {
	for name, mk := range map[string]func(t *testing.T) (vfs.FS, string){
		"OS":    func(t *testing.T) (vfs.FS, string) { return vfs.OS, t.TempDir() },
		"MemFS": func(t *testing.T) (vfs.FS, string) { return vfs.NewMemFS(), "/data" },
	} {
		t.Run(name, func(t *testing.T) {
			fsys, root := mk(t)
			testFS(t, fsys, root)
		})
	}
}

func testFS(t *testing.T, fsys vfs.FS, root string) {
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(root, "a", "b")
	must(fsys.MkdirAll(dir))
	must(fsys.MkdirAll(dir)) // again: fine
	if err := fsys.Mkdir(dir); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Mkdir of an existing dir: %v; want ErrExist", err)
	}
	name := filepath.Join(dir, "f")
	if _, err := fsys.OpenFile(name, os.O_RDWR); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenFile of a missing file without O_CREATE: %v; want ErrNotExist", err)
	}
	f, err := fsys.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL)
	must(err)
	if _, err := fsys.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("O_EXCL on an existing file: %v; want ErrExist", err)
	}
	if _, err := f.WriteAt([]byte("hello world"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("!"), 13); err != nil { // leaves a hole of zeros
		t.Fatal(err)
	}
	p := make([]byte, 20)
	n, err := f.ReadAt(p, 0)
	if n != 14 || err != io.EOF || !bytes.Equal(p[:n], []byte("hello world\x00\x00!")) {
		t.Fatalf("ReadAt = %d, %v, %q", n, err, p[:n])
	}
	must(f.Truncate(5))
	if size, err := f.Size(); err != nil || size != 5 {
		t.Fatalf("Size after Truncate = %d, %v", size, err)
	}
	must(f.Datasync())
	ents, err := fsys.ReadDir(dir)
	must(err)
	if len(ents) != 1 || ents[0].Name != "f" || !ents[0].Regular || ents[0].Size != 5 {
		t.Fatalf("ReadDir = %+v", ents)
	}
	must(fsys.SyncDir(dir))
	must(fsys.SyncAll(root))
	if err := fsys.Remove(filepath.Join(root, "a")); err == nil {
		t.Fatal("Remove of a non-empty dir succeeded")
	}
	must(fsys.Remove(name))
	if err := fsys.Remove(name); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("second Remove: %v; want ErrNotExist", err)
	}
	// The open handle still works on the unlinked file.
	if n, err := f.ReadAt(p[:5], 0); n != 5 || err != nil {
		t.Fatalf("ReadAt of an unlinked file = %d, %v", n, err)
	}
	must(f.Close())

	// Rename moves a file to another directory, replacing a file there.
	other := filepath.Join(root, "other")
	must(fsys.MkdirAll(other))
	src := filepath.Join(dir, "src")
	g, err := fsys.OpenFile(src, os.O_RDWR|os.O_CREATE)
	must(err)
	_, err = g.WriteAt([]byte("moved"), 0)
	must(err)
	dst := filepath.Join(other, "dst")
	h, err := fsys.OpenFile(dst, os.O_RDWR|os.O_CREATE)
	must(err)
	_, err = h.WriteAt([]byte("replaced"), 0)
	must(err)
	must(fsys.Rename(src, dst))
	if _, err := fsys.OpenFile(src, os.O_RDWR); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("old name after Rename: %v; want ErrNotExist", err)
	}
	k, err := fsys.OpenFile(dst, os.O_RDWR)
	must(err)
	if n, err := k.ReadAt(p[:8], 0); n != 5 || string(p[:n]) != "moved" {
		t.Fatalf("new name after Rename = %q, %v; want %q", p[:n], err, "moved")
	}
	// The handle opened before the move writes to the moved file.
	_, err = g.WriteAt([]byte("!"), 5)
	must(err)
	if size, _ := k.Size(); size != 6 {
		t.Fatalf("size through a handle of the new name = %d; want 6", size)
	}
	if err := fsys.Rename(src, dst); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Rename of a missing file: %v; want ErrNotExist", err)
	}
	for _, c := range []vfs.File{g, h, k} {
		must(c.Close())
	}

	lockName := filepath.Join(root, "LOCK")
	l, err := fsys.Lock(lockName, "pid 1")
	must(err)
	_, err = fsys.Lock(lockName, "pid 2")
	var le *vfs.LockedError
	if !errors.As(err, &le) || !errors.Is(err, vfs.ErrLocked) {
		t.Fatalf("second Lock: %v; want *LockedError", err)
	}
	must(l.Close())
	l, err = fsys.Lock(lockName, "pid 3")
	must(err)
	must(l.Close())
}

func TestMemFSCrashStrict(t *testing.T) {
	m := vfs.NewMemFS()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(m.MkdirAll("/d/synced"))
	must(m.SyncDir("/"))
	must(m.SyncDir("/d"))
	must(m.Mkdir("/d/unsynced"))

	open := func(name string) vfs.File {
		f, err := m.OpenFile(name, os.O_RDWR|os.O_CREATE)
		must(err)
		return f
	}
	a := open("/d/synced/a") // entry and data synced, then more data
	_, _ = a.WriteAt([]byte("durable"), 0)
	must(a.Datasync())
	_, _ = a.WriteAt([]byte("+lost"), 7)
	b := open("/d/synced/b") // data synced, entry not
	_, _ = b.WriteAt([]byte("orphan"), 0)
	must(b.Datasync())
	must(m.SyncDir("/d/synced"))
	c := open("/d/synced/c") // created after the dir sync
	_, _ = c.WriteAt([]byte("c"), 0)
	must(c.Datasync())
	_ = b
	must(m.Remove("/d/synced/b")) // removal not synced: b comes back

	m.Crash(nil)

	ents, err := m.ReadDir("/d")
	must(err)
	if len(ents) != 1 || ents[0].Name != "synced" {
		t.Fatalf("/d after crash = %+v; want only synced", ents)
	}
	ents, err = m.ReadDir("/d/synced")
	must(err)
	if len(ents) != 2 || ents[0].Name != "a" || ents[1].Name != "b" {
		t.Fatalf("/d/synced after crash = %+v; want a and b", ents)
	}
	read := func(name string) string {
		f, err := m.OpenFile(name, os.O_RDWR)
		must(err)
		size, _ := f.Size()
		p := make([]byte, size)
		_, _ = f.ReadAt(p, 0)
		return string(p)
	}
	if got := read("/d/synced/a"); got != "durable" {
		t.Fatalf("a after crash = %q", got)
	}
	if got := read("/d/synced/b"); got != "orphan" {
		t.Fatalf("b after crash = %q", got)
	}
	// Writes through handles from before the crash do not show.
	_, _ = a.WriteAt([]byte("zombie"), 0)
	if got := read("/d/synced/a"); got != "durable" {
		t.Fatalf("a after a write through a pre-crash handle = %q", got)
	}
}

// TestMemFSCrashRename: a rename is durable once both directories are
// fsynced; before that, a strict crash keeps the old name only.
func TestMemFSCrashRename(t *testing.T) {
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	m := vfs.NewMemFS()
	must(m.MkdirAll("/a"))
	must(m.MkdirAll("/b"))
	must(m.SyncDir("/"))
	f, err := m.OpenFile("/a/f", os.O_RDWR|os.O_CREATE)
	must(err)
	_, err = f.WriteAt([]byte("data"), 0)
	must(err)
	must(f.Datasync())
	must(m.SyncDir("/a"))
	exists := func(name string) bool {
		_, err := m.OpenFile(name, os.O_RDWR)
		return err == nil
	}

	must(m.Rename("/a/f", "/b/g"))
	m.Crash(nil)
	if !exists("/a/f") || exists("/b/g") {
		t.Fatalf("unsynced rename after a crash: /a/f %v, /b/g %v; want only /a/f", exists("/a/f"), exists("/b/g"))
	}

	must(m.Rename("/a/f", "/b/g"))
	must(m.SyncDir("/b"))
	must(m.SyncDir("/a"))
	m.Crash(nil)
	if exists("/a/f") || !exists("/b/g") {
		t.Fatalf("synced rename after a crash: /a/f %v, /b/g %v; want only /b/g", exists("/a/f"), exists("/b/g"))
	}
}

func TestMemFSCrashRandomKeepsSynced(t *testing.T) {
	for seed := range uint64(50) {
		m := vfs.NewMemFS()
		if err := m.MkdirAll("/d"); err != nil {
			t.Fatal(err)
		}
		if err := m.SyncDir("/"); err != nil {
			t.Fatal(err)
		}
		f, _ := m.OpenFile("/d/f", os.O_RDWR|os.O_CREATE)
		_, _ = f.WriteAt([]byte("0123456789"), 0)
		_ = f.Datasync()
		_ = m.SyncDir("/d")
		_, _ = f.WriteAt([]byte("abcdefghij"), 10)
		m.Crash(rand.New(rand.NewPCG(seed, 0)))
		g, err := m.OpenFile("/d/f", os.O_RDWR)
		if err != nil {
			t.Fatalf("seed %d: synced file lost: %v", seed, err)
		}
		size, _ := g.Size()
		if size < 10 || size > 20 {
			t.Fatalf("seed %d: size %d; want 10..20", seed, size)
		}
		p := make([]byte, 10)
		if _, err := g.ReadAt(p, 0); err != nil || string(p) != "0123456789" {
			t.Fatalf("seed %d: synced bytes = %q, %v", seed, p, err)
		}
	}
}

func TestInject(t *testing.T) {
	boom := errors.New("boom")
	fail := ""
	fsys := vfs.Inject(vfs.NewMemFS(), func(op, path string) error {
		if op == fail {
			return boom
		}
		return nil
	})
	f, err := fsys.OpenFile("/f", os.O_RDWR|os.O_CREATE)
	if err != nil {
		t.Fatal(err)
	}
	fail = vfs.OpWrite
	if n, err := f.WriteAt([]byte("abcd"), 0); !errors.Is(err, boom) || n != 2 {
		t.Fatalf("failing write = %d, %v; want 2 bytes written and the error", n, err)
	}
	for _, op := range []string{vfs.OpDatasync, vfs.OpTruncate, vfs.OpRead} {
		fail = op
		var err error
		switch op {
		case vfs.OpDatasync:
			err = f.Datasync()
		case vfs.OpTruncate:
			err = f.Truncate(0)
		case vfs.OpRead:
			_, err = f.ReadAt(make([]byte, 1), 0)
		}
		if !errors.Is(err, boom) {
			t.Errorf("%s: %v; want the injected error", op, err)
		}
	}
	fail = vfs.OpOpen
	if _, err := fsys.OpenFile("/g", os.O_RDWR|os.O_CREATE); !errors.Is(err, boom) {
		t.Fatalf("open: %v", err)
	}
	fail = ""
	if _, err := fsys.OpenFile("/g", os.O_RDWR); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a failed open created the file: %v", err)
	}
	fail = vfs.OpRename
	if err := fsys.Rename("/f", "/h"); !errors.Is(err, boom) {
		t.Fatalf("rename: %v", err)
	}
	fail = ""
	if _, err := fsys.OpenFile("/f", os.O_RDWR); err != nil {
		t.Fatalf("a failed rename moved the file: %v", err)
	}
}

// TestMemFSCrashTorn: a torn crash keeps every synced byte, keeps at most
// the unsynced tail's length past them, draws every kind of tail over the
// seeds, and gives the same outcome for the same seed.
func TestMemFSCrashTorn(t *testing.T) {
	synced := []byte("0123456789")
	tail := bytes.Repeat([]byte("u"), 20)
	crash := func(seed uint64) []byte {
		m := vfs.NewMemFS()
		if err := m.MkdirAll("/d"); err != nil {
			t.Fatal(err)
		}
		_ = m.SyncDir("/")
		f, _ := m.OpenFile("/d/f", os.O_RDWR|os.O_CREATE)
		_, _ = f.WriteAt(synced, 0)
		_ = f.Datasync()
		_ = m.SyncDir("/d")
		_, _ = f.WriteAt(tail, 10)
		m.CrashTorn(seed)
		g, err := m.OpenFile("/d/f", os.O_RDWR)
		if err != nil {
			t.Fatalf("seed %d: synced file lost: %v", seed, err)
		}
		size, _ := g.Size()
		p := make([]byte, size)
		_, _ = g.ReadAt(p, 0)
		return p
	}
	seen := map[string]bool{}
	for seed := range uint64(200) {
		got := crash(seed)
		if len(got) < len(synced) || len(got) > len(synced)+len(tail) {
			t.Fatalf("seed %d: size %d; want %d..%d", seed, len(got), len(synced), len(synced)+len(tail))
		}
		if !bytes.Equal(got[:len(synced)], synced) {
			t.Fatalf("seed %d: synced bytes = %q", seed, got[:len(synced)])
		}
		if again := crash(seed); !bytes.Equal(again, got) {
			t.Fatalf("seed %d: two crashes differ: %q and %q", seed, got, again)
		}
		rest := bytes.TrimLeft(got[len(synced):], "u")
		switch {
		case len(got) == len(synced):
			seen["dropped"] = true
		case len(rest) == 0:
			seen["partial"] = true
		case len(bytes.Trim(rest, "\x00")) == 0:
			seen["zeros"] = true
		default:
			seen["garbage"] = true
		}
	}
	if len(seen) != 4 {
		t.Fatalf("outcomes over 200 seeds: %v; want dropped, partial, zeros and garbage", seen)
	}
}

// TestMemFSCrashDeterministic: Crash with an rng of the same seed gives
// the same outcome (directory changes included).
func TestMemFSCrashDeterministic(t *testing.T) {
	run := func(seed uint64) []vfs.DirEntry {
		m := vfs.NewMemFS()
		_ = m.MkdirAll("/d")
		_ = m.SyncDir("/")
		for i := range 16 {
			f, _ := m.OpenFile(filepath.Join("/d", string(rune('a'+i))), os.O_RDWR|os.O_CREATE)
			_, _ = f.WriteAt(bytes.Repeat([]byte{'x'}, 10+i), 0)
		}
		m.Crash(rand.New(rand.NewPCG(seed, 1)))
		ents, _ := m.ReadDir("/d")
		return ents
	}
	for seed := range uint64(20) {
		a, b := run(seed), run(seed)
		if len(a) != len(b) {
			t.Fatalf("seed %d: %d and %d entries", seed, len(a), len(b))
		}
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("seed %d: %+v and %+v", seed, a[i], b[i])
			}
		}
	}
}

// TestStartWriteback: the real filesystem's files start writeback of a
// written range (sync_file_range works here), and a closed file says so.
func TestStartWriteback(t *testing.T) {
	f, err := vfs.OS.OpenFile(filepath.Join(t.TempDir(), "f"), os.O_RDWR|os.O_CREATE)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	wb, ok := f.(vfs.Writebacker)
	if !ok {
		t.Fatal("the real filesystem's file is not a Writebacker")
	}
	if err := wb.StartWriteback(0, 1<<20); err != nil {
		t.Fatalf("StartWriteback: %v", err)
	}
	f.Close()
	if err := wb.StartWriteback(0, 1<<20); err == nil {
		t.Fatal("StartWriteback on a closed file: no error")
	}
}
