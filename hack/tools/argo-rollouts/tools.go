//go:build tools

// Package tools records the Argo Rollouts controller this module builds.
package tools

import _ "github.com/argoproj/argo-rollouts/cmd/rollouts-controller"
