// Package validate checks deploy/kubernetes/ and charts/torus/ offline: every
// object decodes strictly into the Kubernetes API types of the pinned
// k8s.io/api (unknown or duplicate fields are errors), every image has an
// exact tag, every flag given to a Torus binary exists in that binary, and
// the chart rendered with the helm engine (helm.sh/helm/v4) passes the same
// checks and, with its default values, renders the same objects as the
// manifests.
//
// It is a module of its own so that the Kubernetes and helm dependencies
// stay out of the main module. `make test` runs it (target deploy-test);
// alone: cd deploy/validate && TORUS_BIN=$PWD/../../bin go test ./...
package validate
