// Command torusctl administers a Torus cluster through etcd. See
// `torusctl --help`; the commands live in internal/cli.
package main

import (
	"os"

	"github.com/torus-storage/torus/cmd/torusctl/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr, cli.Deps{}))
}
