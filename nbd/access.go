package nbd

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"fmt"
	"os"
	"path"
	"strings"
	"sync/atomic"

	"github.com/torus-storage/torus"
)

// Access is what a client may do with one export.
type Access int

// Access levels, ordered: a higher one includes the lower.
const (
	AccessNone      Access = iota // not listed, not attached
	AccessReadOnly                // listed; attached read-only: writes fail with EPERM
	AccessReadWrite               // listed; attached as the server serves it
)

func (a Access) String() string {
	switch a {
	case AccessReadOnly:
		return "ro"
	case AccessReadWrite:
		return "rw"
	}
	return "none"
}

// Authorizer decides, per client certificate, which exports a client may
// see (NBD_OPT_LIST, NBD_OPT_INFO) and attach (NBD_OPT_GO,
// NBD_OPT_EXPORT_NAME), and whether read-write. cert is the verified leaf
// certificate of the client, nil when it presented none (no TLS). It must
// be safe for concurrent use.
type Authorizer interface {
	Authorize(cert *x509.Certificate, export string) Access
}

// ExportList is an Authorizer read from an export list file: per
// certificate name, which exports (names or path.Match globs) and how.
//
// One grant per line, '#' starts a comment:
//
//	# NAME            ACCESS  EXPORT...
//	blk               rw      vm-* db
//	backup            ro      *
//	spiffe://x/y      ro      db@*
//
// NAME matches a certificate's subject common name or any of its URI SANs,
// exactly; ACCESS is rw or ro; each EXPORT is a volume or snapshot name
// ("vol@snap") or a glob over such names ('*' does not stop at '@'). A
// client gets the highest access of every line naming it whose patterns
// match; a client named by no line, or without a certificate, gets none.
type ExportList struct {
	grants []grant
}

type grant struct {
	name     string
	access   Access
	patterns []string
}

// ParseExportList parses an export list. Errors wrap torus.ErrInvalid
// and name the line.
func ParseExportList(data []byte) (*ExportList, error) {
	l := &ExportList{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 3 {
			return nil, fmt.Errorf("%w: export list line %d: want NAME rw|ro EXPORT...", torus.ErrInvalid, n)
		}
		g := grant{name: f[0]}
		switch f[1] {
		case "rw":
			g.access = AccessReadWrite
		case "ro":
			g.access = AccessReadOnly
		default:
			return nil, fmt.Errorf("%w: export list line %d: access %q: want rw or ro", torus.ErrInvalid, n, f[1])
		}
		for _, p := range f[2:] {
			if _, err := path.Match(p, ""); err != nil {
				return nil, fmt.Errorf("%w: export list line %d: pattern %q: %v", torus.ErrInvalid, n, p, err)
			}
			g.patterns = append(g.patterns, p)
		}
		l.grants = append(l.grants, g)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: export list: %v", torus.ErrInvalid, err)
	}
	return l, nil
}

// Names returns the names a certificate is known by: its common name and
// its URI SANs.
func Names(cert *x509.Certificate) []string {
	if cert == nil {
		return nil
	}
	var out []string
	if cert.Subject.CommonName != "" {
		out = append(out, cert.Subject.CommonName)
	}
	for _, u := range cert.URIs {
		out = append(out, u.String())
	}
	return out
}

// Authorize implements Authorizer.
func (l *ExportList) Authorize(cert *x509.Certificate, export string) Access {
	best := AccessNone
	names := Names(cert)
	for _, g := range l.grants {
		if g.access <= best || !contains(names, g.name) {
			continue
		}
		for _, p := range g.patterns {
			// '*' in path.Match stops at '/', which export names never hold.
			if ok, _ := path.Match(p, export); ok {
				best = g.access
				break
			}
		}
	}
	return best
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// ExportListFile is an Authorizer backed by an export list file: it
// serves the list read last, and Reload reads the file again. A file that
// fails to read or parse on Reload leaves the previous list in force. Safe
// for concurrent use. torusblk nbdserve --nbd-exports and torusd --dev
// --secure use it.
type ExportListFile struct {
	path string
	cur  atomic.Pointer[ExportList]
}

// LoadExportListFile reads and parses the export list at path. Errors wrap
// torus.ErrInvalid (a line that does not parse) or the read error.
func LoadExportListFile(path string) (*ExportListFile, error) {
	f := &ExportListFile{path: path}
	if err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Path is the file's path.
func (f *ExportListFile) Path() string { return f.path }

// Reload reads the file again; on error the previous list stays.
func (f *ExportListFile) Reload() error {
	b, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("export list: %w", err)
	}
	list, err := ParseExportList(b)
	if err != nil {
		return fmt.Errorf("export list %s: %w", f.path, err)
	}
	f.cur.Store(list)
	return nil
}

// Authorize implements Authorizer with the current list.
func (f *ExportListFile) Authorize(cert *x509.Certificate, export string) Access {
	return f.cur.Load().Authorize(cert, export)
}
