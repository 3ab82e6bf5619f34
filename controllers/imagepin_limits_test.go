package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// Issue 13 item 5: every CRD limit of the status is kept by the code that
// fills the field. A check at and past every limit at once (images,
// workloads per image, workload entries, history, running digests, nodes,
// drift reasons, image and error lengths, long names) gives a status the
// real API server stores.
func TestStatusAtEveryLimitIsAccepted(t *testing.T) {
	long := func(prefix string, n int) string { return prefix + strings.Repeat("x", n-len(prefix)) }
	var containers []containerObs
	// One image used by 300 workloads: the CRD lists at most 256.
	for i := range 300 {
		containers = append(containers, resolvedTo("reg.io/shared:v1", fmt.Sprintf("w-%03d", i), dg("a")))
	}
	// 120 images: status lists at most 100.
	for i := range 120 {
		containers = append(containers, resolvedTo(fmt.Sprintf("reg.io/app-%03d:v1", i), fmt.Sprintf("img-%03d", i), dg("b")))
	}
	// A reference longer than images[].image allows.
	containers = append(containers, resolvedTo("reg.io/"+strings.Repeat("a", 600)+":v1", "long-image", dg("c")))
	// A container whose pods run 20 digests on 40 nodes with the longest
	// names, whose tag fails with a very long error, with the longest
	// workload and container names.
	var pods []corev1.Pod
	for i := range 40 {
		pods = append(pods, corev1.Pod{
			Spec: corev1.PodSpec{NodeName: long(fmt.Sprintf("node-%02d-", i), 253)},
			Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{
				Name: "app", ImageID: "reg.io/busy@" + dg(fmt.Sprintf("%x", i%16)),
			}}},
		})
	}
	busy := resolvedTo("reg.io/busy:v1", long("busy-", 253), dg("d"), runningDigests(views(pods...))["app"]...)
	busy.container = long("c-", 253)
	busy.err = errors.New(strings.Repeat("the registry said something very long; ", 200))
	busy.pinned = dg("e")
	containers = append(containers, busy)

	// A history already at its cap, carried over.
	var status imagesv1alpha1.ImagePinStatus
	for i := range maxHistory + 2 {
		check(&status, t0.Add(-time.Duration(maxHistory+2-i)*time.Minute), obsOf(resolvedTo("reg.io/busy:v1", "busy", dg(fmt.Sprintf("%x", i)))))
	}
	check(&status, t0, obsOf(containers...))

	if n := len(status.Images); n > maxImages {
		t.Fatalf("%d images in status, the CRD allows %d", n, maxImages)
	}
	for _, img := range status.Images {
		if len(img.Workloads) > maxWorkloadsPerImage || len(img.History) > maxHistory || len(img.Image) > maxImageLength || len([]rune(img.Error)) > 1024 {
			t.Fatalf("image %.40s… past a limit: %d workloads, %d history, %d-byte image, %d-byte error",
				img.Image, len(img.Workloads), len(img.History), len(img.Image), len(img.Error))
		}
		for _, w := range img.Workloads {
			if len(w.Running) > 8 || len(w.Drift) > maxDriftReasons {
				t.Fatalf("%s past a limit: %d running, %d drift", w.Name, len(w.Running), len(w.Drift))
			}
			for _, r := range w.Running {
				if len(r.Nodes) > maxNodesPerDigest {
					t.Fatalf("%s runs on %d nodes listed", w.Name, len(r.Nodes))
				}
			}
		}
	}
	if s := status.Summary; s.Images != 123 || s.Workloads != 422 || s.Omitted == 0 {
		t.Fatalf("summary %+v: want every image and workload counted, and the omitted ones", s)
	}

	// The real API server stores it.
	ns := namespace(t)
	pin := imagePin(ns, "limits", func(p *imagesv1alpha1.ImagePin) { p.Spec.Suspend = true })
	create(t, pin)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var got imagesv1alpha1.ImagePin
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(pin), &got); err != nil {
			return err
		}
		got.Status = *status.DeepCopy()
		return k8s.Status().Update(context.Background(), &got)
	})
	if err != nil {
		t.Fatalf("the API server refused the status: %v", err)
	}
	var got imagesv1alpha1.ImagePin
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(pin), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Status.Images) == 0 || got.Status.Summary != status.Summary {
		t.Fatalf("stored summary %+v, want %+v", got.Status.Summary, status.Summary)
	}
}
