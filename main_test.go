package main

import "testing"

func TestShardNamesALabelAndALease(t *testing.T) {
	for shard, ok := range map[string]bool{"": true, "b": true, "batch-jobs": true, "Batch": false, "a.b": false, "-x": false, "a_b": false} {
		if err := validShard(shard); (err == nil) != ok {
			t.Errorf("validShard(%q) = %v, want ok=%v", shard, err, ok)
		}
	}
	if got := leaderElectionIDOf("b"); got != "b.imagepin.images.imagepin.dev" {
		t.Errorf("shard b's Lease is %s", got)
	}
	if got := leaderElectionIDOf(""); got != leaderElectionID {
		t.Errorf("the default shard's Lease is %s, want %s", got, leaderElectionID)
	}
}
