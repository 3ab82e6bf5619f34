package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// TestWeekOneThroughTheBinary goes through an ordinary week on the local
// cluster, with bin/imagepin as its own process (its slim cache, its
// webhook, its RBAC): Issue 13 items 1, 2 and 4 and Issue 14 item 4, as
// the black-box check runs them.
func TestWeekOneThroughTheBinary(t *testing.T) {
	ctx := context.Background()
	ns := "week-one"
	useNamespace(t, ns, true)
	repo := local.Registry.Host + "/week/web"
	digests := map[string]imagesv1alpha1.Digest{}
	for _, tag := range []string{"v1", "v2", "v3", "v4"} {
		digests[tag] = push(t, "week/web:"+tag, "week web "+tag)
	}
	imageOfDeployment := func(name string) func() (string, error) {
		return func() (string, error) {
			var d appsv1.Deployment
			if err := local.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &d); err != nil {
				return "", err
			}
			return d.Spec.Template.Spec.Containers[0].Image, nil
		}
	}
	is := func(what string, get func() (string, error), want string) {
		t.Helper()
		poll(t, what, 45*time.Second, func() error {
			got, err := get()
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("%s, want %s", got, want)
			}
			return nil
		})
	}
	apply(t, ns, imagePinYAML("Follow", "{matchLabels: {app: web}}"))
	waitPin(t, ns, "the ImagePin to be checked", func(p *imagesv1alpha1.ImagePin) error {
		return condition(p, imagesv1alpha1.ConditionReady, metav1.ConditionTrue)
	})

	// Item 1: a release and three more by `kubectl set image`, each pinned.
	apply(t, ns, deploymentYAML("web", repo+":v1", 1))
	is("web pinned to v1", imageOfDeployment("web"), repo+":v1@"+string(digests["v1"]))
	for _, tag := range []string{"v2", "v3", "v4"} {
		kubectlAt(t, local.Kubeconfig, nil, "-n", ns, "set", "image", "deploy/web", "web="+repo+":"+tag)
		is("web pinned to "+tag, imageOfDeployment("web"), repo+":"+tag+"@"+string(digests[tag]))
	}
	p := waitPin(t, ns, "no Conflict after four releases", func(p *imagesv1alpha1.ImagePin) error {
		if c := meta.FindStatusCondition(p.Status.Conditions, imagesv1alpha1.ConditionConflict); c != nil && c.Status == metav1.ConditionTrue {
			return fmt.Errorf("Conflict: %s", c.Message)
		}
		return condition(p, imagesv1alpha1.ConditionReady, metav1.ConditionTrue)
	})
	t.Logf("after four releases: %+v", p.Status.Summary)

	// Item 2: deleted and applied again, pinned again.
	kubectlAt(t, local.Kubeconfig, nil, "-n", ns, "delete", "deploy/web", "--wait=true")
	apply(t, ns, deploymentYAML("web", repo+":v4", 1))
	is("web pinned again after delete and apply", imageOfDeployment("web"), repo+":v4@"+string(digests["v4"]))

	// Item 4: an image with no tag keeps following :latest.
	latest1 := push(t, "week/plain:latest", "plain 1")
	apply(t, ns, deploymentYAML("plain", local.Registry.Host+"/week/plain", 1))
	is("plain pinned with :latest", imageOfDeployment("plain"), local.Registry.Host+"/week/plain:latest@"+string(latest1))
	latest2 := push(t, "week/plain:latest", "plain 2")
	is("plain followed to the new :latest", imageOfDeployment("plain"), local.Registry.Host+"/week/plain:latest@"+string(latest2))

	// Issue 14 item 4: an image volume after another volume is followed at
	// its own index (the manager's cache keeps every volume).
	models1 := push(t, "week/models:v1", "models 1")
	apply(t, ns, fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: ml
  labels: {app: web}
spec:
  replicas: 0
  selector: {matchLabels: {run: ml}}
  template:
    metadata: {labels: {run: ml}}
    spec:
      containers:
      - name: web
        image: %[1]s:v4
        volumeMounts: [{name: models, mountPath: /models}]
      volumes:
      - name: scratch
        emptyDir: {}
      - name: models
        image: {reference: "%[2]s/week/models:v1"}
`, repo, local.Registry.Host))
	volume := func() (string, error) {
		var d appsv1.Deployment
		if err := local.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "ml"}, &d); err != nil {
			return "", err
		}
		return d.Spec.Template.Spec.Volumes[1].Image.Reference, nil
	}
	is("the image volume pinned", volume, local.Registry.Host+"/week/models:v1@"+string(models1))
	models2 := push(t, "week/models:v1", "models 2")
	is("the image volume followed", volume, local.Registry.Host+"/week/models:v1@"+string(models2))
}
