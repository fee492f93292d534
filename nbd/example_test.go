package nbd_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/memdev"
	"github.com/torus-storage/torus/nbd"
)

// oneExport serves a single device under one name.
type oneExport struct {
	name string
	dev  *memdev.Device
}

func (e oneExport) Open(ctx context.Context, name string, readOnly bool) (torus.Device, error) {
	if name != e.name {
		return nil, fmt.Errorf("export %q: %w", name, torus.ErrNotExist)
	}
	e.dev.Reopen()
	return e.dev, nil
}

func (e oneExport) List(ctx context.Context) ([]nbd.ExportInfo, error) {
	return []nbd.ExportInfo{{Name: e.name, Size: e.dev.Size()}}, nil
}

func (e oneExport) Default(ctx context.Context) (string, error) { return e.name, nil }

func Example() {
	exports := oneExport{name: "vol", dev: memdev.New(64<<20, false)}
	srv := nbd.NewServer(nbd.Config{}, exports, slog.New(slog.DiscardHandler))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go srv.Serve(ln)

	// Any NBD client can now connect, e.g. nbdinfo nbd://127.0.0.1:PORT/vol.
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		panic(err)
	}
	e, err := nbd.ClientHandshake(context.Background(), conn, "vol")
	if err != nil {
		panic(err)
	}
	fmt.Println("size:", e.Size, "read-only:", e.ReadOnly())
	conn.Close()

	// In-flight requests complete; every device is flushed and closed.
	if err := srv.Shutdown(context.Background()); err != nil {
		panic(err)
	}
	// Output: size: 67108864 read-only: false
}
