// Package report computes the operator views of a cluster that
// `torusctl -o json` prints and the dashboard (package ui) serves: the
// status summary, the volume rows, the peer list and the ring with its
// placement health. Each view is a pure function from metadata records to
// rows, plus one function that reads those records from a torus.Metadata,
// so the two front ends print exactly the same data.
package report
