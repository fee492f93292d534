package etcd_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
	etcdmeta "github.com/torus-storage/torus/metadata/etcd"
)

// writeCert writes a PEM certificate and key signed by ca (self-signed when
// ca is nil) and returns the certificate and key.
func writeCert(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, isCA bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		IsCA:         isCA, BasicConstraintsValid: true,
	}
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(filepath.Join(dir, name+"-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestTLS connects to an embedded etcd that requires client certificates:
// with the right certificate, key and CA it works; without a client
// certificate it fails with ErrUnavailable naming the endpoint.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := writeCert(t, dir, "ca", nil, nil, true)
	writeCert(t, dir, "server", ca, caKey, false)
	writeCert(t, dir, "client", ca, caKey, false)

	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	cport := ln.Addr().(*net.TCPAddr).Port
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	pport := ln2.Addr().(*net.TCPAddr).Port
	ln.Close()
	ln2.Close()
	cfg := embed.NewConfig()
	cfg.Dir = filepath.Join(dir, "etcd")
	cfg.LogLevel = "error"
	curl, _ := url.Parse(fmt.Sprintf("https://127.0.0.1:%d", cport))
	purl, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", pport))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*curl}, []url.URL{*curl}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*purl}, []url.URL{*purl}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ClientTLSInfo.CertFile = filepath.Join(dir, "server.pem")
	cfg.ClientTLSInfo.KeyFile = filepath.Join(dir, "server-key.pem")
	cfg.ClientTLSInfo.TrustedCAFile = filepath.Join(dir, "ca.pem")
	cfg.ClientTLSInfo.ClientCertAuth = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd with TLS did not start")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ep := curl.String()

	st, err := etcdmeta.New(ctx, etcdmeta.Config{Endpoints: []string{ep},
		CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client-key.pem"),
		CAFile: filepath.Join(dir, "ca.pem"), Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatalf("connecting with a client certificate: %v", err)
	}
	defer st.Close()
	cc := torus.ClusterConfig{}
	cc.EnsureDefaults()
	if err := st.InitCluster(ctx, cc); err != nil {
		t.Fatal(err)
	}
	if got, err := st.ClusterConfig(ctx); err != nil || got.Replication != cc.Replication {
		t.Fatalf("ClusterConfig over TLS = %+v, %v", got, err)
	}

	// Only the CA, no client certificate: refused by the server.
	_, err = etcdmeta.New(ctx, etcdmeta.Config{Endpoints: []string{ep}, CAFile: filepath.Join(dir, "ca.pem"),
		DialTimeout: 2 * time.Second, Logger: testutil.Logger(t)})
	if err == nil {
		t.Fatal("connected without a client certificate to an etcd that requires one")
	}
	if !errors.Is(err, torus.ErrUnavailable) {
		t.Logf("error without client certificate: %v", err)
	}
	// A CA file that does not exist: a clear error before dialing.
	if _, err := etcdmeta.New(ctx, etcdmeta.Config{Endpoints: []string{ep}, CAFile: filepath.Join(dir, "nope.pem")}); err == nil {
		t.Fatal("a missing CA file was accepted")
	}
}
