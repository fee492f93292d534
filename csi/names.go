package csi

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/torus-storage/torus"
)

// Labels the driver keeps on the volumes it creates.
const (
	// LabelName holds the CSI name the volume was created for.
	LabelName = "csi.torus.io/name"
	// LabelParameters holds the CreateVolume parameters as JSON (absent
	// when there were none).
	LabelParameters = "csi.torus.io/parameters"
)

// namePrefix starts every Torus volume and snapshot name the driver makes.
const namePrefix = "csi-"

// slugLen bounds the readable part of a mapped name: "csi-" + 42 + "-" +
// 16 hex digits = 63 characters, the longest valid Torus name.
const slugLen = 42

// TorusName maps a CSI volume or snapshot name (1..128 bytes, any case, any
// characters) to a valid Torus name, deterministically: "csi-", then the
// name lowercased with every character outside [a-z0-9._-] replaced by "-"
// and cut to 42 characters, then "-" and the first 16 hex digits of the
// SHA-256 of the whole CSI name. Names that differ only in case or past
// the 42nd character map to different Torus names through the hash.
func TorusName(csiName string) string {
	sum := sha256.Sum256([]byte(csiName))
	var b strings.Builder
	for _, r := range strings.ToLower(csiName) {
		if b.Len() == slugLen {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	slug := b.String()
	if slug == "" {
		return namePrefix + hex.EncodeToString(sum[:8])
	}
	return namePrefix + slug + "-" + hex.EncodeToString(sum[:8])
}

// MaxNameLen is the longest CSI name accepted (the CSI spec's size limit
// for strings).
const MaxNameLen = 128

func checkCSIName(what, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: %s name is empty", torus.ErrInvalid, what)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: %s name of %d bytes exceeds %d", torus.ErrInvalid, what, len(name), MaxNameLen)
	}
	return torus.ValidLabelValue(name)
}

// SnapshotID is the CSI snapshot ID of a Torus snapshot: VOLUME@SNAPSHOT,
// the form torusctl uses.
func SnapshotID(volume, snapshot string) string { return volume + "@" + snapshot }

// ParseSnapshotID splits a snapshot ID. ok is false when id is not the ID
// of any possible Torus snapshot (such a snapshot does not exist).
func ParseSnapshotID(id string) (volume, snapshot string, ok bool) {
	volume, snapshot, found := strings.Cut(id, "@")
	if !found || torus.ValidName(volume) != nil || torus.ValidName(snapshot) != nil {
		return "", "", false
	}
	return volume, snapshot, true
}

// tokenPrefix starts every pagination token; a token without it was not
// made by the driver (codes.Aborted).
const tokenPrefix = "next:"

// pageToken is the token for a page that starts at key.
func pageToken(key string) string { return tokenPrefix + key }

// parseToken returns the key a page starts at ("" for no token), ok=false
// for a token the driver did not make.
func parseToken(tok string) (key string, ok bool) {
	if tok == "" {
		return "", true
	}
	key, ok = strings.CutPrefix(tok, tokenPrefix)
	return key, ok && key != ""
}
