package peer_test

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/storage"
)

// A daemon serves its store behind the fence; a writer appends over TCP
// and is fenced once a newer writer has taken the volume.
func Example() {
	ctx := context.Background()
	local := peer.NewLocal(storage.NewMemory(1<<20), nil)
	srv := peer.NewServer(local, peer.ServerConfig{}, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go srv.Serve(ln)
	defer srv.Close()

	c, err := peer.Dial(ctx, ln.Addr().String(), peer.ClientConfig{}, nil)
	if err != nil {
		panic(err)
	}
	defer c.Close()

	seg := torus.SegmentID{Volume: 1, Epoch: 3, Seq: 1}
	fmt.Println(c.Append(ctx, 3, seg, 0, []byte("hello")))
	fmt.Println(c.Sync(ctx, 3, seg)) // the durable length

	p := make([]byte, 10)
	n, err := c.ReadAt(ctx, seg, p, 0)
	fmt.Printf("%q %v\n", p[:n], err)

	// A new writer (epoch 4) fences the volume.
	fmt.Println(c.Fence(ctx, 1, 4))
	err = c.Append(ctx, 3, seg, 5, []byte("late"))
	fmt.Println(errors.Is(err, torus.ErrFenced))
	// Output:
	// <nil>
	// 5 <nil>
	// "hello" EOF
	// <nil>
	// true
}
