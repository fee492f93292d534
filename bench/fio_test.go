package main

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseFioMixed(t *testing.T) {
	// Captured from fio 3.33, nbd engine against nbdkit.
	r, err := ParseFio(readTestdata(t, "fio-randrw-nbd.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := FioResult{
		Read:      Stats{Bytes: 158728192, BytesPerSec: 71499185, IOPS: 1090.990991, Ops: 2422, P50Ns: 1449984, P99Ns: 11468800},
		Write:     Stats{Bytes: 67305472, BytesPerSec: 30317780, IOPS: 462.612613, Ops: 1027, P50Ns: 1466368, P99Ns: 25034752},
		RuntimeMs: r.RuntimeMs,
	}
	want.Read.MeanNs, want.Write.MeanNs = r.Read.MeanNs, r.Write.MeanNs
	if r != want {
		t.Errorf("got %+v\nwant %+v", r, want)
	}
	if r.RuntimeMs < 900 || r.Read.MeanNs <= 0 || r.Sync.Ops != 0 {
		t.Errorf("runtime %d ms, read mean %v, sync ops %d", r.RuntimeMs, r.Read.MeanNs, r.Sync.Ops)
	}
}

func TestParseFioSync(t *testing.T) {
	// Captured from fio 3.33, libaio O_DIRECT with fsync=1.
	r, err := ParseFio(readTestdata(t, "fio-durable-file.json"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Read.Ops != 0 || r.Write.Ops != 319 || r.Sync.Ops != 319 {
		t.Errorf("ops read %d write %d sync %d", r.Read.Ops, r.Write.Ops, r.Sync.Ops)
	}
	if r.Write.P50Ns != 87552 || r.Sync.P50Ns != 602112 || r.Sync.P99Ns != 32374784 {
		t.Errorf("write p50 %d, sync p50 %d p99 %d", r.Write.P50Ns, r.Sync.P50Ns, r.Sync.P99Ns)
	}
}

func TestParseFioSkipsPreamble(t *testing.T) {
	// fio's nbd engine prints a line before the JSON on stdout.
	data := readTestdata(t, "fio-randrw-nbd-stdout.txt")
	if !strings.HasPrefix(string(data), "fio: connected") {
		t.Fatal("testdata lacks the preamble")
	}
	if _, err := ParseFio(data); err != nil {
		t.Fatal(err)
	}
}

func TestParseFioErrors(t *testing.T) {
	good := string(readTestdata(t, "fio-randrw-nbd.json"))
	cases := map[string]string{
		"empty":          "",
		"text":           "fio: engine nbd not loadable",
		"truncated":      good[:len(good)/2],
		"no jobs":        `{"jobs": []}`,
		"two jobs":       `{"jobs": [{"jobname":"a"},{"jobname":"b"}]}`,
		"job error":      strings.Replace(good, `"error" : 0`, `"error" : 5`, 1),
		"no io":          `{"jobs": [{"jobname":"a","read":{},"write":{}}]}`,
		"no p99":         strings.Replace(good, `"99.000000"`, `"98.000000"`, 1),
		"bad percentile": strings.Replace(good, `"99.000000"`, `"x"`, 1),
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := ParseFio([]byte(in))
			if !errors.Is(err, ErrFioOutput) {
				t.Errorf("err = %v, want ErrFioOutput", err)
			}
		})
	}
}

func FuzzParseFio(f *testing.F) {
	for _, name := range []string{"fio-randrw-nbd.json", "fio-durable-file.json"} {
		b, err := os.ReadFile("testdata/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"jobs":[{"read":{"total_ios":1,"clat_ns":{"N":1,"percentile":{"50":1}}}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseFio(data)
		if err != nil {
			if !errors.Is(err, ErrFioOutput) {
				t.Fatalf("error %v does not wrap ErrFioOutput", err)
			}
			return
		}
		if r.Read.Ops == 0 && r.Write.Ops == 0 {
			t.Fatal("accepted output with no I/O")
		}
	})
}
