package controllers

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/imagepin/imagepin/internal/testenv"
)

// The drift gauge has a series for every drift reason the API knows: the
// enum controller-gen wrote into the CRD from the DriftReason marker.
func TestDriftGaugeCoversEveryDriftReason(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "api", "v1alpha1", "imagepin_types.go"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^// \+kubebuilder:validation:Enum=(.*)\ntype DriftReason string`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("no Enum marker on DriftReason")
	}
	want := strings.Split(string(m[1]), ";")
	var got []string
	for _, r := range allDriftReasons {
		got = append(got, string(r))
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("the drift gauge's reasons %v, the API's %v", got, want)
	}
}
