package storage_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/storage"
)

func ExampleOpenDisk() {
	dir, err := os.MkdirTemp("", "torus-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	capacity, err := storage.ParseSize("512MiB", dir) // the daemon's --size
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	d, err := storage.OpenDisk(ctx, storage.DiskConfig{Dir: dir, Capacity: capacity})
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()

	seg := torus.SegmentID{Volume: 1, Epoch: 1, Seq: 1}
	if err := d.Append(ctx, seg, 0, []byte("hello, ")); err != nil {
		log.Fatal(err)
	}
	if err := d.Append(ctx, seg, 7, []byte("world")); err != nil {
		log.Fatal(err)
	}
	if _, err := d.Sync(ctx, seg); err != nil { // durable from here on
		log.Fatal(err)
	}
	p := make([]byte, 16) // more than there is: io.EOF
	n, err := d.ReadAt(ctx, seg, p, 0)
	fmt.Printf("%q %v\n", p[:n], err)
	u := d.Usage()
	fmt.Println(u.Used, "of", storage.FormatSize(u.Capacity))
	// Output:
	// "hello, world" EOF
	// 12 of 512 MiB
}

func ExampleMemory_Crash() {
	ctx := context.Background()
	m := storage.NewMemory(1 << 20)
	seg := torus.SegmentID{Volume: 1, Epoch: 1, Seq: 1}
	_ = m.Append(ctx, seg, 0, []byte("synced"))
	_, _ = m.Sync(ctx, seg)
	_ = m.Append(ctx, seg, 6, []byte(" lost"))
	m.Crash()
	info, _ := m.Stat(ctx, seg)
	fmt.Println(info.Length)
	// Output: 6
}
