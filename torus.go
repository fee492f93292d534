// Package torus holds the core types, contracts and errors of Torus, a
// distributed block store. It has no I/O of its own: the implementations live
// in subpackages (ring, storage, metadata, peer, volume, nbd, server) and are
// wired together in cmd/.
//
// The data model is log-structured; see docs/design/data-path.md. A volume's
// writes are appended to immutable segments replicated on several daemons;
// etcd holds the volume head, the small authoritative pointer to the
// volume's state, moved by compare-and-swap under a fencing epoch.
package torus

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// BlockSize is the granularity of the volume index and of per-block
// checksums. I/O of any alignment is accepted; unaligned edges are
// read-modify-written.
const BlockSize = 4096

// SegmentKind distinguishes the contents of a segment.
type SegmentKind uint8

const (
	// KindData segments hold write records (docs/design/data-path.md).
	KindData SegmentKind = 0
	// KindCheckpoint segments hold one serialized index checkpoint.
	KindCheckpoint SegmentKind = 1
)

// SegmentID names one append-only segment. A segment is written only by the
// writer of Epoch; Seq grows within a volume across epochs.
type SegmentID struct {
	Volume uint64
	Epoch  uint64
	Seq    uint64
	Kind   SegmentKind
}

// String is the canonical text form, also used as the file name on disk:
// v<volume>-e<epoch>-s<seq>-k<kind>, numbers in decimal.
func (s SegmentID) String() string {
	return fmt.Sprintf("v%d-e%d-s%d-k%d", s.Volume, s.Epoch, s.Seq, s.Kind)
}

// ParseSegmentID parses the String form.
func ParseSegmentID(str string) (SegmentID, error) {
	var s SegmentID
	var k uint8
	n, err := fmt.Sscanf(str, "v%d-e%d-s%d-k%d", &s.Volume, &s.Epoch, &s.Seq, &k)
	if err != nil || n != 4 {
		return SegmentID{}, fmt.Errorf("%w: segment id %q", ErrInvalid, str)
	}
	s.Kind = SegmentKind(k)
	if s.String() != str {
		return SegmentID{}, fmt.Errorf("%w: segment id %q is not canonical", ErrInvalid, str)
	}
	return s, nil
}

// Key is the byte string hashed onto the ring to place the segment.
func (s SegmentID) Key() []byte { return []byte(s.String()) }

// SegmentInfo describes a segment held by one store.
type SegmentInfo struct {
	ID     SegmentID
	Length int64 // bytes appended
	Synced int64 // bytes known to be on stable storage
}

// SegmentRef is a sealed segment with the length that counts. Bytes past
// Length (a fenced writer's late appends) are ignored by everyone.
type SegmentRef struct {
	ID     SegmentID
	Length int64
}

// Usage is a store's space accounting.
type Usage struct {
	Used     int64
	Capacity int64
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidName checks a volume or snapshot name: [a-z0-9][a-z0-9._-]{0,62}.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: name %q must match [a-z0-9][a-z0-9._-]{0,62}", ErrInvalid, name)
	}
	return nil
}

// VolumeInfo is a volume's metadata record.
type VolumeInfo struct {
	Name    string    `json:"name"`
	ID      uint64    `json:"id"`
	Size    int64     `json:"size"` // bytes, a multiple of BlockSize
	Created time.Time `json:"created"`
	// MinReplicas is the write policy: FLUSH succeeds only when the data
	// is fsynced on at least this many replicas. 0 means the cluster's
	// replication factor.
	MinReplicas int `json:"min_replicas,omitempty"`
	// Replication is the number of copies of each of the volume's new
	// segments; 0 means the cluster's (the ring's) replication factor.
	// When both are set, MinReplicas <= Replication. Healing keeps
	// Replication copies of every segment the volume names (the largest
	// Replication of the volumes naming a shared segment).
	Replication int `json:"replication,omitempty"`
	// Parent is set on a clone: the volume and snapshot its first head
	// was copied from (informational; the parent and its snapshot may be
	// deleted since). nil for a volume created empty.
	Parent *VolumeParent `json:"parent,omitempty"`
	// Shares lists the IDs of the other volumes whose segments this
	// volume's head and checkpoints may name: a clone's parent and the
	// parent's Shares. Those segments are shared, not copied; GC keeps a
	// segment while any volume names it. Set by CloneVolume, never
	// changed.
	Shares []uint64 `json:"shares,omitempty"`
	// Labels are key/value pairs kept with the volume (ValidLabels): the
	// CSI driver keeps a volume's CSI name and parameters here. Set at
	// CreateVolume, changed with Metadata.SetVolumeLabels; UpdateVolume
	// leaves them as they are. nil when there are none.
	Labels map[string]string `json:"labels,omitempty"`
}

// VolumeParent names what a clone was made from.
type VolumeParent struct {
	Volume   string `json:"volume"`
	ID       uint64 `json:"id"`
	Snapshot string `json:"snapshot"`
}

// Replicas is the volume's replication factor given the cluster's:
// Replication, or cluster when it is 0.
func (v VolumeInfo) Replicas(cluster int) int {
	if v.Replication > 0 {
		return v.Replication
	}
	return cluster
}

// SharesVolume reports whether the volume's data may name segments of
// volume id: its own ID or one of Shares.
func (v VolumeInfo) SharesVolume(id uint64) bool {
	return id == v.ID || slices.Contains(v.Shares, id)
}

// Bounds on VolumeInfo.Labels.
const (
	MaxLabels         = 64       // labels per volume
	MaxLabelValueLen  = 1024     // bytes per value
	MaxLabelsSize     = 16 << 10 // bytes of all keys and values together
	maxLabelPrefixLen = 253      // a DNS subdomain
	maxLabelNameLen   = 63
)

var (
	labelNameRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$`)
	labelPrefixRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)
)

// ValidLabelKey checks a label key as Kubernetes checks one: an optional
// prefix, a DNS subdomain of at most 253 characters followed by "/", then a
// name of 1..63 characters of [A-Za-z0-9._-] that starts and ends with a
// letter or digit. Examples: "team", "app.kubernetes.io/name",
// "csi.torus.io/name".
func ValidLabelKey(key string) error {
	prefix, name, hasPrefix := strings.Cut(key, "/")
	if !hasPrefix {
		prefix, name = "", key
	}
	switch {
	case hasPrefix && (prefix == "" || len(prefix) > maxLabelPrefixLen || !labelPrefixRE.MatchString(prefix)):
		return fmt.Errorf("%w: label key %q: prefix must be a DNS subdomain (lowercase, at most %d characters)",
			ErrInvalid, key, maxLabelPrefixLen)
	case len(name) == 0 || len(name) > maxLabelNameLen || !labelNameRE.MatchString(name):
		return fmt.Errorf("%w: label key %q: name must be 1..%d characters of [A-Za-z0-9._-], starting and ending with a letter or digit",
			ErrInvalid, key, maxLabelNameLen)
	}
	return nil
}

// ValidLabelValue checks a label value: valid UTF-8 without control
// characters, at most MaxLabelValueLen bytes, possibly empty. Values are
// freer than Kubernetes label values (63 characters of [A-Za-z0-9._-]),
// because they must hold a CSI name (up to 128 characters, any case) and
// parameter values.
func ValidLabelValue(value string) error {
	if len(value) > MaxLabelValueLen {
		return fmt.Errorf("%w: label value of %d bytes exceeds %d", ErrInvalid, len(value), MaxLabelValueLen)
	}
	if !utf8.ValidString(value) {
		return fmt.Errorf("%w: label value %q is not valid UTF-8", ErrInvalid, value)
	}
	if strings.IndexFunc(value, unicode.IsControl) >= 0 {
		return fmt.Errorf("%w: label value %q contains a control character", ErrInvalid, value)
	}
	return nil
}

// ValidLabels checks a volume's labels: every key (ValidLabelKey) and value
// (ValidLabelValue), at most MaxLabels of them and MaxLabelsSize bytes of
// keys and values in all. The error names the first bad key in sorted
// order.
func ValidLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%w: %d labels exceed the limit of %d", ErrInvalid, len(labels), MaxLabels)
	}
	keys := make([]string, 0, len(labels))
	size := 0
	for k, v := range labels {
		keys = append(keys, k)
		size += len(k) + len(v)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := ValidLabelKey(k); err != nil {
			return err
		}
		if err := ValidLabelValue(labels[k]); err != nil {
			return fmt.Errorf("label %q: %w", k, err)
		}
	}
	if size > MaxLabelsSize {
		return fmt.Errorf("%w: labels take %d bytes, more than %d", ErrInvalid, size, MaxLabelsSize)
	}
	return nil
}

// WriterInfo names the current writer of a volume.
type WriterInfo struct {
	Owner string    `json:"owner"` // e.g. "torusblk@host:10809 pid 123"
	Epoch uint64    `json:"epoch"`
	Since time.Time `json:"since"`
	// Identity is the common name of the peer client certificate the
	// writer talks to the daemons with ("" on a plain cluster). A daemon
	// that requires TLS accepts a client's appends, syncs and fences at an
	// epoch only from the identity that locked it (docs/security.md).
	Identity string `json:"identity,omitempty"`
}

// Head is the authoritative pointer to a volume's state, stored in etcd and
// moved by compare-and-swap by the writer of Epoch.
//
// The volume's contents are: the index in Checkpoint (if any), then the
// records of Sealed in order, each up to its Length, then the valid prefix of
// Open (if any). See docs/design/data-path.md.
type Head struct {
	Epoch      uint64       `json:"epoch"`
	Checkpoint *SegmentRef  `json:"checkpoint,omitempty"`
	Sealed     []SegmentRef `json:"sealed,omitempty"`
	Open       *SegmentID   `json:"open,omitempty"`
	// OpenReplicas are the peers the writer placed Open on. Recovery
	// consults exactly these (a peer force-removed from the ring since is
	// still counted), falling back to the ring order when it is empty
	// (heads written before it existed).
	OpenReplicas []string `json:"open_replicas,omitempty"`
	NextSeq      uint64   `json:"next_seq"`
	// Checkpointing names the checkpoint segment the writer is writing in
	// the background (volume/ writes a checkpoint off its appender): live
	// for the GC while written, not yet read by anyone. Absent in heads
	// written before background checkpoints, and in snapshots.
	Checkpointing *SegmentID `json:"checkpointing,omitempty"`
}

// Clone returns a deep copy of h.
func (h Head) Clone() Head {
	c := h
	c.Sealed = append([]SegmentRef(nil), h.Sealed...)
	c.OpenReplicas = append([]string(nil), h.OpenReplicas...)
	if h.Checkpoint != nil {
		ck := *h.Checkpoint
		c.Checkpoint = &ck
	}
	if h.Open != nil {
		o := *h.Open
		c.Open = &o
	}
	if h.Checkpointing != nil {
		p := *h.Checkpointing
		c.Checkpointing = &p
	}
	return c
}

// Snapshot is a named, frozen head. Its Head has no Open segment.
type Snapshot struct {
	Volume  string    `json:"volume"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	Head    Head      `json:"head"`
}

// ClusterConfig holds the cluster-wide settings written by `torusctl init`.
type ClusterConfig struct {
	Replication     int   `json:"replication"`      // copies of each segment; default 2
	SegmentSize     int64 `json:"segment_size"`     // bytes before a segment is sealed; default 32 MiB
	VirtualNodes    int   `json:"virtual_nodes"`    // ring points per peer at average weight; default 128
	CheckpointEvery int   `json:"checkpoint_every"` // sealed segments between index checkpoints; default 8
}

// Defaults for ClusterConfig.
const (
	DefaultReplication     = 2
	DefaultSegmentSize     = 32 << 20
	DefaultVirtualNodes    = 128
	DefaultCheckpointEvery = 8
)

// EnsureDefaults fills zero fields with defaults.
func (c *ClusterConfig) EnsureDefaults() {
	if c.Replication == 0 {
		c.Replication = DefaultReplication
	}
	if c.SegmentSize == 0 {
		c.SegmentSize = DefaultSegmentSize
	}
	if c.VirtualNodes == 0 {
		c.VirtualNodes = DefaultVirtualNodes
	}
	if c.CheckpointEvery == 0 {
		c.CheckpointEvery = DefaultCheckpointEvery
	}
}

// Validate checks the settings.
func (c ClusterConfig) Validate() error {
	switch {
	case c.Replication < 1 || c.Replication > 16:
		return fmt.Errorf("%w: replication %d must be 1..16", ErrInvalid, c.Replication)
	case c.SegmentSize < 1<<20 || c.SegmentSize > 1<<30 || c.SegmentSize%BlockSize != 0:
		return fmt.Errorf("%w: segment size %d must be a multiple of 4096 in 1MiB..1GiB", ErrInvalid, c.SegmentSize)
	case c.VirtualNodes < 1 || c.VirtualNodes > 4096:
		return fmt.Errorf("%w: virtual nodes %d must be 1..4096", ErrInvalid, c.VirtualNodes)
	case c.CheckpointEvery < 1 || c.CheckpointEvery > 1024:
		return fmt.Errorf("%w: checkpoint interval %d must be 1..1024", ErrInvalid, c.CheckpointEvery)
	}
	return nil
}

// PeerState is a peer's membership state as shown by `torusctl peer list`.
type PeerState string

const (
	PeerUp       PeerState = "up"       // a ring member whose liveness key is present
	PeerDown     PeerState = "down"     // a ring member whose liveness key expired
	PeerDraining PeerState = "draining" // being removed gracefully; data moves off
	PeerRemoved  PeerState = "removed"  // no longer in the ring
	PeerNew      PeerState = "new"      // registered, not yet in the ring
)

// PeerInfo describes one storage daemon.
type PeerInfo struct {
	ID      string `json:"id"`      // stable; generated at first start, kept in the data dir
	Address string `json:"address"` // host:port of the peer protocol
	HTTP    string `json:"http,omitempty"`
	// Zone, Rack and Host are the daemon's failure-domain path (torusd
	// --location); see Location.
	Zone     string    `json:"zone,omitempty"`
	Rack     string    `json:"rack,omitempty"`
	Host     string    `json:"host,omitempty"`
	Capacity int64     `json:"capacity"`
	Used     int64     `json:"used"`
	State    PeerState `json:"state"`
	// Alive: the peer's liveness key exists (its session is live). State
	// says so for a member; a draining peer's State hides it.
	Alive    bool      `json:"alive,omitempty"`
	LastSeen time.Time `json:"last_seen"`
	// Rebalance progress reported by the daemon: bytes still to move.
	Pending int64 `json:"pending,omitempty"`
	// Unrepairable: the daemon's last reported scrub findings (Beat).
	Unrepairable map[uint64][]uint64 `json:"unrepairable,omitempty"`
	// AutoJoin: the daemon runs with --auto-join and asks to be added to
	// the ring; stored in its record. An auto-joining daemon that writes
	// the ring adds every such peer that is alive and new in the same
	// version (Metadata.JoinRing; docs/design/cluster.md, "Joining").
	AutoJoin bool `json:"auto_join,omitempty"`
}

// Beat is what a daemon reports at every heartbeat.
type Beat struct {
	Used    int64 // bytes stored
	Pending int64 // bytes rebalancing still has to copy
	// Unrepairable lists, by volume ID, volume blocks this daemon's
	// background scrub found in copies it could not replace (no holder
	// had a good copy), at most MaxBeatBlocks per volume.
	Unrepairable map[uint64][]uint64
}

// MaxBeatBlocks bounds the blocks a Beat names per volume.
const MaxBeatBlocks = 1024

// Location returns the peer's failure-domain path.
func (p PeerInfo) Location() Location { return Location{Zone: p.Zone, Rack: p.Rack, Host: p.Host} }

// RingMember is one peer's place in the ring. Zone, Rack and Host are the
// peer's failure-domain path as it was when the member was added (or last
// refreshed by `torusctl ring set-rule`); rings of format
// RingFormatZones use only Zone.
type RingMember struct {
	ID     string `json:"id"`
	Zone   string `json:"zone,omitempty"`
	Rack   string `json:"rack,omitempty"`
	Host   string `json:"host,omitempty"`
	Weight int64  `json:"weight"` // usually the peer's capacity in bytes
}

// MaxJoinBatch bounds the peers one Metadata.JoinRing adds (etcd checks
// each one's record in the transaction and refuses more than 128
// comparisons).
const MaxJoinBatch = 100

// NewRingMember returns the member for peer id at loc with weight.
func NewRingMember(id string, loc Location, weight int64) RingMember {
	return RingMember{ID: id, Zone: loc.Zone, Rack: loc.Rack, Host: loc.Host, Weight: weight}
}

// Location returns the member's failure-domain path.
func (m RingMember) Location() Location { return Location{Zone: m.Zone, Rack: m.Rack, Host: m.Host} }

// Ring formats: how package ring turns a RingSpec into a placement. The
// format is part of the storage format (every segment is found through it);
// a stored ring names its format so that old rings stay readable.
const (
	// RingFormatZones (stored as 0 or 1: rings written before formats
	// existed have none) is the Ketama ring with one level of failure
	// domain, the zone. Rack and Host are ignored; every member is its
	// own host. FailureDomain must be empty.
	RingFormatZones = 1
	// RingFormatHierarchy is the Ketama ring (same hashes, same points)
	// with the failure-domain hierarchy zone > rack > host and a rule
	// (FailureDomain). See docs/design/placement.md.
	RingFormatHierarchy = 2
	// RingFormatCurrent is the format new rings get.
	RingFormatCurrent = RingFormatHierarchy
)

// RingSpec is the stored description of a ring. The placement it implies is
// computed by package ring; a new spec must have Version = old Version + 1.
type RingSpec struct {
	Version      uint64       `json:"version"`
	Replication  int          `json:"replication"`
	VirtualNodes int          `json:"virtual_nodes"`
	Members      []RingMember `json:"members"`
	// Format is one of the RingFormat constants; 0 means RingFormatZones.
	Format int `json:"format,omitempty"`
	// FailureDomain is the placement rule of a RingFormatHierarchy ring:
	// the level (DomainZone, DomainRack, DomainHost) at which the replicas
	// of a segment must be in distinct domains. "" means DomainHost.
	FailureDomain string `json:"failure_domain,omitempty"`
	// Pins pins the segments of a volume (by decimal volume ID) to peers,
	// in preference order: they are its desired holders while they are
	// usable (see ring.Pinned). Empty for most clusters.
	Pins map[string][]string `json:"pins,omitempty"`
	// Rules gives a volume (by decimal volume ID) its own placement rule,
	// a failure-domain level that replaces FailureDomain for its segments
	// (RingFormatHierarchy only). The walk is the same for every rule, so
	// a rule moves no data: it says which domains healing keeps apart and
	// what Placement.Health holds the topology to. Empty for most
	// clusters.
	Rules map[string]string `json:"rules,omitempty"`
}

// Failure-domain levels, from the largest. A Location names a path
// through them; a placement rule names one of them.
const (
	DomainZone = "zone"
	DomainRack = "rack"
	DomainHost = "host"
)

// DomainLevels lists the failure-domain levels from the largest.
var DomainLevels = []string{DomainZone, DomainRack, DomainHost}

// Location is a daemon's failure-domain path: zone > rack > host. Any level
// may be empty. Its text form is "zone=z1,rack=r3,host=h7" (levels in any
// order, empty ones left out).
type Location struct {
	Zone, Rack, Host string
}

// ParseLocation parses "zone=z1,rack=r3,host=h7". Levels may come in any
// order, each at most once; "" is the empty location. It fails with an
// error wrapping ErrInvalid for an unknown level, a repeated level, a
// missing "=", or a value that Location.Validate rejects.
func ParseLocation(s string) (Location, error) {
	var l Location
	if strings.TrimSpace(s) == "" {
		return l, nil
	}
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return Location{}, fmt.Errorf("%w: location %q: %q is not level=value", ErrInvalid, s, part)
		}
		if seen[k] {
			return Location{}, fmt.Errorf("%w: location %q: level %q given twice", ErrInvalid, s, k)
		}
		seen[k] = true
		switch k {
		case DomainZone:
			l.Zone = v
		case DomainRack:
			l.Rack = v
		case DomainHost:
			l.Host = v
		default:
			return Location{}, fmt.Errorf("%w: location %q: unknown level %q (known: zone, rack, host)", ErrInvalid, s, k)
		}
	}
	if err := l.Validate(); err != nil {
		return Location{}, err
	}
	return l, nil
}

// locationValue is a label value: at most 63 characters, alphanumerics at
// both ends, '-', '_' and '.' between.
var locationValue = regexp.MustCompile(`^([A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?)?$`)

// Validate checks that every level's value is a label value: empty, or at
// most 63 characters of [A-Za-z0-9-_.] beginning and ending with an
// alphanumeric. It fails with an error wrapping ErrInvalid.
func (l Location) Validate() error {
	for i, v := range []string{l.Zone, l.Rack, l.Host} {
		if !locationValue.MatchString(v) {
			return fmt.Errorf("%w: location %s=%q: want at most 63 of A-Z a-z 0-9 - _ . beginning and ending with a letter or digit",
				ErrInvalid, DomainLevels[i], v)
		}
	}
	return nil
}

// String is the text form ParseLocation reads, levels from the largest.
func (l Location) String() string {
	var parts []string
	for i, v := range []string{l.Zone, l.Rack, l.Host} {
		if v != "" {
			parts = append(parts, DomainLevels[i]+"="+v)
		}
	}
	return strings.Join(parts, ",")
}

// ValidFailureDomain reports whether d names a placement rule level
// ("" is DomainHost).
func ValidFailureDomain(d string) bool {
	return d == "" || d == DomainZone || d == DomainRack || d == DomainHost
}

// Placement maps segment keys (SegmentID.Key) to the peers that should hold
// them. Package ring implements it: the Ketama ring (ring.New) and a manual
// map pinning volumes to peers (ring.Pinned); ring.Build picks from a
// RingSpec. The planner (package rebalance), the writer and the readers use
// only this interface. Implementations are immutable and safe for
// concurrent use; they do no I/O.
type Placement interface {
	// Version is the RingSpec version the placement was built from.
	Version() uint64
	// Replication is the number of copies of each segment.
	Replication() int
	// Lookup returns up to n distinct peer IDs for key in preference
	// order, leaving out those for which skip(id) is true (skip may be
	// nil, must answer the same for an id during one call, and is called
	// at most once per peer). Lookup(key, n, skip) is a prefix of
	// Lookup(key, m, skip) for n <= m; the result has min(n, usable
	// peers) entries, nil when n < 1.
	Lookup(key []byte, n int, skip func(id string) bool) []string
	// Order returns every peer in preference order for key: Lookup with n
	// = all peers and no skip. Readers walk it when the first candidates
	// lack a segment.
	Order(key []byte) []string
	// Exclude returns a view without the peers skip rejects: for every key
	// and n, Exclude(skip).Lookup(key, n, nil) equals Lookup(key, n, skip).
	// Build it once for many lookups with the same skip.
	Exclude(skip func(id string) bool) Placement
	// Desired returns the holders healing aims for: Lookup(key,
	// Replication(), down), except that while the placement's peers (down
	// ones included) span at least Replication failure domains, a replica
	// that would share a domain with an earlier one is left out. So a
	// failure domain that is down (a host rebooting) is not re-replicated
	// into a domain that already holds a copy; only a topology with too
	// few domains fills from the same domain. Build the placement without
	// draining peers (Exclude) so that they count as gone.
	Desired(key []byte, down func(id string) bool) []string
	// Health says whether the placement can meet its rule over the peers
	// skip does not reject (skip may be nil).
	Health(skip func(id string) bool) PlacementHealth
}

// PlacementHealth says whether a placement meets its failure-domain rule.
type PlacementHealth struct {
	// FailureDomain is the rule's level: DomainZone, DomainRack,
	// DomainHost, or "peer" (a RingFormatZones ring: distinct peers).
	FailureDomain string `json:"failure_domain"`
	// Domains is the number of usable domains at that level.
	Domains     int `json:"domains"`
	Replication int `json:"replication"`
	// Degraded: some segments get two replicas in one failure domain
	// (Domains < Replication, or a pinned volume has too few usable
	// pins). Placement still fills every replica, from the same domain.
	Degraded bool `json:"degraded"`
	// Reason says why, for a warning; "" when not degraded.
	Reason string `json:"reason,omitempty"`
}

// Store is a daemon's local segment store. Implementations: storage.Memory
// and storage.Disk; both pass storage/storagetest.
//
// A segment exists once something has been appended to it. Buffers passed
// in are not retained after a call returns.
type Store interface {
	// Append writes p at off. off must equal the segment's length
	// (ErrConflict otherwise, unless [off, off+len(p)) already holds
	// exactly p: a retried append succeeds). ErrNoSpace when the store
	// would exceed its capacity; nothing is written then.
	Append(ctx context.Context, seg SegmentID, off int64, p []byte) error
	// Sync makes everything appended to seg durable and returns the
	// segment's durable length: every byte below it is on stable storage.
	// That length is what the caller may count on, never the length it
	// appended: a store restarted after a power loss holds only what was
	// synced before, so a writer compares the returned length with what it
	// needs. ErrNotExist if seg does not exist.
	Sync(ctx context.Context, seg SegmentID) (int64, error)
	// ReadAt reads len(p) bytes at off. It returns io.EOF with n < len(p)
	// when the segment is shorter, ErrNotExist if it does not exist.
	ReadAt(ctx context.Context, seg SegmentID, p []byte, off int64) (int, error)
	// Stat reports a segment's length. ErrNotExist if it does not exist.
	Stat(ctx context.Context, seg SegmentID) (SegmentInfo, error)
	// List lists the segments of one volume, or of all when volume is 0,
	// in no particular order.
	List(ctx context.Context, volume uint64) ([]SegmentInfo, error)
	// Delete removes a segment. Deleting a missing segment is not an error.
	Delete(ctx context.Context, seg SegmentID) error
	// Usage reports space used and the configured capacity.
	Usage() Usage
	// Close releases resources; further calls return ErrClosed.
	Close() error
}

// RepairEpoch is the epoch passed by healing and rebalancing copies. They
// rewrite bytes that already exist elsewhere, so they are not fenced.
const RepairEpoch = 0

// PeerService is what a storage daemon offers to writers, readers and
// healers, in-process (server.Service) or over TCP (peer.Client).
//
// Append and Sync carry the writer's epoch. A daemon rejects them with
// ErrFenced when epoch is lower than the highest epoch it knows for the
// volume (from Fence calls or from etcd), except for RepairEpoch.
type PeerService interface {
	Append(ctx context.Context, epoch uint64, seg SegmentID, off int64, p []byte) error
	// AppendAsync is Append, started: it returns once the append is on its
	// way (a remote peer: the request is written), and wait returns what
	// Append would; wait must be called exactly once. Appends started one
	// after another by one goroutine are applied in that order, so a writer
	// may keep several appends of one segment in flight. p is not retained
	// once AppendAsync returns. ctx bounds both the start and the wait. An
	// in-process service may do the whole append before it returns.
	AppendAsync(ctx context.Context, epoch uint64, seg SegmentID, off int64, p []byte) (wait func() error)
	// Sync is Store.Sync, fenced: it returns the segment's durable length.
	Sync(ctx context.Context, epoch uint64, seg SegmentID) (int64, error)
	ReadAt(ctx context.Context, seg SegmentID, p []byte, off int64) (int, error)
	Stat(ctx context.Context, seg SegmentID) (SegmentInfo, error)
	List(ctx context.Context, volume uint64) ([]SegmentInfo, error)
	Delete(ctx context.Context, seg SegmentID) error
	// Fence raises the volume's minimum epoch; appends and syncs with a
	// lower epoch fail with ErrFenced from then on. Lowering is a no-op.
	Fence(ctx context.Context, volume, epoch uint64) error
	// Usage reports the daemon's store usage.
	Usage(ctx context.Context) (Usage, error)
}

// ReadRange is one range of a vectored read (VectorReader.ReadV): len(P)
// bytes of Seg at Off. N and Err are its outcome, as ReadAt would return
// them: N bytes of P were filled; Err is nil when N == len(P), io.EOF
// (bare) with N < len(P) when the segment is shorter, ErrNotExist when it
// does not exist, or any other error of the range alone.
type ReadRange struct {
	Seg SegmentID
	Off int64
	P   []byte
	N   int
	Err error
}

// VectorReader is implemented by a PeerService for which reading several
// ranges in one call is cheaper than a call per range: peer.Client sends
// them in one request (one round trip instead of one per range). An
// in-process service (peer.Local) does not implement it: it has no round
// trip to save, and callers read its ranges in parallel. Callers that get
// a PeerService without it read range by range with ReadAt.
//
// ReadV reads every range into its P and sets its N and Err; one range
// failing (missing segment, short, an I/O error) does not fail the others.
// A non-nil error is the call's as a whole (ctx ended, the peer is
// unreachable, ErrInvalid for a range the service cannot carry): then no
// range's N, Err or bytes may be used. The buffers belong to the call until
// it returns and are not retained. Ranges may share a segment and overlap
// in the segment, never in memory.
type VectorReader interface {
	ReadV(ctx context.Context, ranges []ReadRange) error
}

// Extent is a range of a device and whether it holds data.
type Extent struct {
	Offset int64
	Length int64
	Zero   bool // reads as zeros (never written, trimmed or zeroed)
}

// Device is a block device: what the NBD server serves. *volume.Volume
// implements it; so does an in-memory device for tests.
//
// All methods are safe for concurrent use. Offsets and lengths are in bytes
// and need no alignment. I/O that is not wholly inside [0, Size()) fails with
// ErrOutOfRange and does nothing.
type Device interface {
	Size() int64
	ReadOnly() bool
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at off. With fua, it returns only once the write is
	// durable as Flush defines.
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	// Flush returns once every write completed before it was called is on
	// stable storage on as many replicas as the volume's policy requires;
	// otherwise it fails (ErrUnavailable).
	Flush(ctx context.Context) error
	// Trim discards a range; it reads back as zeros.
	Trim(ctx context.Context, off, length int64) error
	// WriteZeroes makes a range read as zeros.
	WriteZeroes(ctx context.Context, off, length int64, fua bool) error
	// Extents describes [off, off+length) as data and zero ranges, in
	// order, covering it exactly.
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
	// Close flushes and releases the device (the writer lease at once).
	Close(ctx context.Context) error
}

// PeerPool resolves a peer ID to the service that reaches it. peer.Pool
// implements it over TCP; tests map IDs to in-process services. Peer fails
// with an error wrapping ErrUnavailable when the peer is unknown or cannot be
// reached.
type PeerPool interface {
	Peer(ctx context.Context, id string) (PeerService, error)
}

// VolumeHealth summarizes a volume's redundancy.
type VolumeHealth string

const (
	// VolumeHealthy: every live segment has Replication full copies on up peers.
	VolumeHealthy VolumeHealth = "healthy"
	// VolumeDegraded: every live segment is readable, some have fewer copies.
	VolumeDegraded VolumeHealth = "degraded"
	// VolumeUnavailable: some live segment has no copy on an up peer.
	VolumeUnavailable VolumeHealth = "unavailable"
)

// VolumeStatus is a volume's health and space use as last computed by the
// daemons' maintenance (one daemon, the lowest up peer ID, publishes it).
type VolumeStatus struct {
	Volume          string       `json:"volume"`
	ID              uint64       `json:"id"`
	Health          VolumeHealth `json:"health"`
	Used            int64        `json:"used"`             // bytes of live segments, one copy
	Stored          int64        `json:"stored"`           // bytes of live segments, all copies
	UnderReplicated int          `json:"under_replicated"` // live segments with too few copies
	Unavailable     int          `json:"unavailable"`      // live segments with no up copy
	PendingBytes    int64        `json:"pending_bytes"`    // bytes healing still has to copy
	// UnrepairableBlocks counts volume blocks in segments that scrub found
	// no good copy of (the volume is then unavailable; `torusctl volume
	// scrub` names them).
	UnrepairableBlocks int `json:"unrepairable_blocks,omitempty"`
	// Problem says why the volume could not be looked at whole (its live
	// segments could not be read: a checkpoint with no good copy); GC and
	// healing skip it meanwhile. "" when all is well.
	Problem  string    `json:"problem,omitempty"`
	Reporter string    `json:"reporter"` // peer ID that computed it
	Updated  time.Time `json:"updated"`
}
