// Package nodesim is test infrastructure: a node simulator that stands in for
// the kube-scheduler and the kubelet in test clusters that have neither (an
// envtest control plane plus kube-controller-manager), so that Deployments,
// DaemonSets and bare Pods roll out as they would on a real cluster.
//
// It models what makes mutable image tags dangerous:
//
//   - Nodes: it registers its Nodes (Ready, with capacity, addresses and node
//     info) and keeps their status current, including status.images. As the
//     node lifecycle controller would, it lifts the not-ready taint the API
//     server puts on new Nodes once they report Ready.
//   - Scheduling: it binds pending pods one at a time to the node with the
//     fewest pods, terminating pods and pods it has just bound included, ties
//     broken by node name. It honours spec.nodeName, spec.nodeSelector,
//     required node affinity (so DaemonSet pods land on their node),
//     spec.unschedulable, NoSchedule and NoExecute taints, scheduling gates
//     and a limit of 110 pods a node.
//   - Per-node image caches and imagePullPolicy: each node remembers which
//     digest each tag pointed at when the node pulled it. IfNotPresent uses
//     the node's copy without asking the registry, Always asks the registry
//     what the reference means now, Never uses the cache or fails with
//     ErrImageNeverPull. Pulls ask the real registry for the manifest with the
//     credentials of the pod's imagePullSecrets only, as the kubelet does;
//     failures show as ErrImagePull and ImagePullBackOff, retried with
//     exponential backoff.
//   - Pod status: once its images are present a pod is Running and Ready, its
//     container statuses carry the digest the node resolved (imageID), and a
//     changed container image restarts that container. Deleted pods keep
//     running for a short termination delay, then the simulator removes them.
//
// It does not run containers: no process starts, no volume is mounted, no
// probe runs and no layer is downloaded (only the manifest is fetched).
// Containers never exit, so Jobs' pods stay Running and never complete.
// Pull credentials are not re-verified for images another pod pulled (the
// kubelet's KubeletEnsureSecretPulledImages): a cached image serves any pod
// on the node. There are no node leases, no resource accounting beyond a
// pod count, no preemption, no eviction, no image garbage collection, and no
// inter-pod (anti-)affinity or topology spreading. Pod resources, volumes,
// probes and security contexts are ignored. A deleted pod's containers are
// not reported terminated before the pod is removed.
//
// Typical use, after starting the control plane and kube-controller-manager:
//
//	sim, err := nodesim.New(cfg, nodesim.Options{Transport: tr})
//	...
//	go func() { done <- sim.Run(ctx) }()
//
// Run returns once ctx is done and everything it started has stopped.
package nodesim
