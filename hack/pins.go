//go:build tools

// Package hack pins, in the main module's go.mod, the registry libraries the
// resolver is built on before any package imports them, so that `go mod
// tidy` keeps the versions the project chose.
package hack

import (
	_ "github.com/google/go-containerregistry/pkg/authn/k8schain"
	_ "github.com/google/go-containerregistry/pkg/v1/remote"
)
