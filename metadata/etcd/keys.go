package etcd

// keys builds every key of the layout (docs/design/metadata.md). Names are
// validated (torus.ValidName, rules.PeerID) before they reach a key, so
// they contain no '/'.
type keys struct{ p string }

func (k keys) cluster() string        { return k.p + "cluster" }
func (k keys) ring() string           { return k.p + "ring" }
func (k keys) peer(id string) string  { return k.p + "peers/" + id }
func (k keys) alive(id string) string { return k.p + "alive/" + id }
func (k keys) seen(id string) string  { return k.p + "seen/" + id }
func (k keys) beat(id string) string  { return k.p + beatTree + id }

// beatTree holds each daemon's last beat (usage, backlog, last-seen
// time), rewritten at every heartbeat. '~' sorts after every other tree,
// and the change watch covers [prefix, prefix+"~"): no watcher receives
// a beat (docs/design/metadata.md, "Heartbeats").
const beatTree = "~beats/"

// watchEnd is the end of the change watch's range (exclusive).
func (k keys) watchEnd() string              { return k.p + "~" }
func (k keys) draining(id string) string     { return k.p + "draining/" + id }
func (k keys) removed(id string) string      { return k.p + "removed/" + id }
func (k keys) nextID() string                { return k.p + "next-volume-id" }
func (k keys) volume(name string) string     { return k.p + "volumes/" + name }
func (k keys) epoch(name string) string      { return k.p + "epochs/" + name }
func (k keys) lock(name string) string       { return k.p + "locks/" + name }
func (k keys) head(name string) string       { return k.p + "heads/" + name }
func (k keys) status(name string) string     { return k.p + "status/" + name }
func (k keys) attach(name string) string     { return k.p + "attach/" + name }
func (k keys) csiNode(id string) string      { return k.p + "csinodes/" + id }
func (k keys) events() string                { return k.p + "events/" }
func (k keys) defaultExport() string         { return k.p + "default-export" }
func (k keys) snapshot(vol, s string) string { return k.p + "snapshots/" + vol + "/" + s }
func (k keys) snapReq(vol, s string) string  { return k.p + "snapreq/" + vol + "/" + s }
func (k keys) snapRes(vol, s string) string  { return k.p + "snapres/" + vol + "/" + s }
