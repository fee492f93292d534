# syntax=docker/dockerfile:1
# The Torus image: torusd, torusctl, torusblk and torus-csi in one image
# (deploy/kubernetes and charts/torus use it for every Torus container).
#   docker build -t REGISTRY/torus:v0.1.0 --build-arg VERSION=v0.1.0 .
# Not built in CI (no container engine there); docs/kubernetes.md.

# Build stage: the Go release go.mod asks for (go 1.26), pinned to a patch.
FROM golang:1.26.8-trixie AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/torus-storage/torus/internal/version.Version=${VERSION}" \
        -o /out/ ./cmd/torusd ./cmd/torusctl ./cmd/torusblk ./cmd/torus-csi

# Run stage: what the node plugin shells out to (mkfs, blkid, resize2fs,
# xfs_growfs, losetup, mount) and FUSE for torusblk fuse.
FROM debian:trixie-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates e2fsprogs xfsprogs btrfs-progs util-linux mount fuse3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/torusd"]
