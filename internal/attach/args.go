package attach

import (
	"path/filepath"

	"github.com/torus-storage/torus/internal/etcdflags"
)

// Cluster is what a torusblk child needs to reach the cluster: the parent's
// own settings, passed on.
type Cluster struct {
	Etcd, Prefix              string
	EtcdClient                etcdflags.Flags
	PeerCert, PeerKey, PeerCA string
	LogLevel                  string
}

// Args are torusblk's global flags (Options.Args) for c: etcd, prefix,
// etcd and peer TLS (files made absolute: the process runs in /), etcd
// user, log level.
func (c Cluster) Args() ([]string, error) {
	args := []string{"--etcd", c.Etcd, "--etcd-prefix", c.Prefix, "--log-level", c.LogLevel}
	for _, fl := range []struct{ name, path string }{
		{"--etcd-cert", c.EtcdClient.Cert}, {"--etcd-key", c.EtcdClient.Key}, {"--etcd-ca", c.EtcdClient.CA},
		{"--etcd-password-file", c.EtcdClient.PasswordFile},
		{"--peer-cert", c.PeerCert}, {"--peer-key", c.PeerKey}, {"--peer-ca", c.PeerCA},
	} {
		if fl.path == "" {
			continue
		}
		p, err := filepath.Abs(fl.path)
		if err != nil {
			return nil, err
		}
		args = append(args, fl.name, p)
	}
	if c.EtcdClient.User != "" {
		args = append(args, "--etcd-user", c.EtcdClient.User)
	}
	return args, nil
}
