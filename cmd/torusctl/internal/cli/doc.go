// Package cli is torusctl: the cobra command tree, argument parsing and
// output formatting of the cluster administration tool. main only calls
// Main. Everything reaches the cluster through torus.Metadata, opened by
// Deps.Open, so the commands can be exercised against metadata.Memory as
// well as against etcd (the testscript tests in cmd/torusctl use a real
// embedded etcd and the real binary).
//
// Output is a table (text/tabwriter) by default and JSON with -o json.
// Errors are printed as "torusctl: <message>" on stderr with exit status 1.
package cli
