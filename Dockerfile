# syntax=docker/dockerfile:1
# A static imagepin binary on distroless, running as nonroot, for those with
# a Docker engine (make docker-build). `make image` (hack/image) builds the
# multi-arch image without one: the same binary and user on no base, with
# an SBOM, reproducibly; that is the image to release.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY main.go ./
COPY api/ api/
COPY controllers/ controllers/
COPY internal/ internal/
ARG TARGETOS TARGETARCH
RUN CGO_ENABLED=0 GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w" -o /out/imagepin .

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/imagepin /imagepin
USER 65532:65532
ENTRYPOINT ["/imagepin"]
