package torus

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by a Torus package that falls into one
// of these classes wraps the sentinel, so callers branch with errors.Is and
// never on message text. The message of the sentinel is the class; the
// wrapping error adds the detail (which volume, which peer, which holder).
var (
	// ErrNotExist: the named volume, snapshot, segment or peer does not exist.
	ErrNotExist = errors.New("torus: does not exist")
	// ErrExist: the thing being created exists already.
	ErrExist = errors.New("torus: already exists")
	// ErrInvalid: bad input (a name, a size, a flag). Retrying will not help.
	ErrInvalid = errors.New("torus: invalid argument")
	// ErrOutOfRange: I/O outside the volume.
	ErrOutOfRange = errors.New("torus: out of range")
	// ErrLocked: the volume has a writer already. Wrapped by *LockedError,
	// which names the holder.
	ErrLocked = errors.New("torus: volume is locked")
	// ErrFenced: the caller's writer epoch is no longer current; a newer
	// writer has taken the volume. The caller must stop writing.
	ErrFenced = errors.New("torus: writer is fenced")
	// ErrNoSpace: a store is full (its --size, or its filesystem).
	ErrNoSpace = errors.New("torus: no space left")
	// ErrCorrupt: stored data failed its checksum or does not decode.
	ErrCorrupt = errors.New("torus: data is corrupt")
	// ErrUnavailable: too few replicas or peers are reachable to meet the
	// volume's policy. Transient: it may succeed later.
	ErrUnavailable = errors.New("torus: unavailable")
	// ErrReadOnly: a write to a read-only volume, snapshot or attach.
	ErrReadOnly = errors.New("torus: read-only")
	// ErrClosed: the object was closed.
	ErrClosed = errors.New("torus: closed")
	// ErrConflict: a compare-and-swap lost (a ring version, an append offset).
	ErrConflict = errors.New("torus: conflict")
	// ErrNotInitialized: the cluster has not been initialized (torusctl init).
	ErrNotInitialized = errors.New("torus: cluster not initialized")
	// ErrInUse: the volume is open and cannot be deleted. Wrapped by
	// *LockedError naming the holder.
	ErrInUse = errors.New("torus: volume is in use")
	// ErrPermission: the caller's identity (its TLS certificate's role)
	// does not allow the request, or the caller has no identity where one
	// is required (a plain connection to a daemon that requires TLS).
	// Retrying with the same identity will not help.
	ErrPermission = errors.New("torus: permission denied")
)

// LockedError reports who holds a volume. It matches ErrLocked (or ErrInUse
// when Op is "delete") through errors.Is.
type LockedError struct {
	Volume string
	Holder string // owner string of the current writer
	Epoch  uint64
	InUse  bool // true: reported as ErrInUse (delete of an open volume)
}

func (e *LockedError) Error() string {
	if e.InUse {
		return fmt.Sprintf("torus: volume %q is in use by %s (epoch %d)", e.Volume, e.Holder, e.Epoch)
	}
	return fmt.Sprintf("torus: volume %q is locked by %s (epoch %d)", e.Volume, e.Holder, e.Epoch)
}

// Is makes errors.Is(err, ErrLocked) / errors.Is(err, ErrInUse) hold.
func (e *LockedError) Is(target error) bool {
	if e.InUse {
		return target == ErrInUse
	}
	return target == ErrLocked
}

// errorKinds name the sentinels for ErrorKind, in the order it tries them:
// an error wrapping several classes is named by the first.
var errorKinds = []struct {
	err  error
	name string
}{
	{ErrUnavailable, "unavailable"},
	{ErrFenced, "fenced"},
	{ErrCorrupt, "corrupt"},
	{ErrNoSpace, "no-space"},
	{ErrOutOfRange, "out-of-range"},
	{ErrNotExist, "not-exist"},
	{ErrExist, "exist"},
	{ErrInvalid, "invalid"},
	{ErrLocked, "locked"},
	{ErrInUse, "in-use"},
	{ErrReadOnly, "read-only"},
	{ErrClosed, "closed"},
	{ErrConflict, "conflict"},
	{ErrNotInitialized, "not-initialized"},
	{ErrPermission, "permission"},
}

// ErrorKind names the class of err for metric labels: the sentinel it
// wraps, as a short word ("unavailable", "fenced", "not-exist", ...), or
// "other"; "" for nil. A fixed set of values, so labels stay bounded.
func ErrorKind(err error) string {
	if err == nil {
		return ""
	}
	for _, k := range errorKinds {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return "other"
}

// IsTransient reports whether err is worth retrying later: the cluster may
// heal, a peer may come back, a lease may expire.
func IsTransient(err error) bool {
	return errors.Is(err, ErrUnavailable)
}
