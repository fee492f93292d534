package cli

import (
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/torus-storage/torus/internal/tlsconfig"
)

// certsCmd is `torusctl certs`: a CA and the daemon and client
// certificates of the peer protocol, in the manner of `cockroach cert`. It
// needs no etcd.
func (a *app) certsCmd() *cobra.Command {
	var dir string
	var overwrite bool
	var lifetime time.Duration
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Create the CA and the certificates of a TLS cluster (docs/security.md)",
		Long: `certs creates, in --certs-dir, a CA (ca.crt, ca.key), daemon certificates
(daemon.crt, daemon.key: role daemon, for torusd's --peer-cert) and client
certificates (client.NAME.crt, client.NAME.key: role client, for torusblk,
torusctl and torus-csi; also etcd client certificates, whose NAME is the etcd
user under --client-cert-auth) and etcd member certificates (etcd.NAME.crt,
etcd.NAME.key: for etcd's --cert-file and --peer-cert-file). Keys are ECDSA P-256, written with mode 0600.
Existing files are kept unless --overwrite. Keep ca.key off the daemons.`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&dir, "certs-dir", "certs", "directory of ca.crt, ca.key and the issued certificates")
	pf.BoolVar(&overwrite, "overwrite", false, "replace existing files")
	pf.DurationVar(&lifetime, "lifetime", 0, "validity (default 87600h for the CA, 17520h for certificates)")
	opts := func() tlsconfig.IssueOptions { return tlsconfig.IssueOptions{Overwrite: overwrite, Lifetime: lifetime} }
	cmd.AddCommand(&cobra.Command{
		Use:   "init-ca",
		Short: "Create the cluster's CA: ca.crt and ca.key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := tlsconfig.InitCA(dir, opts()); err != nil {
				return err
			}
			return a.say(map[string]string{"cert": filepath.Join(dir, tlsconfig.CACert), "key": filepath.Join(dir, tlsconfig.CAKey)},
				"created %s and %s", filepath.Join(dir, tlsconfig.CACert), filepath.Join(dir, tlsconfig.CAKey))
		},
	}, &cobra.Command{
		Use:   "daemon HOST...",
		Short: "Issue daemon.crt and daemon.key for the hosts (IP addresses, DNS names) a daemon is reached at",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := tlsconfig.IssueDaemon(dir, args, opts()); err != nil {
				return err
			}
			f := tlsconfig.DaemonFiles(dir)
			return a.say(map[string]any{"cert": f.Cert, "key": f.Key, "hosts": args}, "created %s and %s for %v", f.Cert, f.Key, args)
		},
	}, &cobra.Command{
		Use:   "etcd NAME HOST...",
		Short: "Issue etcd.NAME.crt and etcd.NAME.key for etcd member NAME at the hosts (server and peer TLS)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := tlsconfig.IssueEtcd(dir, args[0], args[1:], opts()); err != nil {
				return err
			}
			f := tlsconfig.EtcdFiles(dir, args[0])
			return a.say(map[string]any{"cert": f.Cert, "key": f.Key, "hosts": args[1:]}, "created %s and %s for %v", f.Cert, f.Key, args[1:])
		},
	}, &cobra.Command{
		Use:   "client NAME",
		Short: "Issue client.NAME.crt and client.NAME.key (role client)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := tlsconfig.IssueClient(dir, args[0], opts()); err != nil {
				return err
			}
			f := tlsconfig.ClientFiles(dir, args[0])
			return a.say(map[string]string{"cert": f.Cert, "key": f.Key}, "created %s and %s", f.Cert, f.Key)
		},
	})
	return cmd
}
