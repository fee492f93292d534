package vfs

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"path"
	"slices"
	"strings"
	"sync"
)

// MemFS is an in-memory FS that can simulate a power loss. It tracks, for
// every file, the contents as of its last Datasync, and for every
// directory, the entries as of its last SyncDir; Crash throws away the rest.
// It is safe for concurrent use.
type MemFS struct {
	mu    sync.Mutex
	root  *memNode
	locks map[string]bool
}

type memNode struct {
	dir bool
	// A file's contents, and what of them is durable.
	data, synced []byte
	// A directory's entries, and the durable ones.
	entries, durable map[string]*memNode
}

func newDirNode() *memNode {
	return &memNode{dir: true, entries: map[string]*memNode{}, durable: map[string]*memNode{}}
}

var _ FS = (*MemFS)(nil)

// NewMemFS returns an empty filesystem holding only the root directory.
func NewMemFS() *MemFS {
	return &MemFS{root: newDirNode(), locks: map[string]bool{}}
}

func split(name string) []string {
	p := path.Clean("/" + name)
	if p == "/" {
		return nil
	}
	return strings.Split(p[1:], "/")
}

// lookupDir returns the directory holding name and name's last element.
// Called with m.mu held.
func (m *MemFS) lookupDir(op, name string) (*memNode, string, error) {
	parts := split(name)
	if len(parts) == 0 {
		return nil, "", &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	d := m.root
	for _, p := range parts[:len(parts)-1] {
		n := d.entries[p]
		if n == nil {
			return nil, "", &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
		}
		if !n.dir {
			return nil, "", &fs.PathError{Op: op, Path: name, Err: fmt.Errorf("%s is not a directory", p)}
		}
		d = n
	}
	return d, parts[len(parts)-1], nil
}

func (m *MemFS) lookup(op, name string) (*memNode, error) {
	if len(split(name)) == 0 {
		return m.root, nil
	}
	d, base, err := m.lookupDir(op, name)
	if err != nil {
		return nil, err
	}
	n := d.entries[base]
	if n == nil {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
	}
	return n, nil
}

// OpenFile implements FS.
func (m *MemFS) OpenFile(name string, flag int) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, base, err := m.lookupDir("open", name)
	if err != nil {
		return nil, err
	}
	n := d.entries[base]
	switch {
	case n != nil && flag&osCreateExcl == osCreateExcl:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrExist}
	case n != nil && n.dir:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fmt.Errorf("is a directory")}
	case n == nil && flag&osCreate == 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	case n == nil:
		n = &memNode{}
		d.entries[base] = n
	}
	return &memFile{fs: m, n: n, name: name}, nil
}

// Remove implements FS.
func (m *MemFS) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, base, err := m.lookupDir("remove", name)
	if err != nil {
		return err
	}
	n := d.entries[base]
	if n == nil {
		return &fs.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
	}
	if n.dir && len(n.entries) > 0 {
		return &fs.PathError{Op: "remove", Path: name, Err: fmt.Errorf("directory not empty")}
	}
	delete(d.entries, base)
	return nil
}

// Rename implements FS. The old and the new entry are two directory
// changes, each durable only after a SyncDir of its directory; a crash in
// between may keep either, both or (with an rng) neither.
func (m *MemFS) Rename(oldname, newname string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	od, obase, err := m.lookupDir("rename", oldname)
	if err != nil {
		return err
	}
	n := od.entries[obase]
	if n == nil {
		return &fs.PathError{Op: "rename", Path: oldname, Err: fs.ErrNotExist}
	}
	nd, nbase, err := m.lookupDir("rename", newname)
	if err != nil {
		return err
	}
	if old := nd.entries[nbase]; old != nil {
		if old == n {
			return nil
		}
		if old.dir != n.dir || (old.dir && len(old.entries) > 0) {
			return &fs.PathError{Op: "rename", Path: newname, Err: fs.ErrExist}
		}
	}
	delete(od.entries, obase)
	nd.entries[nbase] = n
	return nil
}

// Mkdir implements FS.
func (m *MemFS) Mkdir(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mkdirLocked(name)
}

func (m *MemFS) mkdirLocked(name string) error {
	d, base, err := m.lookupDir("mkdir", name)
	if err != nil {
		return err
	}
	if d.entries[base] != nil {
		return &fs.PathError{Op: "mkdir", Path: name, Err: fs.ErrExist}
	}
	d.entries[base] = newDirNode()
	return nil
}

// MkdirAll implements FS.
func (m *MemFS) MkdirAll(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := ""
	for _, part := range split(name) {
		p += "/" + part
		n, err := m.lookup("mkdir", p)
		if err == nil {
			if !n.dir {
				return &fs.PathError{Op: "mkdir", Path: p, Err: fmt.Errorf("not a directory")}
			}
			continue
		}
		if err := m.mkdirLocked(p); err != nil {
			return err
		}
	}
	return nil
}

// ReadDir implements FS; entries are sorted by name.
func (m *MemFS) ReadDir(name string) ([]DirEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.lookup("readdir", name)
	if err != nil {
		return nil, err
	}
	if !d.dir {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: fmt.Errorf("not a directory")}
	}
	var out []DirEntry
	for _, k := range slices.Sorted(maps.Keys(d.entries)) {
		n := d.entries[k]
		out = append(out, DirEntry{Name: k, Dir: n.dir, Regular: !n.dir, Size: int64(len(n.data))})
	}
	return out, nil
}

// SyncDir implements FS.
func (m *MemFS) SyncDir(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.lookup("fsync", name)
	if err != nil {
		return err
	}
	if !d.dir {
		return &fs.PathError{Op: "fsync", Path: name, Err: fmt.Errorf("not a directory")}
	}
	d.durable = maps.Clone(d.entries)
	return nil
}

// SyncAll implements FS: everything reachable becomes durable.
func (m *MemFS) SyncAll(string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var walk func(n *memNode)
	walk = func(n *memNode) {
		if !n.dir {
			n.synced = bytes.Clone(n.data)
			return
		}
		n.durable = maps.Clone(n.entries)
		for _, c := range n.entries {
			walk(c)
		}
	}
	walk(m.root)
	return nil
}

// Lock implements FS. Locks are per MemFS, released by Crash.
func (m *MemFS) Lock(name, holder string) (io.Closer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := path.Clean("/" + name)
	if m.locks[p] {
		return nil, &LockedError{Path: name}
	}
	m.locks[p] = true
	return &memLock{m: m, p: p, locks: m.locks}, nil
}

type memLock struct {
	m     *MemFS
	p     string
	locks map[string]bool // the map it was taken in; Crash makes a new one
	once  sync.Once
}

func (l *memLock) Close() error {
	l.once.Do(func() {
		l.m.mu.Lock()
		delete(l.locks, l.p)
		l.m.mu.Unlock()
	})
	return nil
}

// Crash simulates a power loss: every directory goes back to its durable
// entries and every file to its synced contents. Files and handles opened
// before keep working on the old state, invisible from now on, like a
// process that died; locks are released.
//
// With a nil rng the outcome is the strictest one. With an rng, the crash
// also keeps some of what was not synced, as real disks do: each unsynced
// directory change (a created or removed entry) is kept or lost at random,
// and a file that grew past its synced contents keeps a random part of its
// unsynced tail, sometimes with a garbled byte in it (a torn write). The
// outcome depends only on the FS's history and the rng's state.
func (m *MemFS) Crash(rng *rand.Rand) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.root = crashDir(m.root, rng, false)
	m.locks = map[string]bool{}
}

// CrashTorn simulates a power loss that tears unsynced tails, decided by
// seed alone (the same history and seed give the same outcome). Directories
// change as with Crash(rng). Every file keeps its synced contents; a file
// that grew past them ends in what TornTail makes of its unsynced tail:
// dropped, kept in part, or cut at a random length and filled, after a
// random prefix of the real bytes, with zeros (the size reached the disk,
// the data did not) or random garbage (stale blocks). A file whose
// unsynced change was not an append (an overwrite or a truncation) goes
// back to its synced contents.
func (m *MemFS) CrashTorn(seed uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.root = crashDir(m.root, rand.New(rand.NewPCG(seed, 0x746f726e)), true)
	m.locks = map[string]bool{}
}

// Outcomes of TornTail, in the order it draws them.
const (
	TailDropped = iota // nothing of the tail survives
	TailPartial        // a prefix of the real bytes survives
	TailZeros          // a real prefix, then zeros, up to a random length
	TailGarbage        // a real prefix, then random bytes, up to a random length
	numTailOutcomes
)

// TornTail returns what a power loss leaves of tail, the unsynced bytes
// appended to a file, and which outcome (TailDropped, ...) it drew. The
// result is never longer than tail; it may share no memory with it.
func TornTail(rng *rand.Rand, tail []byte) ([]byte, int) {
	if len(tail) == 0 {
		return nil, TailDropped
	}
	outcome := rng.IntN(numTailOutcomes)
	switch outcome {
	case TailDropped:
		return nil, outcome
	case TailPartial:
		return bytes.Clone(tail[:rng.IntN(len(tail)+1)]), outcome
	}
	n := 1 + rng.IntN(len(tail))
	good := rng.IntN(n) // at least one byte is made up
	out := make([]byte, n)
	copy(out, tail[:good])
	if outcome == TailGarbage {
		for i := good; i < n; i++ {
			out[i] = byte(rng.Uint32())
		}
	}
	return out, outcome
}

func crashDir(d *memNode, rng *rand.Rand, torn bool) *memNode {
	kept := maps.Clone(d.durable)
	if rng != nil {
		// Sorted, so the outcome depends on the rng alone.
		for _, k := range slices.Sorted(maps.Keys(d.entries)) {
			if n := d.entries[k]; kept[k] != n && rng.IntN(2) == 0 {
				kept[k] = n // a created (or replaced) entry that made it
			}
		}
		for _, k := range slices.Sorted(maps.Keys(d.durable)) {
			if d.entries[k] == nil && rng.IntN(2) == 0 {
				delete(kept, k) // a removal that made it
			}
		}
	}
	out := newDirNode()
	for _, k := range slices.Sorted(maps.Keys(kept)) {
		n := kept[k]
		if n.dir {
			out.entries[k] = crashDir(n, rng, torn)
		} else {
			out.entries[k] = crashFile(n, rng, torn)
		}
	}
	out.durable = maps.Clone(out.entries)
	return out
}

func crashFile(f *memNode, rng *rand.Rand, torn bool) *memNode {
	data := bytes.Clone(f.synced)
	if data == nil {
		data = []byte{}
	}
	if rng != nil && len(f.data) > len(f.synced) && bytes.HasPrefix(f.data, f.synced) {
		tail := f.data[len(f.synced):]
		if torn {
			kept, _ := TornTail(rng, tail)
			data = append(data, kept...)
		} else {
			extra := tail[:rng.IntN(len(tail)+1)]
			data = append(data, extra...)
			if len(extra) > 0 && rng.IntN(4) == 0 {
				data[len(f.synced)+rng.IntN(len(extra))] ^= 0xff
			}
		}
	}
	return &memNode{data: data, synced: bytes.Clone(data)}
}

type memFile struct {
	fs   *MemFS
	n    *memNode
	name string
}

func (f *memFile) Name() string { return f.name }
func (f *memFile) Close() error { return nil }

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if off < 0 {
		return 0, &fs.PathError{Op: "read", Path: f.name, Err: fs.ErrInvalid}
	}
	if off >= int64(len(f.n.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.n.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if off < 0 {
		return 0, &fs.PathError{Op: "write", Path: f.name, Err: fs.ErrInvalid}
	}
	if end := off + int64(len(p)); end > int64(len(f.n.data)) {
		f.n.data = append(f.n.data, make([]byte, end-int64(len(f.n.data)))...)
	}
	copy(f.n.data[off:], p)
	return len(p), nil
}

func (f *memFile) Truncate(size int64) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if size < 0 {
		return &fs.PathError{Op: "truncate", Path: f.name, Err: fs.ErrInvalid}
	}
	if size <= int64(len(f.n.data)) {
		f.n.data = f.n.data[:size:size] // later growth must not reuse the cut bytes
	} else {
		f.n.data = append(f.n.data, make([]byte, size-int64(len(f.n.data)))...)
	}
	return nil
}

func (f *memFile) Datasync() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	f.n.synced = bytes.Clone(f.n.data)
	return nil
}

func (f *memFile) Size() (int64, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	return int64(len(f.n.data)), nil
}
