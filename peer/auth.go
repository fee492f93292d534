package peer

import (
	"crypto/x509"
	"fmt"
	"net/url"

	"github.com/torus-storage/torus"
)

// Role is what a caller of the peer protocol may do. On a daemon that
// requires TLS it comes from the caller's certificate: a URI SAN
// torus://role/ROLE (RoleURI). See docs/security.md.
type Role string

// Roles.
const (
	// RoleDaemon may make every request: appends and syncs at any epoch
	// including torus.RepairEpoch (healing, rebalancing, scrub repair),
	// deletes (garbage collection, surplus copies), everything a client
	// may. Fencing still applies to its real-epoch appends.
	RoleDaemon Role = "daemon"
	// RoleClient (a writer or reader: torusblk, torus-csi, torusctl) may
	// Append and Sync at a real epoch (never torus.RepairEpoch), ReadAt,
	// ReadV, Stat, List, Usage, and Fence (the takeover path of a new writer).
	RoleClient Role = "client"
	// RoleNone is a certificate without exactly one known role: it may
	// do nothing.
	RoleNone Role = ""
)

// RoleURIScheme and RoleURIHost make the URI SAN naming a role:
// torus://role/daemon, torus://role/client.
const (
	RoleURIScheme = "torus"
	RoleURIHost   = "role"
)

// RoleURI is the URI SAN that gives a certificate role r.
func RoleURI(r Role) *url.URL {
	return &url.URL{Scheme: RoleURIScheme, Host: RoleURIHost, Path: "/" + string(r)}
}

// RoleOf reads the role from cert's URI SANs. A certificate with no role
// URI, an unknown one, or two different ones has RoleNone.
func RoleOf(cert *x509.Certificate) Role {
	if cert == nil {
		return RoleNone
	}
	role := RoleNone
	for _, u := range cert.URIs {
		if u.Scheme != RoleURIScheme || u.Host != RoleURIHost {
			continue
		}
		r := Role(u.Path[min(1, len(u.Path)):])
		if r != RoleDaemon && r != RoleClient {
			return RoleNone
		}
		if role != RoleNone && role != r {
			return RoleNone
		}
		role = r
	}
	return role
}

// Identity is who is on the other end of a peer connection, as its
// certificate says.
type Identity struct {
	Name string // the certificate's subject common name
	Role Role
}

// IdentityOf is the identity cert (a verified leaf) carries.
func IdentityOf(cert *x509.Certificate) Identity {
	if cert == nil {
		return Identity{}
	}
	return Identity{Name: cert.Subject.CommonName, Role: RoleOf(cert)}
}

// RoleLabel is the role as a metric label: "none" for RoleNone.
func (r Role) RoleLabel() string {
	if r == RoleNone {
		return "none"
	}
	return string(r)
}

// Authorize decides whether id may make request r. It is pure: the server
// calls it on every request of a TLS connection. The error wraps
// torus.ErrPermission and says what is refused and why.
func Authorize(id Identity, r Request) error {
	switch id.Role {
	case RoleDaemon:
		return nil
	case RoleClient:
		switch r.Op {
		case OpAppend, OpSync:
			if r.Epoch == torus.RepairEpoch {
				return fmt.Errorf("%w: peer: %s of %s at the repair epoch needs a daemon certificate (%q is a client)",
					torus.ErrPermission, r.Op, r.Seg, id.Name)
			}
			return nil
		case OpReadAt, OpReadV, OpStat, OpList, OpUsage, OpFence:
			return nil
		}
		return fmt.Errorf("%w: peer: %s needs a daemon certificate (%q is a client)", torus.ErrPermission, r.Op, id.Name)
	}
	return fmt.Errorf("%w: peer: certificate %q has no role (want a URI SAN %s or %s)",
		torus.ErrPermission, id.Name, RoleURI(RoleDaemon), RoleURI(RoleClient))
}
