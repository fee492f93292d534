package proccluster

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/torus-storage/torus/internal/tlsconfig"
)

// etcdProcs prepares (does not start) the etcd members of c.Opts: one on
// 127.0.0.1 by default, or EtcdMembers on 127.0.0.51, .52, ...; with
// EtcdTLS, certificates from `torusctl certs` in c.EtcdCerts and
// c.EtcdEnv pointing every Torus process at client certificate "torus".
func (c *Cluster) etcdProcs(etcdBin string) {
	t, o := c.t, c.Opts
	n := o.EtcdMembers
	if n == 0 {
		n = 1
	}
	scheme := "http"
	if o.EtcdTLS {
		scheme = "https"
	}
	ips := make([]string, n)
	peerURLs := make([]string, n)
	var initial []string
	for i := range ips {
		ips[i] = "127.0.0.1"
		if n > 1 {
			ips[i] = fmt.Sprintf("127.0.0.%d", 51+i)
		}
		c.EtcdURLs = append(c.EtcdURLs, fmt.Sprintf("%s://%s:%d", scheme, ips[i], FreePort(t, ips[i])))
		peerURLs[i] = fmt.Sprintf("%s://%s:%d", scheme, ips[i], FreePort(t, ips[i]))
		initial = append(initial, fmt.Sprintf("e%d=%s", i, peerURLs[i]))
	}
	c.EtcdURL = strings.Join(c.EtcdURLs, ",")
	if o.EtcdTLS {
		c.EtcdCerts = filepath.Join(c.Dir, "etcd-certs")
		c.Ctl("certs", "init-ca", "--certs-dir", c.EtcdCerts)
		c.Ctl("certs", "client", "--certs-dir", c.EtcdCerts, "torus")
		f := tlsconfig.ClientFiles(c.EtcdCerts, "torus")
		c.EtcdEnv = append(c.EtcdEnv, "TORUS_ETCD_CERT="+f.Cert, "TORUS_ETCD_KEY="+f.Key, "TORUS_ETCD_CA="+f.CA)
	}
	for i := range ips {
		name := fmt.Sprintf("e%d", i)
		dataDir := filepath.Join(c.Dir, "etcd")
		if n > 1 {
			dataDir = filepath.Join(c.Dir, "etcd-"+name)
		}
		args := []string{etcdBin,
			"--name", name, "--data-dir", dataDir,
			"--listen-client-urls", c.EtcdURLs[i], "--advertise-client-urls", c.EtcdURLs[i],
			"--listen-peer-urls", peerURLs[i], "--initial-advertise-peer-urls", peerURLs[i],
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--log-level", "error"}
		if o.EtcdTLS {
			// etcd checks that a peer's certificate is valid for the
			// connection's source address, and connections to 127.0.0.x
			// come from 127.0.0.1.
			c.Ctl("certs", "etcd", "--certs-dir", c.EtcdCerts, name, ips[i], "127.0.0.1")
			f := tlsconfig.EtcdFiles(c.EtcdCerts, name)
			args = append(args, "--cert-file", f.Cert, "--key-file", f.Key, "--trusted-ca-file", f.CA, "--client-cert-auth",
				"--peer-cert-file", f.Cert, "--peer-key-file", f.Key, "--peer-trusted-ca-file", f.CA, "--peer-client-cert-auth")
		}
		proc := &Proc{Name: "etcd", Args: args}
		if n > 1 {
			proc.Name = "etcd-" + name
		}
		c.EtcdMembers = append(c.EtcdMembers, proc)
	}
	c.Etcd = c.EtcdMembers[0]
}

// EtcdHTTP is an HTTP client for etcd's /health: plain, or with the
// cluster's etcd client certificate.
func (c *Cluster) EtcdHTTP() *http.Client {
	c.t.Helper()
	cl := &http.Client{Timeout: 3 * time.Second}
	if c.EtcdCerts == "" {
		return cl
	}
	f := tlsconfig.ClientFiles(c.EtcdCerts, "torus")
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		c.t.Fatal(err)
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		c.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cl.Transport = &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12}}
	return cl
}

// WaitEtcd waits until the etcd member at url answers /health with 200.
func (c *Cluster) WaitEtcd(url string, d time.Duration) {
	c.t.Helper()
	cl := c.EtcdHTTP()
	deadline := time.Now().Add(d)
	for {
		resp, err := cl.Get(url + "/health")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			c.DumpLogs()
			c.t.Fatalf("etcd %s not healthy after %v (last error %v)", url, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
