package peer

import (
	"crypto/x509"
	"errors"
	"net/url"
	"testing"

	"github.com/torus-storage/torus"
)

// TestAuthorize pins the permission rule: what each role may do.
func TestAuthorize(t *testing.T) {
	ops := []Op{OpAppend, OpSync, OpReadAt, OpStat, OpList, OpDelete, OpFence, OpUsage}
	for _, c := range []struct {
		role  Role
		epoch uint64
		allow map[Op]bool
	}{
		{RoleDaemon, 5, map[Op]bool{OpAppend: true, OpSync: true, OpReadAt: true, OpStat: true, OpList: true, OpDelete: true, OpFence: true, OpUsage: true}},
		{RoleDaemon, torus.RepairEpoch, map[Op]bool{OpAppend: true, OpSync: true, OpReadAt: true, OpStat: true, OpList: true, OpDelete: true, OpFence: true, OpUsage: true}},
		{RoleClient, 5, map[Op]bool{OpAppend: true, OpSync: true, OpReadAt: true, OpStat: true, OpList: true, OpFence: true, OpUsage: true}},
		{RoleClient, torus.RepairEpoch, map[Op]bool{OpReadAt: true, OpStat: true, OpList: true, OpFence: true, OpUsage: true}},
		{RoleNone, 5, map[Op]bool{}},
	} {
		for _, op := range ops {
			err := Authorize(Identity{Name: "n", Role: c.role}, Request{Op: op, Epoch: c.epoch})
			if c.allow[op] != (err == nil) {
				t.Errorf("role %q epoch %d %s: %v, want allowed %v", c.role, c.epoch, op, err, c.allow[op])
			}
			if err != nil && !errors.Is(err, torus.ErrPermission) {
				t.Errorf("role %q %s: %v does not wrap ErrPermission", c.role, op, err)
			}
		}
	}
}

func TestRoleOf(t *testing.T) {
	u := func(s string) *url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, c := range []struct {
		uris []*url.URL
		want Role
	}{
		{nil, RoleNone},
		{[]*url.URL{RoleURI(RoleDaemon)}, RoleDaemon},
		{[]*url.URL{u("torus://role/client")}, RoleClient},
		{[]*url.URL{u("spiffe://x/y"), u("torus://role/client")}, RoleClient},
		{[]*url.URL{u("torus://role/admin")}, RoleNone},
		{[]*url.URL{u("torus://role/client"), u("torus://role/daemon")}, RoleNone},
		{[]*url.URL{u("torus://role/daemon"), u("torus://role/daemon")}, RoleDaemon},
	} {
		if got := RoleOf(&x509.Certificate{URIs: c.uris}); got != c.want {
			t.Errorf("RoleOf(%v) = %q, want %q", c.uris, got, c.want)
		}
	}
	if RoleURI(RoleDaemon).String() != "torus://role/daemon" {
		t.Fatal(RoleURI(RoleDaemon))
	}
}
