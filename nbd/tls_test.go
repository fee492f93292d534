package nbd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/testutil"
)

// makeCerts writes a CA and a server certificate for 127.0.0.1/localhost
// into a new directory laid out as libnbd and qemu expect (ca-cert.pem,
// server-cert.pem, server-key.pem) and returns it with a server TLS config.
func makeCerts(t testing.TB) (string, *tls.Config) {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "torus test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) []byte {
		p := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b})
		if err := os.WriteFile(filepath.Join(dir, name), p, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("ca-cert.pem", "CERTIFICATE", caDER)
	certPEM := write("server-cert.pem", "CERTIFICATE", der)
	keyPEM := write("server-key.pem", "PRIVATE KEY", keyDER)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return dir, &tls.Config{Certificates: []tls.Certificate{cert}}
}

func TestTLS(t *testing.T) {
	nbdinfo := testutil.RequireBinary(t, "nbdinfo")
	qemuImg := testutil.RequireBinary(t, "qemu-img")
	qemuIO := testutil.RequireBinary(t, "qemu-io")
	t.Parallel()
	dir, tlsCfg := makeCerts(t)
	ex := newMemExports()
	ex.add("vol", 16<<20)
	_, addr := startServer(t, Config{TLS: tlsCfg, TLSRequired: true}, ex)
	host, port, _ := net.SplitHostPort(addr)

	// nbdinfo over TLS (nbds:// requires it).
	out := run(t, 30*time.Second, nbdinfo, "nbds://"+addr+"/vol?tls-certificates="+dir)
	if !strings.Contains(out, "export-size: 16777216") || !strings.Contains(out, "with TLS") {
		t.Fatalf("nbdinfo over TLS:\n%s", out)
	}
	// Without TLS the server refuses (TLS required).
	if out, err := runErr(30*time.Second, nbdinfo, uri(addr, "vol")); err == nil {
		t.Fatalf("plain nbdinfo against a TLS-only server succeeded:\n%s", out)
	}

	// qemu-img and qemu-io with x509 credentials.
	obj := "tls-creds-x509,id=tls0,endpoint=client,dir=" + dir
	img := "driver=nbd,host=" + host + ",port=" + port + ",export=vol,tls-creds=tls0"
	run(t, 30*time.Second, qemuIO, "--object", obj, "--image-opts", img,
		"-c", "write -P 0x5a 4096 65536", "-c", "read -P 0x5a 4096 65536")
	out = run(t, 30*time.Second, qemuImg, "info", "--object", obj, "--image-opts", img)
	if !strings.Contains(out, "16 MiB") {
		t.Fatalf("qemu-img info over TLS:\n%s", out)
	}
	out = run(t, 30*time.Second, qemuImg, "map", "--output=json", "--object", obj, "--image-opts", img)
	if !strings.Contains(out, `"start": 4096, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true`) {
		t.Fatalf("qemu-img map over TLS:\n%s", out)
	}
}

// TestTLSRequiredRaw: before STARTTLS every option but STARTTLS and ABORT
// gets ERR_TLS_REQD; after it, everything works and a second STARTTLS is
// invalid.
func TestTLSRequiredRaw(t *testing.T) {
	dir, tlsCfg := makeCerts(t)
	ex := newMemExports()
	ex.add("vol", 1<<20)
	_, addr := startServer(t, Config{TLS: tlsCfg, TLSRequired: true}, ex)
	c := dialRaw(t, addr)
	c.greet(flagCFixedNewstyle)
	c.expectOpt(optList, nil, repErrTLSReqd)
	c.expectOpt(optGo, appendInfoRequest(nil, infoRequest{name: "vol"}), repErrTLSReqd)
	c.expectOpt(0x999, nil, repErrTLSReqd)
	c.expectOpt(optStartTLS, nil, repAck)
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(caPEM)
	tc := tls.Client(c.conn, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c.conn = tc
	c.expectOpt(optStartTLS, nil, repErrInvalid)
	c.expectOpt(0x999, nil, repErrUnsup)
	c.expectOpt(optStructuredReply, nil, repAck)
	c.goExport2("vol")
	c.send(cmdWrite, 0, 1, 0, 3, []byte("abc"))
	if r := c.anyReply(); r.errno != 0 || r.handle != 1 {
		t.Fatalf("write reply %+v", r)
	}
	c.send(cmdRead, 0, 2, 0, 3, nil)
	if r := c.anyReply(); r.errno != 0 || r.typ != replyTypeOffsetData || string(r.data[8:]) != "abc" {
		t.Fatalf("read over TLS: %+v", r)
	}

	// EXPORT_NAME before TLS: the server can only hang up.
	c = dialRaw(t, addr)
	c.greet(flagCFixedNewstyle)
	c.sendOpt(optExportName, []byte("vol"))
	var b [1]byte
	if _, err := c.conn.Read(b[:]); err == nil {
		t.Fatal("EXPORT_NAME before STARTTLS was accepted")
	}
}
