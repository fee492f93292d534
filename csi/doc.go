// Package csi is Torus's Container Storage Interface driver (CSI spec
// v1.13): the Identity, Controller and Node services over a Torus
// cluster's metadata, served on a unix socket. cmd/torus-csi wires it.
//
// Names. A CSI name (up to 128 bytes, any case) maps deterministically to
// a Torus name with TorusName ("csi-" + a readable slug + a hash); the
// CSI name and the CreateVolume parameters are kept in the volume's labels
// (LabelName, LabelParameters), which is how a repeated CreateVolume is
// recognised. The CSI volume ID is the Torus volume name; a snapshot ID is
// VOLUME@SNAPSHOT.
//
// Errors. Torus errors reach the CO as gRPC statuses classified by Code
// (NotFound, AlreadyExists, InvalidArgument, FailedPrecondition for a
// volume in use, Unavailable when etcd or the peers cannot be reached),
// with the whole cause in the message.
//
// What is served today: Identity (Probe: etcd answers and a daemon is up);
// Controller: create/delete (idempotent), snapshots (create, delete, get,
// list with pagination), online expansion, list volumes with pagination,
// get volume, volume health from Torus's published health, capacity, capability
// validation. Not yet: publish/unpublish, clones and create-from-snapshot
// (the core has no clones), topology, and the Node service beyond
// NodeGetInfo (docs/kubernetes.md lists what is missing).
package csi
