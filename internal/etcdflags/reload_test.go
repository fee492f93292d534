package etcdflags

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/tlsconfig"
	etcdmeta "github.com/torus-storage/torus/metadata/etcd"
)

// TestApplyReloadsRotatedCertificate: the TLS configuration Apply puts in
// etcdmeta.Config presents, at each new connection, the client certificate
// in the files at that moment. A TLS server that, like etcd with
// --client-cert-auth, requires a client certificate of the CA sees the
// first certificate, then, after the files are replaced by a certificate
// of a new CA (and the CA bundle by that CA, which also signs the server's
// new certificate), the new one on the next connection, with nothing
// reloaded by hand. The first certificate is issued to expire shortly
// after the rotation, and connections made after it expired still work.
func TestApplyReloadsRotatedCertificate(t *testing.T) {
	certs := t.TempDir()
	if err := tlsconfig.InitCA(certs, tlsconfig.IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := tlsconfig.IssueDaemon(certs, []string{"127.0.0.1"}, tlsconfig.IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	// Expires 2 s from now.
	short := tlsconfig.IssueOptions{Lifetime: time.Hour, Now: func() time.Time { return time.Now().Add(-time.Hour + 2*time.Second) }}
	if err := tlsconfig.IssueClient(certs, "torus", short); err != nil {
		t.Fatal(err)
	}
	cf := tlsconfig.ClientFiles(certs, "torus")

	// The server: the daemon certificate, client certificates of the
	// bundle in clientCA required; both swapped by rotate.
	serverCert := func() tls.Certificate {
		df := tlsconfig.DaemonFiles(certs)
		c, err := tls.LoadX509KeyPair(df.Cert, df.Key)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	pool := func() *x509.CertPool {
		b, err := os.ReadFile(cf.CA)
		if err != nil {
			t.Fatal(err)
		}
		p := x509.NewCertPool()
		p.AppendCertsFromPEM(b)
		return p
	}
	srvCfg := &tls.Config{Certificates: []tls.Certificate{serverCert()}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool()}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg.Clone())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	seen := make(chan string, 8)
	go serveTLS(ln, seen)

	cfg := etcdmeta.Config{}
	if err := (Flags{Cert: cf.Cert, Key: cf.Key, CA: cf.CA}).Apply(&cfg); err != nil {
		t.Fatal(err)
	}
	dial := func() string {
		t.Helper()
		c := cfg.TLS.Clone()
		c.ServerName = "127.0.0.1" // as grpc sets it from the endpoint
		conn, err := tls.Dial("tcp", ln.Addr().String(), c)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer conn.Close()
		return <-seen
	}
	serial := func() string {
		b, err := os.ReadFile(cf.Cert)
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(b, mustRead(t, cf.Key))
		if err != nil {
			t.Fatal(err)
		}
		l, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return l.SerialNumber.String()
	}
	first := serial()
	if got := dial(); got != first {
		t.Fatalf("first connection: server saw %s, want %s", got, first)
	}

	// Rotate to a new CA: CA, daemon and client certificates replaced.
	o := tlsconfig.IssueOptions{Overwrite: true}
	if err := tlsconfig.InitCA(certs, o); err != nil {
		t.Fatal(err)
	}
	if err := tlsconfig.IssueDaemon(certs, []string{"127.0.0.1"}, o); err != nil {
		t.Fatal(err)
	}
	if err := tlsconfig.IssueClient(certs, "torus", o); err != nil {
		t.Fatal(err)
	}
	second := serial()
	// The server trusts the new CA only (the old client certificate is
	// now refused) and presents its new certificate.
	ln.Close()
	srvCfg = &tls.Config{Certificates: []tls.Certificate{serverCert()}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool()}
	if ln, err = tls.Listen("tcp", ln.Addr().String(), srvCfg); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveTLS(ln, seen)
	time.Sleep(2500 * time.Millisecond) // the first certificate has expired
	for i := 0; i < 2; i++ {
		if got := dial(); got != second {
			t.Fatalf("connection %d after the rotation: server saw %s, want the new certificate %s", i, got, second)
		}
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// serveTLS handshakes every connection to ln and sends the client
// certificate's serial, or why it was refused, to seen, until ln closes.
func serveTLS(ln net.Listener, seen chan<- string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			seen <- "refused: " + err.Error()
		} else {
			seen <- tc.ConnectionState().PeerCertificates[0].SerialNumber.String()
		}
		tc.Close()
	}
}
