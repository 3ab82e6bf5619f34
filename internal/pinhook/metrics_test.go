package pinhook

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Every decision is exported from the start, so that the first refusal
// after a start is an increase an alert sees.
func TestEveryDecisionStartsAtZero(t *testing.T) {
	if n := testutil.CollectAndCount(admissionDecisions); n != 4 {
		t.Errorf("%d decision series exported at the start, want 4", n)
	}
}
