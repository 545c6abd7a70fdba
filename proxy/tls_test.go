package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cellgate/cellgate/accounting"
	"github.com/cellgate/cellgate/sandbox"
)

// writeCert writes a self-signed certificate for 127.0.0.1 and its key, and
// returns their paths and a pool that trusts it.
func writeCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "cellgate test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestTLS: with a certificate the front speaks HTTP/2 (and HTTP/1.1) over
// TLS, tells the worker HTTPS=on, and sets request ids and limits alike.
func TestTLS(t *testing.T) {
	certFile, keyFile, pool := writeCert(t)
	env := script(t, "env", `printf 'Content-Type: text/plain\n\n%s %s %s' "$HTTPS" "$SERVER_PROTOCOL" "$CONTENT_LENGTH"`)
	rt := route("env", "/", env)
	rt.MaxBody = new(int64(100))
	ts := startServer(t, Config{TLSCertFile: certFile, TLSKeyFile: keyFile}, Deps{Runner: &PlainExec{}}, rt)
	for _, tt := range []struct {
		name  string
		h2    bool
		proto string
	}{
		{"http2", true, "HTTP/2.0"},
		{"http1", false, "HTTP/1.1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: tt.h2}
			if !tt.h2 {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
			resp, body := do(t, c, newRequest(t, "POST", ts.URL+"/", strings.NewReader("abc")))
			if resp.StatusCode != 200 || resp.Proto != tt.proto || body != "on "+tt.proto+" 3" {
				t.Fatalf("got %d %s %q", resp.StatusCode, resp.Proto, body)
			}
			if resp.Header.Get(RequestIDHeader) == "" {
				t.Errorf("no request id")
			}
			resp, _ = do(t, c, newRequest(t, "POST", ts.URL+"/", strings.NewReader(strings.Repeat("x", 101))))
			if resp.StatusCode != 413 || resp.Header.Get(RequestIDHeader) == "" {
				t.Errorf("body over the limit: %d", resp.StatusCode)
			}
		})
	}
}

// TestTLSRefusalIsAClose: over TLS a connection over a cap is closed
// without a plain-text answer.
func TestTLSRefusalIsAClose(t *testing.T) {
	certFile, keyFile, pool := writeCert(t)
	ts := startServer(t, Config{TLSCertFile: certFile, TLSKeyFile: keyFile, MaxConnsPerIP: 1},
		Deps{Runner: cgiOutput("Status: 200\n\n", sandbox.CauseOK)}, route("r", "/", "/x"))
	first, err := tls.Dial("tcp", ts.Addr, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	waitOpen(t, ts.Server, 1)
	second, err := tls.Dial("tcp", ts.Addr, &tls.Config{RootCAs: pool})
	if err == nil {
		second.Close()
		t.Fatal("second TLS connection from the same IP completed its handshake")
	}
}

// TestHTTP2SlowBody: the body's minimum rate holds on HTTP/2 streams too
// (the stream's read deadline), without closing the connection's other
// streams.
func TestHTTP2SlowBody(t *testing.T) {
	certFile, keyFile, pool := writeCert(t)
	ts := startServer(t, Config{TLSCertFile: certFile, TLSKeyFile: keyFile, BodyMinRate: 1024, BodyRateGrace: 200 * time.Millisecond},
		Deps{Runner: cgiOutput("Content-Type: text/plain\n\nok", sandbox.CauseOK)}, route("r", "/", "/x"))
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write([]byte("0123456789")) // then nothing
	req := newRequest(t, "POST", ts.URL+"/", pr)
	req.ContentLength = 100000
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 408 || resp.Header.Get(RequestIDHeader) == "" {
		t.Fatalf("got %s %d, want HTTP/2 408 with a request id", resp.Proto, resp.StatusCode)
	}
	// The connection still serves other requests.
	resp, body := do(t, c, newRequest(t, "GET", ts.URL+"/", nil))
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("next request: %d %q", resp.StatusCode, body)
	}
}

// TestTLSHandshakes: the front does the TLS handshakes itself (to check
// HTTP/1.1 request heads on the decrypted stream): a client that never
// sends its ClientHello holds only its own connection, not the accept loop,
// and plain HTTP on the TLS port gets net/http's 400 as before.
func TestTLSHandshakes(t *testing.T) {
	certFile, keyFile, pool := writeCert(t)
	ts := guardServer(t, Config{TLSCertFile: certFile, TLSKeyFile: keyFile})
	silent, err := net.Dial("tcp", ts.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	waitOpen(t, ts.Server, 1)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	resp, body := do(t, &http.Client{Transport: tr, Timeout: 10 * time.Second}, newRequest(t, "GET", ts.URL+"/", nil))
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("beside a silent handshake: %d %q", resp.StatusCode, body)
	}

	plain, err := net.Dial("tcp", ts.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	plain.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(plain, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	got, _ := io.ReadAll(plain)
	if !strings.HasPrefix(string(got), "HTTP/1.0 400 Bad Request") {
		t.Fatalf("plain HTTP on the TLS port: %q", got)
	}
}

// TestHTTP2SlowReader: on HTTP/2 a stream whose client stops reading (its
// flow-control window stays shut) is cut off by the same progress deadline,
// its record says slow_reader, and the connection's other streams go on.
func TestHTTP2SlowReader(t *testing.T) {
	const size = 32 << 20
	certFile, keyFile, pool := writeCert(t)
	big := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		if spec.Path == "/small" {
			return cgiOutput("Content-Type: text/plain\n\nok", sandbox.CauseOK)(ctx, spec)
		}
		io.WriteString(spec.Stdout, "Content-Type: application/octet-stream\n\n")
		buf := make([]byte, 1<<20)
		for i := 0; i < size/len(buf); i++ {
			if _, err := spec.Stdout.Write(buf); err != nil {
				return sandbox.Result{}, err
			}
		}
		return fakeResult(sandbox.CauseOK), nil
	})
	ts := startServer(t, Config{TLSCertFile: certFile, TLSKeyFile: keyFile, MaxResponse: size,
		WriteMinRate: 64 << 10, WriteTimeout: 100 * time.Millisecond, WriteRateGrace: time.Millisecond},
		Deps{Runner: big}, route("small", "/small", "/small"), route("big", "/", "/big"))
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	resp, err := c.Get(ts.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
		t.Fatalf("got %s %d", resp.Proto, resp.StatusCode)
	}
	// Read nothing of the body.
	rec := ts.recs.byID(t, resp.Header.Get(RequestIDHeader))
	if rec.Outcome != accounting.OutcomeSlowReader || rec.BytesOut >= size {
		t.Errorf("record outcome %s, %d bytes out: want slow_reader and fewer than %d", rec.Outcome, rec.BytesOut, size)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err == nil {
		t.Errorf("the cut-off stream's body ended cleanly")
	}
	resp2, body := do(t, c, newRequest(t, "GET", ts.URL+"/small", nil))
	if resp2.StatusCode != 200 || body != "ok" || resp2.ProtoMajor != 2 {
		t.Fatalf("another stream: %s %d %q", resp2.Proto, resp2.StatusCode, body)
	}
}
